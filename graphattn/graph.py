"""The attention pattern, prepared once and reused across layers and steps.

A `Graph` is one of two kinds:
- "csr": explicit edges `src -> dst`, stored target-sorted (CSR over targets)
  so that the forward and dQ visit each target's incoming edges contiguously.
  The source-sorted view that dK/dV need is built lazily, once, the first time
  a backward needs it (`transposed()`).
- "segments": a batch of complete graphs, `ptr` = segment offsets. No edge is
  stored; node i attends to every node of its segment.

All data-dependent work (sorting, counting, range checks) happens here, so the
ops that consume a Graph have shapes that depend only on their inputs.

Thread safety: one Graph may be shared by threads that call attention() at
once. Its build-once caches (the transpose, is_complete, backend plans) are
built under a per-graph lock, once, and every thread gets the same object.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

_INDEX_DTYPES = (torch.int32, torch.int64)

# Graphs built while dynamo traces hold no lock of their own (dynamo cannot trace
# creating one); should such a graph escape the compiled region, it uses this one.
_SHARED_LOCK = threading.RLock()


@dataclass(frozen=True)
class TransposedCSR:
    """Edges grouped by source: for source j, positions colptr[j]:colptr[j+1]
    hold each edge's target (`row`) and original column (`eid`)."""

    colptr: torch.Tensor
    row: torch.Tensor
    eid: torch.Tensor


