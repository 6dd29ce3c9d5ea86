"""The `edge_index` argument of a graphattn.nn layer, prepared as the Graph graphattn.attention takes.

Accepted forms (PyG's, plus a prepared graphattn.Graph):
- an integer tensor `[2, E]` (int64 or int32): row 0 sources, row 1 targets;
- a torch sparse adjacency `adj_t [N_dst, N_src]` (rows targets, columns sources), layout CSR
  (`to_torch_csc_tensor(edge_index, size=(N_src, N_dst)).t()` is one: its crow_indices are the
  Graph's row offsets as they are, no sort), CSC or COO (indices[0] targets, indices[1] sources);
- a `torch_sparse.SparseTensor` adj_t, recognised without importing torch_sparse. UNTESTED: that
  package is not installed where this was written;
- a `graphattn.Graph` from `Graph.from_edge_index` (a segments Graph is refused: these are
  edge-list layers).

Edge order: the order that `edge_attr` and returned attention weights follow is the input's own
one: the columns of edge_index (also for a Graph: the columns it was built from), the values of a
sparse tensor. Sparse values are not edge weights; a layer with `edge_dim` called without
`edge_attr` takes multi-dimensional torch sparse values `[nnz, F]`, or a SparseTensor's values, as
its edge features (as PyG's MessagePassing does).

Self-loops (`self_loops=n`, GATConv/GATv2Conv): every existing loop is removed and i -> i appended
for i < n, as PyG's remove_self_loops + add_self_loops. For an edge_index tensor or a Graph the new
order is the kept edges in their order, then the loops; for a sparse input it is the sparse
layout's own order (CSR/COO: by target then source; CSC: by source then target), where PyG's
coalescing puts them (PyG merges duplicate edges there; here each stays an edge). The index work
is done once per pattern; edge features of the loops are data and are computed on every call.

The cache: preparing (sorting, checking, adding loops) happens once per pattern, not per call or
per layer. A Graph keeps what it needs in its own cache (`Graph.cached`). Tensors are looked up by
identity in a small process-wide table: an entry serves a call with the same tensor object, alive,
with the same `_version` (an in-place edit bumps it), data pointer, shape, dtype and device, the
same (N_src, N_dst) and the same loops; it is dropped when the tensor is freed (weakref.finalize),
so no prepared Graph outlives its edge_index, and the table holds at most `MAX_ENTRIES` entries
(least recently used first out). A lock guards it (layers may run in several threads). Under
torch.compile the table is not used: the pattern is built on every call. SparseTensor inputs are
not cached (their CSR is used as it is; only loops cost a pass over the edges).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..graph import Graph, _counts_to_ptr

ACCEPTED = ("an integer tensor [2, E], a torch sparse adjacency adj_t [N_dst, N_src] (sparse CSR, CSC or "
            "COO), a torch_sparse.SparseTensor adj_t, or a graphattn.Graph from Graph.from_edge_index")

MAX_ENTRIES = 8

_SPARSE_LAYOUTS = {torch.sparse_csr: "csr", torch.sparse_csc: "csc", torch.sparse_coo: "coo"}


def _is_sparse_tensor(obj) -> bool:
    """torch_sparse.SparseTensor, recognised without importing torch_sparse."""
    cls = type(obj)
    return cls.__name__ == "SparseTensor" and cls.__module__.startswith("torch_sparse")


def _form(edge_index) -> str:
    """'edge_index', 'csr', 'csc', 'coo', 'sparse_tensor' or 'graph'; TypeError/ValueError otherwise."""
    if isinstance(edge_index, Graph):
        if edge_index.kind != "csr":
            raise ValueError("edge_index is a segments Graph (block_diagonal / from_batch); these layers take an "
                             "edge list: pass an edge_index tensor or Graph.from_edge_index(...) "
                             "(GraphMultiheadAttention takes segments)")
        return "graph"
    if _is_sparse_tensor(edge_index):
        return "sparse_tensor"
    if isinstance(edge_index, Tensor):
        if edge_index.layout in _SPARSE_LAYOUTS:
            sparse_dims = edge_index.sparse_dim() if edge_index.layout == torch.sparse_coo else \
                edge_index.dim() - edge_index.dense_dim()
            if sparse_dims != 2:
                raise ValueError(f"edge_index as a sparse adjacency must be adj_t [N_dst, N_src] (two sparse "
                                 f"dims, no batch dims), got shape {list(edge_index.shape)} with {sparse_dims} "
                                 "sparse dims")
            return _SPARSE_LAYOUTS[edge_index.layout]
        if edge_index.layout == torch.strided and edge_index.dtype in (torch.int64, torch.int32) \
                and edge_index.dim() == 2 and edge_index.shape[0] == 2:
            return "edge_index"
        what = (f"a tensor of layout {edge_index.layout}" if edge_index.layout != torch.strided
                else f"a {edge_index.dtype} tensor of shape {list(edge_index.shape)}")
        raise TypeError(f"edge_index must be {ACCEPTED}; got {what}")
    raise TypeError(f"edge_index must be {ACCEPTED}; got {type(edge_index).__name__}")


def _stated_sizes(edge_index, form: str) -> Optional[Tuple[int, int]]:
    if form == "edge_index":
        return None
    if form == "graph":
        return edge_index.num_src, edge_index.num_dst
    n_dst, n_src = edge_index.sparse_sizes() if form == "sparse_tensor" else edge_index.shape[:2]
    return int(n_src), int(n_dst)


def num_nodes(edge_index) -> Optional[Tuple[int, int]]:
    """(N_src, N_dst) that a sparse adjacency or a Graph states, None for an edge_index tensor."""
    return _stated_sizes(edge_index, _form(edge_index))


# ---------------------------------------------------------------- the prepared pattern
class _Pattern:
    """What is built once per (adjacency, sizes, loops). Holds no reference to the input object
    (a cached entry must not keep its tensor alive) nor, for a Graph input, to that Graph.

    graph: the Graph to attend over (None: the input Graph itself).
    src, dst: int64 [E'], each edge of `graph` in its column order (None: read from the input).
    keep, kept_dst: with loops, the input positions of the edges kept and their targets.
    order: with loops on a sparse input, the permutation from [kept..., loops] to the layout's order.
    loop_index: with loops on an edge_index/Graph, the [2, E'] int64 edge_index returned with the weights.
    """

    __slots__ = ("graph", "src", "dst", "num_edges", "num_loops", "keep", "kept_dst", "order", "loop_index")

    def __init__(self, graph=None, src=None, dst=None, num_edges=0, num_loops=None, keep=None, kept_dst=None,
                 order=None, loop_index=None):
        self.graph, self.src, self.dst, self.num_edges = graph, src, dst, num_edges
        self.num_loops, self.keep, self.kept_dst, self.order, self.loop_index = (
            num_loops, keep, kept_dst, order, loop_index)


def _graph_edges(graph: Graph) -> Tuple[Tensor, Tensor]:
    """(src, dst) int64 of a csr Graph in the column order of the edge_index it was built from."""
    src = torch.empty_like(graph.col)
    dst = torch.empty_like(graph.col)
    src[graph.eid] = graph.col
    dst[graph.eid] = graph.sorted_targets()
    return src, dst


def _checked_csr(rowptr: Tensor, col: Tensor, n_rows: int, n_cols: int, what: str) -> Graph:
    """A Graph over an input's own compressed index arrays (no sort: edge ids are the value positions),
    after checking they are well formed (offsets from 0 to nnz, indices in range)."""
    rowptr, col = rowptr.long().contiguous(), col.long().contiguous()
    graph = Graph("csr", n_cols, n_rows, rowptr=rowptr, col=col, eid=torch.arange(col.numel(), device=col.device))
    try:
        graph.check_edges()
    except IndexError as err:
        raise IndexError(f"edge_index ({what}) is not a well-formed adjacency: {err}") from None
    return graph


def _input_edges(edge_index, form: str, n_src: int, n_dst: int):
    """(src, dst) int64 of each edge of the input in its own order (the sparse values' order), and
    the Graph that order already is (CSR inputs), else None. Sparse index arrays are checked here."""
    if form == "edge_index":
        return edge_index[0].long(), edge_index[1].long(), None
    if form == "graph":
        return _graph_edges(edge_index) + (None,)
    if form in ("csr", "sparse_tensor"):
        if form == "csr":
            rowptr, col = edge_index.crow_indices(), edge_index.col_indices()
        else:
            rowptr, col = edge_index.storage.rowptr(), edge_index.storage.col()
        graph = _checked_csr(rowptr, col, n_dst, n_src, "sparse CSR" if form == "csr" else "SparseTensor")
        return graph.col, graph.sorted_targets(), graph
    if form == "csc":  # columns are sources: the same check, with rows and columns swapped
        by_src = _checked_csr(edge_index.ccol_indices(), edge_index.row_indices(), n_src, n_dst, "sparse CSC")
        return by_src.sorted_targets(), by_src.col, None
    indices = edge_index._indices()  # coo, in its stored order (coalesced or not); range-checked by the build
    return indices[1].long(), indices[0].long(), None


def _from_edges(src: Tensor, dst: Tensor, sizes) -> Graph:
    try:
        return Graph.from_edge_index(torch.stack([src, dst]), num_nodes=sizes)
    except IndexError as err:
        raise IndexError(f"edge_index: {err}") from None


def _build(edge_index, form: str, n_src: int, n_dst: int, num_loops: Optional[int]) -> _Pattern:
    sizes = (n_src, n_dst)
    if num_loops is None:
        if form == "edge_index":  # its rows are read from the input on each call (nothing holds it)
            return _Pattern(Graph.from_edge_index(edge_index, num_nodes=sizes), num_edges=edge_index.shape[1])
        src, dst, graph = _input_edges(edge_index, form, n_src, n_dst)
        return _Pattern(graph if graph is not None else _from_edges(src, dst, sizes), src, dst,
                        num_edges=src.numel())

    src, dst, _ = _input_edges(edge_index, form, n_src, n_dst)
    keep = (src != dst).nonzero().view(-1)
    kept_src, kept_dst = src[keep], dst[keep]
    loops = torch.arange(num_loops, device=src.device)
    aug_src, aug_dst = torch.cat([kept_src, loops]), torch.cat([kept_dst, loops])
    order = loop_index = None
    if form in ("edge_index", "graph"):  # PyG's order: the kept edges, then the loops
        loop_index = torch.stack([aug_src, aug_dst])
    else:  # the sparse layout's own order (stable: duplicates keep theirs)
        key = aug_src * n_dst + aug_dst if form == "csc" else aug_dst * n_src + aug_src
        order = torch.sort(key, stable=True).indices
        aug_src, aug_dst = aug_src[order], aug_dst[order]
    return _Pattern(_from_edges(aug_src, aug_dst, sizes), aug_src, aug_dst, num_edges=src.numel(),
                    num_loops=num_loops, keep=keep, kept_dst=kept_dst, order=order, loop_index=loop_index)


# ---------------------------------------------------------------- the identity cache
class _Entry:
    __slots__ = ("ref", "fingerprint", "pattern")

    def __init__(self, ref, fingerprint, pattern):
        self.ref, self.fingerprint, self.pattern = ref, fingerprint, pattern


_lock = threading.RLock()
_entries: "OrderedDict[tuple, _Entry]" = OrderedDict()  # (id(tensor), N_src, N_dst, loops) -> entry
_finalizers: dict = {}  # id(tensor) -> its weakref.finalize, one per live cached tensor
_local = threading.local()  # .inside: this thread is in a critical section (a finalizer then defers)
_pending: list = []  # ids whose tensor died while its thread was inside a critical section


class _Section:
    """The lock, plus: a tensor freed while this thread holds it (its finalizer runs here, re-entrantly,
    possibly in the middle of a dict operation) is dropped when the section ends, not inside it."""

    def __enter__(self):
        _lock.acquire()
        _local.inside = getattr(_local, "inside", 0) + 1

    def __exit__(self, *exc):
        try:
            if _local.inside == 1:
                while _pending:
                    _drop(_pending.pop())
        finally:
            _local.inside -= 1
            _lock.release()


def _drop(oid: int) -> None:
    """Forget the entries of a freed tensor (called with the lock held)."""
    _finalizers.pop(oid, None)
    for key in [k for k in _entries if k[0] == oid]:
        del _entries[key]


def _forget(oid: int) -> None:
    """weakref.finalize callback: the tensor `oid` was freed; its prepared patterns go now."""
    if getattr(_local, "inside", 0):
        _pending.append(oid)
        return
    with _Section():
        _drop(oid)


def _fingerprint(t: Tensor, form: str) -> tuple:
    """What must not change for a cached pattern to stay valid (besides the object's identity)."""
    if form == "edge_index":
        parts = (t.data_ptr(), t.stride())
    elif form == "csr":
        parts = (t.crow_indices().data_ptr(), t.col_indices().data_ptr(), t._nnz())
    elif form == "csc":
        parts = (t.ccol_indices().data_ptr(), t.row_indices().data_ptr(), t._nnz())
    else:
        parts = (t._indices().data_ptr(), t._nnz())
    return (t._version, t.layout, t.dtype, t.device, tuple(t.shape)) + parts


def _cached(edge_index: Tensor, form: str, n_src: int, n_dst: int, num_loops: Optional[int]) -> _Pattern:
    key = (id(edge_index), n_src, n_dst, num_loops)
    fingerprint = _fingerprint(edge_index, form)
    with _Section():
        entry = _entries.get(key)
        if entry is not None and entry.ref() is edge_index and entry.fingerprint == fingerprint:
            _entries.move_to_end(key)
            return entry.pattern
    # Built outside the lock (other threads keep using the table meanwhile); two threads that miss
    # at once both build, and the first one stored is kept.
    pattern = _build(edge_index, form, n_src, n_dst, num_loops)
    with _Section():
        entry = _entries.get(key)
        if entry is not None and entry.ref() is edge_index and entry.fingerprint == fingerprint:
            _entries.move_to_end(key)
            return entry.pattern
        oid = id(edge_index)
        fin = _finalizers.get(oid)
        if fin is None or not fin.alive:
            fin = _finalizers[oid] = weakref.finalize(edge_index, _forget, oid)
            fin.atexit = False  # nothing to do at interpreter exit
        _entries[key] = _Entry(weakref.ref(edge_index), fingerprint, pattern)
        _entries.move_to_end(key)
        while len(_entries) > MAX_ENTRIES:
            old_key, _ = _entries.popitem(last=False)
            if not any(k[0] == old_key[0] for k in _entries):
                fin = _finalizers.pop(old_key[0], None)
                if fin is not None:
                    fin.detach()
    return pattern


def cache_info() -> dict:
    """The table's state, for tests and debugging: entries and tensors with a finalizer."""
    with _Section():
        return {"entries": len(_entries), "tensors": len(_finalizers), "max_entries": MAX_ENTRIES}


def clear_cache() -> None:
    """Empty the table (the prepared patterns are rebuilt on next use)."""
    with _Section():
        for fin in _finalizers.values():
            fin.detach()
        _finalizers.clear()
        _entries.clear()


# ---------------------------------------------------------------- what a layer gets
class Adjacency:
    """One call's adjacency: `graph` to attend over, `edges()` in its column order, `edge_attr()`
    in that order (loops filled), `weights(alpha)` in the form PyG returns for the input's form."""

    def __init__(self, source, form: str, pattern: _Pattern, n_src: int, n_dst: int):
        self._source, self.form, self._pattern = source, form, pattern
        self.num_src, self.num_dst = n_src, n_dst
        self.graph: Graph = source if pattern.graph is None else pattern.graph

    def edges(self) -> Tuple[Tensor, Tensor]:
        """(src, dst) int64 [E'] of each edge, in `graph`'s column order (the order of the scores,
        edge features and weights)."""
        p = self._pattern
        if p.src is not None:
            return p.src, p.dst
        if self.form == "graph":  # built on first need, kept on the Graph (it dies with it)
            return self.graph.cached("graphattn.nn.edges", lambda: _graph_edges(self.graph))
        return self._source[0].long(), self._source[1].long()  # an edge_index tensor: its own rows

    def edge_attr(self, edge_attr: Optional[Tensor], fill_value=None, use_values: bool = False) -> Optional[Tensor]:
        """Edge features in `graph`'s column order: `edge_attr` (in the input's edge order) or, when it
        is None and `use_values`, the sparse input's multi-dimensional values; with loops, the kept
        edges' rows and the loops' rows from `fill_value` (computed on every call: they are data)."""
        if edge_attr is None and use_values:
            edge_attr = self._values()
        if edge_attr is None:
            return None
        p = self._pattern
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"edge_attr must be a tensor [E, F] or [E], got {type(edge_attr).__name__}")
        if edge_attr.dim() == 0 or edge_attr.shape[0] != p.num_edges:
            raise ValueError(f"edge_attr must have one row per edge of edge_index ({p.num_edges}), got shape "
                             f"{list(edge_attr.shape)}")
        if p.num_loops is None:
            return edge_attr
        kept = edge_attr[p.keep]
        attr = torch.cat([kept, loop_attr(kept, p.kept_dst, p.num_loops, fill_value)], dim=0)
        return attr if p.order is None else attr[p.order]

    def _values(self) -> Optional[Tensor]:
        src = self._source
        if self.form == "sparse_tensor":
            return src.storage.value()
        if self.form in ("csr", "csc", "coo"):
            values = src._values() if self.form == "coo" else src.values()
            return values if values.dim() > 1 else None
        return None

    def weights(self, alpha: Tensor, sparse_value: bool = True):
        """What the layer returns with the weights alpha [E', H] (in `graph`'s column order):
        edge_index / Graph -> (edge_index [2, E'] incl. added loops, alpha); torch sparse ->
        (the adjacency with alpha as its values, alpha), or (the input itself, alpha) when not
        `sparse_value` (PyG's TransformerConv); SparseTensor -> adj.set_value(alpha, layout='coo')."""
        p, src, form = self._pattern, self._source, self.form
        if form in ("edge_index", "graph"):
            if p.loop_index is not None:
                return p.loop_index, alpha
            return (src if form == "edge_index" else torch.stack(self.edges())), alpha
        if form == "sparse_tensor":
            if p.num_loops is not None:
                src = type(src)(rowptr=p.graph.rowptr, col=p.graph.col, sparse_sizes=(self.num_dst, self.num_src),
                                is_sorted=True, trust_data=True)
            return src.set_value(alpha, layout="coo")
        if not sparse_value:
            return src, alpha
        size = (self.num_dst, self.num_src) + tuple(alpha.shape[1:])
        if p.num_loops is not None:  # the loop-augmented structure, in the layout's order
            if form == "csr":
                return torch.sparse_csr_tensor(p.graph.rowptr, p.src, alpha, size), alpha
            if form == "csc":
                colptr = _counts_to_ptr(p.src, self.num_src)
                return torch.sparse_csc_tensor(colptr, p.dst, alpha, size), alpha
            return torch.sparse_coo_tensor(torch.stack([p.dst, p.src]), alpha, size).coalesce(), alpha
        if form == "csr":
            return torch.sparse_csr_tensor(src.crow_indices(), src.col_indices(), alpha, size), alpha
        if form == "csc":
            return torch.sparse_csc_tensor(src.ccol_indices(), src.row_indices(), alpha, size), alpha
        return torch.sparse_coo_tensor(src._indices(), alpha, size).coalesce(), alpha


def loop_attr(edge_attr: Tensor, dst: Tensor, num_loops: int, fill_value) -> Tensor:
    """Edge features of the loops i -> i, i < num_loops, from `fill_value`: None (ones), a float, a
    tensor, or a reduction of each target's incoming edge features (`edge_attr` of the edges into
    `dst`): 'add'/'sum', 'mean', 'max', 'min', 'mul' (a target without edges gets 0), as PyG."""
    size = (num_loops,) + tuple(edge_attr.shape[1:])
    if fill_value is None:
        return edge_attr.new_ones(size)
    if isinstance(fill_value, (int, float)) and not isinstance(fill_value, bool):
        return edge_attr.new_full(size, float(fill_value))
    if isinstance(fill_value, Tensor):
        fill = fill_value.to(edge_attr.device, edge_attr.dtype)
        if edge_attr.dim() != fill.dim():
            fill = fill.unsqueeze(0)
        return fill.expand(size).contiguous()
    if isinstance(fill_value, str):
        reduce = {"add": "sum", "sum": "sum", "mean": "mean", "max": "amax", "min": "amin",
                  "mul": "prod"}.get(fill_value)
        if reduce is None:
            raise ValueError(f"fill_value must be None, a float, a tensor or one of 'add', 'sum', 'mean', "
                             f"'max', 'min', 'mul', got {fill_value!r}")
        index = dst.view(-1, *([1] * (edge_attr.dim() - 1))).expand_as(edge_attr)
        return edge_attr.new_zeros(size).scatter_reduce(0, index, edge_attr, reduce, include_self=False)
    raise ValueError(f"fill_value must be None, a float, a tensor or a reduction name, got {fill_value!r}")


def prepare(edge_index, num_src: int, num_dst: int, *, self_loops: Optional[int] = None,
            device: Optional[torch.device] = None) -> Adjacency:
    """The adjacency of one layer call over `num_src` sources and `num_dst` targets, in any accepted
    form (see the module docstring); with `self_loops=n`, existing loops removed and i -> i added for
    i < n. Prepared once per pattern (cached as the module docstring says)."""
    form = _form(edge_index)
    stated = _stated_sizes(edge_index, form)
    if stated is not None and stated != (num_src, num_dst):
        raise ValueError(f"edge_index is an adjacency of {stated[1]} targets x {stated[0]} sources "
                         f"(adj_t [N_dst, N_src]), but the layer's inputs have {num_dst} targets and "
                         f"{num_src} sources")
    where = edge_index.storage.col().device if form == "sparse_tensor" else edge_index.device
    if device is not None and where != torch.device(device):
        raise ValueError(f"edge_index is on {where} but the node features are on {device}; move it with .to()")
    if form == "graph" and self_loops is None:
        pattern = _Pattern(None, num_edges=edge_index.num_edges)  # the Graph as it is
    elif form == "graph":  # kept on the Graph, which it cannot outlive
        pattern = edge_index.cached(("graphattn.nn.self_loops", self_loops),
                                    lambda: _build(edge_index, form, num_src, num_dst, self_loops))
    elif form == "sparse_tensor" or torch.compiler.is_compiling():
        pattern = _build(edge_index, form, num_src, num_dst, self_loops)
    else:
        pattern = _cached(edge_index, form, num_src, num_dst, self_loops)
    return Adjacency(edge_index, form, pattern, num_src, num_dst)