def _check_index_tensor(name: str, t, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must have dtype int64 or int32, got {t.dtype}; convert it with .long()")
    if t.dim() != dim:
        shape = "[2, E]" if dim == 2 else "a 1-D vector"
        raise ValueError(f"{name} must be {shape}, got shape {list(t.shape)}")


def _out_of_range(idx: Tensor, n: int):
    """An entry of `idx` outside [0, n) (the lowest if one is negative, else the highest), or None."""
    if idx.numel() == 0:
        return None
    lo, hi = (int(t) for t in torch.aminmax(idx))
    return lo if lo < 0 else hi if hi >= n else None


def _check_range(name: str, idx: Tensor, n: int) -> None:
    """IndexError unless every entry of `idx` is in [0, n)."""
    bad = _out_of_range(idx, n)
    if bad is not None:
        side = "k/v" if "sources" in name else "q"
        raise IndexError(
            f"{name} holds index {bad}, outside [0, {n}); every index must address a row "
            f"of {side} (pass num_nodes=(N_src, N_dst) if the graph has more nodes)"
        )


# Under torch.compile the eager check above cannot run while tracing (it reads the
# data), and a bare runtime assert would raise a generic error. This op does the same
# check when the compiled graph runs and returns the int64 index the CSR build then
# sorts and gathers: its output is consumed, so the compiler cannot drop it as dead
# code, and it runs before any kernel reads rows through those indices. Its
# implementation runs eagerly inside the compiled code, so the user sees this
# IndexError itself. Eager calls do not go through it (no extra copy there).
@torch.library.custom_op("graphattn::checked_index", mutates_args=())
def checked_index(index: Tensor, size: int, name: str) -> Tensor:
    """`index` as a new int64 tensor, after checking that every entry is in [0, size)."""
    _check_range(name, index, size)
    return index.to(torch.int64, copy=True)


@checked_index.register_fake
def _(index, size, name):
    return index.new_empty(index.shape, dtype=torch.int64)


def _counts_to_ptr(sorted_keys: torch.Tensor, n: int) -> torch.Tensor:
    """Offsets [n + 1] of each key's run in a sorted key vector."""
    keys = torch.arange(n + 1, device=sorted_keys.device, dtype=sorted_keys.dtype)
    return torch.searchsorted(sorted_keys, keys).to(torch.int64)


class Graph:
    """Attention pattern: who attends to whom. Build with a classmethod."""

    def __init__(self, kind, num_src, num_dst, *, rowptr=None, col=None, eid=None, ptr=None):
        self.kind = kind
        self.num_src = int(num_src)
        self.num_dst = int(num_dst)
        self.rowptr = rowptr  # csr: [num_dst + 1] int64
        self.col = col  # csr: [E] int64, the source of each target-sorted edge
        self.eid = eid  # csr: [E] int64, the edge_index column of each target-sorted edge
        self.ptr = ptr  # segments: [S + 1] int64
        self._transposed = None
        self._cache = {}  # backend schedules built from this pattern (see cached())
        self._lock = None if torch.compiler.is_compiling() else threading.RLock()

    # ---- construction -------------------------------------------------
    @classmethod
    def from_edge_index(cls, edge_index, num_nodes=None):
        """`edge_index [2, E]`: row 0 sources (rows of k/v), row 1 targets (rows of q).

        `num_nodes`: None (largest index + 1, both sides), an int (both sides),
        or `(N_src, N_dst)` for bipartite graphs.
        """
        _check_index_tensor("edge_index", edge_index, 2)
        if edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be [2, E] (sources, targets), got shape {list(edge_index.shape)}")
        if torch.compiler.is_compiling():
            if num_nodes is None:
                raise ValueError("under torch.compile, Graph.from_edge_index needs num_nodes (an int or "
                                 "(N_src, N_dst)): the largest index is data the compiler cannot read")
            num_src, num_dst = cls._resolve_num_nodes(num_nodes, None, None)
            src = checked_index(edge_index[0], num_src, "edge_index[0] (sources)")
            dst = checked_index(edge_index[1], num_dst, "edge_index[1] (targets)")
        else:
            src, dst = edge_index[0].long(), edge_index[1].long()
            num_src, num_dst = cls._resolve_num_nodes(num_nodes, src, dst)
            _check_range("edge_index[0] (sources)", src, num_src)
            _check_range("edge_index[1] (targets)", dst, num_dst)
        dst_sorted, order = torch.sort(dst, stable=True)
        return cls(
            "csr", num_src, num_dst,
            rowptr=_counts_to_ptr(dst_sorted, num_dst), col=src[order].contiguous(), eid=order,
        )

    @staticmethod
    def _resolve_num_nodes(num_nodes, src, dst):
        if num_nodes is None:
            n = int(torch.cat([src, dst]).max()) + 1 if src.numel() else 0
            return n, n
        if isinstance(num_nodes, int):
            sizes = (num_nodes, num_nodes)
        elif isinstance(num_nodes, (tuple, list)) and len(num_nodes) == 2:
            sizes = tuple(num_nodes)
        else:
            raise TypeError(f"num_nodes must be None, an int or a pair (N_src, N_dst), got {num_nodes!r}")
        # SymInt: under torch.compile with dynamic shapes the sizes come from q/k's symbolic shapes.
        if not all(isinstance(n, (int, torch.SymInt)) and not isinstance(n, bool) and n >= 0 for n in sizes):
            raise ValueError(f"num_nodes must hold non-negative ints, got {num_nodes!r}")
        return sizes

    @classmethod
    def block_diagonal(cls, ptr):
        """A batch of complete graphs: segment s is nodes `ptr[s]:ptr[s+1]`."""
        _check_index_tensor("ptr", ptr, 1)
        ptr = ptr.long()
        if ptr.numel() == 0 or int(ptr[0]) != 0:
            raise ValueError("ptr must start with 0: segment offsets [0, n_0, n_0+n_1, ...]")
        if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
            raise ValueError("ptr must be non-decreasing: segment offsets [0, n_0, n_0+n_1, ...]")
        n = int(ptr[-1])
        return cls("segments", n, n, ptr=ptr.contiguous())

    @classmethod
    def from_batch(cls, batch, num_graphs=None):
        """PyG's `batch` vector (graph id of each node, sorted)."""
        _check_index_tensor("batch", batch, 1)
        batch = batch.long()
        if batch.numel():
            if int(batch.min()) < 0:
                raise ValueError("batch must hold graph ids >= 0")
            if bool((batch[1:] < batch[:-1]).any()):
                raise ValueError("batch must be sorted (nodes of one graph contiguous), as PyG batches are")
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        return cls.block_diagonal(_counts_to_ptr(batch, num_graphs))

    # ---- views --------------------------------------------------------
    @property
    def num_edges(self) -> int:
        if self.kind == "csr":
            return int(self.col.numel())
        sizes = self.ptr[1:] - self.ptr[:-1]
        return int((sizes * sizes).sum())

    @property
    def num_segments(self) -> int:
        return int(self.ptr.numel() - 1) if self.kind == "segments" else 0

    @property
    def device(self) -> torch.device:
        return (self.rowptr if self.kind == "csr" else self.ptr).device

    def in_degree(self) -> torch.Tensor:
        """Incoming edges of each target, [num_dst]."""
        if self.kind == "csr":
            return self.rowptr[1:] - self.rowptr[:-1]
        sizes = self.ptr[1:] - self.ptr[:-1]
        return torch.repeat_interleave(sizes, sizes)

    def out_degree(self) -> torch.Tensor:
        """Outgoing edges of each source, [num_src]."""
        if self.kind == "csr":
            return self.transposed().colptr.diff()
        return self.in_degree()

    def degree_stats(self) -> dict:
        """min / max / mean in-degree and the number of targets without edges."""
        deg = self.in_degree()
        if deg.numel() == 0:
            return {"min": 0, "max": 0, "mean": 0.0, "isolated": 0}
        return {
            "min": int(deg.min()),
            "max": int(deg.max()),
            "mean": float(deg.double().mean()),
            "isolated": int((deg == 0).sum()),
        }

    def is_complete(self) -> bool:
        """Every (source, target) pair is an edge exactly once: the edge list of dense attention.
        Checked once per graph (a sort of the E pairs) and cached."""
        if self.kind != "csr":
            return False

        def check():
            if self.num_edges == 0 or self.num_edges != self.num_src * self.num_dst:
                return False
            if bool((self.in_degree() != self.num_src).any()):
                return False
            pairs = self.sorted_targets() * self.num_src + self.col
            return int(torch.unique(pairs).numel()) == self.num_edges

        return self.cached("is_complete", check)

    def transposed(self) -> TransposedCSR:
        """Edges grouped by source, built on first use and cached (dK/dV need it)."""
        if self.kind != "csr":
            raise ValueError("transposed() is defined for edge-list graphs only")
        if self._transposed is None:
            if torch.compiler.is_compiling():  # traced: one thread, and dynamo cannot trace a lock
                self._transposed = self._build_transposed()
            else:
                with self._lock or _SHARED_LOCK:
                    if self._transposed is None:  # another thread may have built it while we waited
                        self._transposed = self._build_transposed()
        return self._transposed

    def _build_transposed(self) -> TransposedCSR:
        row = self.sorted_targets()
        col_sorted, order = torch.sort(self.col, stable=True)
        return TransposedCSR(
            colptr=_counts_to_ptr(col_sorted, self.num_src),
            row=row[order].contiguous(),
            eid=self.eid[order].contiguous(),
        )

    def cached(self, key, build):
        """`build()` once per graph and key: backends keep their schedules here.

        Bounded: the keys are a fixed set (is_complete and each backend's schedule
        kinds), and the cache lives and dies with the graph. Thread-safe: concurrent
        first calls build once (the lock is re-entrant: a build may call transposed())."""
        if key in self._cache:  # entries are never removed, so a hit needs no lock
            return self._cache[key]
        if torch.compiler.is_compiling():
            self._cache[key] = build()
            return self._cache[key]
        with self._lock or _SHARED_LOCK:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def check_edges(self, with_transposed: bool = False) -> None:
        """IndexError unless the CSR that kernels read is well formed: offsets run from 0 to E
        without decreasing, every source is in [0, num_src) and every edge id in [0, E) (and the
        same of the transpose). Graph.from_edge_index builds it so; this catches a Graph whose
        tensors were altered afterwards, for backends whose kernels do not check where they read."""
        if self.kind != "csr":
            return
        parts = [("rowptr", "col", self.rowptr, self.col, self.eid, self.num_dst, self.num_src)]
        if with_transposed:
            t = self.transposed()
            parts.append(("transposed colptr", "transposed row", t.colptr, t.row, t.eid, self.num_src, self.num_dst))
        e = self.col.numel()
        for ptr_name, idx_name, ptr, idx, eid, rows, other in parts:
            if (ptr.numel() != rows + 1 or int(ptr[0]) != 0 or int(ptr[-1]) != e
                    or (rows and bool((ptr[1:] < ptr[:-1]).any()))):
                raise IndexError(f"graphattn: the Graph's {ptr_name} is not offsets from 0 to {e} over {rows} rows; "
                                 "rebuild the Graph from a valid edge_index")
            for name, t, n in ((idx_name, idx, other), ("edge ids", eid, e)):
                if t.numel() != e:
                    raise IndexError(f"graphattn: the Graph's {name} has {t.numel()} entries, not {e}; rebuild it")
                bad = _out_of_range(t, n)
                if bad is not None:
                    raise IndexError(f"graphattn: edge endpoint {bad} outside [0, {n}) in the "
                                     f"Graph's {name}; rebuild the Graph from a valid edge_index")

    def sorted_targets(self) -> torch.Tensor:
        """The target of each edge in target-sorted order, [E]."""
        if self.kind != "csr":
            raise ValueError("sorted_targets() is defined for edge-list graphs only")
        return torch.repeat_interleave(
            torch.arange(self.num_dst, device=self.device), self.in_degree(), output_size=self.col.numel()
        )

    def to(self, device) -> "Graph":
        """The same pattern on another device (the cached transpose moves too)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        g = Graph(self.kind, self.num_src, self.num_dst, rowptr=move(self.rowptr), col=move(self.col),
                  eid=move(self.eid), ptr=move(self.ptr))
        if self._transposed is not None:
            t = self._transposed
            g._transposed = TransposedCSR(move(t.colptr), move(t.row), move(t.eid))
        return g

    # A lock cannot be pickled or deep-copied (a model holding a Graph is copied by
    # copy.deepcopy, DDP and torch.save); the copy gets a fresh lock of its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        if self.kind == "segments":
            return f"Graph(segments={self.num_segments}, num_nodes={self.num_dst}, num_edges={self.num_edges})"
        return f"Graph(num_src={self.num_src}, num_dst={self.num_dst}, num_edges={self.num_edges})"
