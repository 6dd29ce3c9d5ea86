"""A differential fuzz over the whole contract (shared/API.md).

hypothesis draws a plain description of one call, a `Case` (sizes, the edge list, flags and a
seed for the values), from one strategy per pattern: sparse edge lists (bipartite, complete
graphs given as edge lists, hubs, duplicates, self-loops, isolated targets, masked targets,
the score kinds, dropout, returned weights), segments and dense. `build` turns a Case into
tensors; `check` runs it on every backend that serves it and compares out, lse, alpha and every
gradient with the float64 reference (graphattn/reference.py called on the raw edge_index
columns, so Graph's sorting and the column bookkeeping are checked too), within conftest's
REL_RMS, and checks what the contract says without a reference (never NaN; a target without a
live edge gives out 0, lse -inf, zero gradient).

Deterministic in CI: derandomize=True (hypothesis' fixed seed) and no example database; see
GRAPHATTN_FUZZ_SCALE and GRAPHATTN_FUZZ_RANDOM below for a longer hunt. A failure prints the
shrunk Case (its repr is a constructor call) and a line to paste into tests/fuzz_corpus.json,
whose cases test_corpus replays on every run: every defect the fuzz found stays covered.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
from pathlib import Path
from typing import Optional
from unittest import mock

import pytest
import torch

from hypothesis import HealthCheck, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

import graphattn
from graphattn import dropout, reference
from graphattn.dispatch import BACKENDS, BackendError

from conftest import DEVICE, REL_RMS, assert_matches, has_triton_kernels

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
INDEX_DTYPES = {"int64": torch.int64, "int32": torch.int32}
TRITON_CSR = has_triton_kernels("csr_attention")
TRITON_DENSE = has_triton_kernels("dense_attention")

# Degrees around the kernels' long-row thresholds: the CPU kernels fold scores into the online
# softmax in chunks of kChunk = 64 edges (csrc/cpu/attention_rows.h); the Triton CSR kernels
# treat rows above 16 edges as long (DEGREE_CLASSES) and split those above HUB_CHUNK = 256 into
# chunks merged through their lse (kernels/csr_attention.py). A case may also lower Triton's
# hub_chunk (`triton_hub_chunk`), so that a row of 20 edges takes the hub path without the
# interpreter's cost of a 257-edge row.
HUB_DEGREES = (20, 65, 64, 129, 257)

# A gradient that cancels to (nearly) zero in exact arithmetic, e.g. dk of a target with a single
# edge when lse is not in the loss, keeps the rounding noise of the terms that cancel (the
# backward's rowsum(out * dout) reads the output rounded to the dtype, as in FlashAttention), and a
# relative error of noise over nearly nothing means nothing. Those terms are unit-scale (randn
# inputs and upstream gradients), so the error is measured against
# max(|expected|, UNIT_RMS_FLOOR * sqrt(numel)): an absolute RMS error of REL_RMS[dtype] at most.
UNIT_RMS_FLOOR = 1.0

# For a longer hunt than CI's: GRAPHATTN_FUZZ_SCALE=10 multiplies the example counts, and
# GRAPHATTN_FUZZ_RANDOM=1 draws fresh examples (hypothesis then prints the seed of a failure,
# for pytest --hypothesis-seed=...).
SCALE = float(os.environ.get("GRAPHATTN_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("GRAPHATTN_FUZZ_RANDOM") == "1"


def fuzz_settings(examples):
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=not RANDOM, database=None,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------
# The description of one call
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """One call of graphattn.attention, as plain values (its repr is a constructor call)."""

    pattern: str  # "sparse", "segments" or "dense"
    dtype: str = "float32"
    heads: int = 1
    d: int = 4  # head dim of q and k (ignored by score="gat": q, k [N, H])
    dv: int = 4
    seed: int = 0  # the values of q, k, v, bias, att, the upstream gradients and the dropout generator
    scale: Optional[float] = None
    return_lse: bool = True
    strided: bool = False  # q, k, v, bias, att as non-contiguous views
    grad: bool = True  # also compare every gradient (else a forward under no_grad)
    # sparse
    n_src: int = 0
    n_dst: int = 0
    edges: tuple = ()  # ((source, target), ...) in edge_index column order
    index_dtype: str = "int64"
    reuse_graph: bool = False  # pass one Graph.from_edge_index to every call, and call twice
    bias: str = "none"  # "none", "e" ([E], shared by heads) or "eh" ([E, H])
    masked: tuple = ()  # ((column, head), ...): bias -inf there (every head for an [E] bias)
    masked_targets: tuple = ()  # ((target, head), ...): every edge into target masked in that head
    score: str = "dot"
    negative_slope: float = 0.2
    dropout_p: float = 0.0
    return_attention: bool = False
    triton_hub_chunk: int = 0  # > 0: the Triton plan splits rows above this many edges (0: its default)
    # segments
    sizes: tuple = ()  # nodes of each segment
    from_batch: bool = False  # Graph.from_batch instead of Graph.block_diagonal
    # dense
    batch: tuple = ()  # leading dims
    lq: int = 0
    lk: int = 0
    causal: bool = False

    def __post_init__(self):
        # JSON gives lists: keep the tuples (hashable, and the repr stays one form).
        for f in ("edges", "masked", "masked_targets"):
            object.__setattr__(self, f, tuple(tuple(x) for x in getattr(self, f)))
        for f in ("sizes", "batch"):
            object.__setattr__(self, f, tuple(getattr(self, f)))

    def __repr__(self):
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if f.name == "pattern" or getattr(self, f.name) != f.default]
        return f"Case({', '.join(changed)})"

    def as_json(self):
        return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                           if f.name == "pattern" or getattr(self, f.name) != f.default})


# ---------------------------------------------------------------------------
# Strategies: one per pattern, each producing a Case
# ---------------------------------------------------------------------------
def dtypes():
    return st.sampled_from(["float32", "float16", "bfloat16"] + (["float64"] if DEVICE == "cpu" else []))


def head_dims():
    """Mostly small; a quarter at or around the CPU kernels' SIMD widths (8 or 16 floats) and above
    the Triton CSR kernels' row budget (heads x padded dim > 512 elements: heads split across
    programs), which cost the interpreter more."""
    small = st.integers(1, 9)
    return st.one_of(small, small, small, st.sampled_from([16, 17, 32, 64, 100, 130]))


# Zero and negative scales are finite floats too (uniform weights, reversed preferences).
SCALES = st.sampled_from([None, 1.0, 0.3, 2.0, 0.0, -0.7])


@st.composite
def edge_lists(draw, n_src, n_dst):
    """Edges in column order: none, random, a complete graph, or random plus a hub; with duplicates
    and self-loops added on request, shuffled or not."""
    shape = "no nodes on one side" if 0 in (n_src, n_dst) else draw(
        st.sampled_from(["random", "complete", "hub", "random", "no edges"]))
    event(f"sparse shape: {shape}")
    if shape in ("no nodes on one side", "no edges"):
        return ()
    if shape == "complete":  # every (source, target) pair once: auto takes the dense path
        edges = [(j, i) for i in range(n_dst) for j in range(n_src)]
    else:
        edges = draw(st.lists(st.tuples(st.integers(0, n_src - 1), st.integers(0, n_dst - 1)), min_size=1,
                              max_size=30))
    if shape == "hub":
        hub, degree = draw(st.integers(0, n_dst - 1)), draw(st.sampled_from(HUB_DEGREES))
        start, step = draw(st.integers(0, n_src - 1)), draw(st.integers(1, 3))
        edges += [((start + step * i) % n_src, hub) for i in range(degree)]
    if edges and shape != "complete":
        edges += [edges[i] for i in draw(st.lists(st.integers(0, len(edges) - 1), max_size=4))]  # duplicates
    if shape != "complete" and draw(st.booleans()):
        edges += [(i, i) for i in range(min(n_src, n_dst))]  # self-loops
    if draw(st.booleans()):
        edges = draw(st.permutations(edges))
    return tuple(edges)


@st.composite
def sparse_cases(draw):
    # Half the cases take the plain op (dot score, no dropout, no weights returned), half the
    # scored op with the GNN extras: separate kernels, each needs its share of the examples.
    plain = draw(st.booleans())
    score = "dot" if plain else draw(st.sampled_from(["dot", "gat", "gatv2"]))
    n_dst = draw(st.integers(1, 10))
    n_src = draw(st.one_of(st.just(n_dst), st.integers(1, 10)))  # bipartite when they differ
    # Now and then q or k/v without rows.
    empty = draw(st.sampled_from([None] * 12 + ["src", "dst"]))
    n_src, n_dst = (0 if empty == "src" else n_src), (0 if empty == "dst" else n_dst)
    heads = draw(st.integers(1, 4))
    edges = draw(edge_lists(n_src, n_dst))
    bias = draw(st.sampled_from(["none", "eh", "e"]))
    masked, masked_targets = (), ()
    if bias != "none" and edges:
        masked = tuple(draw(st.lists(st.tuples(st.integers(0, len(edges) - 1), st.integers(0, heads - 1)),
                                     max_size=4)))
        masked_targets = tuple(draw(st.lists(st.tuples(st.integers(0, n_dst - 1), st.integers(0, heads - 1)),
                                             max_size=2, unique=True)))
    return Case(
        pattern="sparse", dtype=draw(dtypes()), heads=heads, d=draw(head_dims()), dv=draw(head_dims()),
        seed=draw(st.integers(0, 2**16)), scale=draw(SCALES) if score == "dot" else None,
        return_lse=draw(st.booleans()), strided=draw(st.booleans()), grad=draw(st.sampled_from([True, True, False])),
        n_src=n_src, n_dst=n_dst, edges=edges, index_dtype=draw(st.sampled_from(list(INDEX_DTYPES))),
        reuse_graph=draw(st.booleans()), bias=bias, masked=masked, masked_targets=masked_targets, score=score,
        negative_slope=draw(st.sampled_from([0.2, 0.01, 1.0, -0.5])) if score != "dot" else 0.2,
        dropout_p=0.0 if plain else draw(st.sampled_from([0.0, 0.3, 0.6, 1.0])),
        return_attention=False if plain else draw(st.booleans()),
        triton_hub_chunk=draw(st.sampled_from(triton_hub_chunks(edges))),
    )


def triton_hub_chunks(edges):
    """Triton hub_chunk values worth trying: small ones split long rows (above 16 edges) into many
    chunks; bigger hubs get larger ones, as the interpreter runs every chunk's program in turn."""
    max_degree = max(collections.Counter(t for _, t in edges).values(), default=0)
    return [0, 3, 8] if max_degree <= 40 else [0, 32]


@st.composite
def segment_cases(draw):
    # Segments longer than 16 cross the interpreted Triton kernels' query tile (SEGMENT_BLOCK_M).
    sizes = draw(st.lists(st.integers(0, 20), max_size=3))
    sizes.insert(draw(st.integers(0, len(sizes))), draw(st.integers(1, 20)))  # at least one node
    return Case(
        pattern="segments", dtype=draw(dtypes()), heads=draw(st.integers(1, 4)), d=draw(head_dims()),
        dv=draw(head_dims()), seed=draw(st.integers(0, 2**16)), scale=draw(SCALES),
        return_lse=draw(st.booleans()), strided=draw(st.booleans()), grad=draw(st.sampled_from([True, True, False])),
        sizes=tuple(sizes), from_batch=draw(st.booleans()),
    )


@st.composite
def dense_cases(draw):
    # Lengths above 16 cross the interpreted Triton kernels' tiles; Lq != Lk with causal tests the
    # top-left alignment.
    return Case(
        pattern="dense", dtype=draw(dtypes()), heads=draw(st.integers(1, 4)), d=draw(head_dims()),
        dv=draw(head_dims()), seed=draw(st.integers(0, 2**16)), scale=draw(SCALES),
        return_lse=draw(st.booleans()), strided=draw(st.booleans()), grad=draw(st.sampled_from([True, True, False])),
        batch=draw(st.sampled_from([(), (2,), (2, 1)])), lq=draw(st.integers(1, 24)), lk=draw(st.integers(1, 24)),
        causal=draw(st.booleans()),
    )


# ---------------------------------------------------------------------------
# Case -> tensors
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Inputs:
    values: dict  # "q", "k", "v" (and "bias", "att"): float64, exactly representable in the case's dtype
    edge_index: Optional[torch.Tensor]  # sparse: [2, E] of the case's index dtype
    ptr: Optional[torch.Tensor]  # segments: offsets
    upstream: dict  # "out", "lse", "alpha": float64 weights of the loss whose gradients are compared


def build(case: Case) -> Inputs:
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(case.seed)

    def rand(*shape):  # rounded to the dtype, so that the reference sees the kernel's inputs
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double().to(DEVICE)

    h, d, dv = case.heads, case.d, case.dv
    edge_index = ptr = None
    if case.pattern == "sparse":
        qk_tail = (h,) if case.score == "gat" else (h, d)
        values = {"q": rand(case.n_dst, *qk_tail), "k": rand(case.n_src, *qk_tail), "v": rand(case.n_src, h, dv)}
        if case.score == "gatv2":
            values["att"] = rand(h, d)
        edge_index = torch.tensor(case.edges, dtype=torch.int64).reshape(-1, 2).t().contiguous()
        if case.bias != "none":
            values["bias"] = masked_bias(case, rand(len(case.edges), h), edge_index[1].to(DEVICE))
        edge_index = edge_index.to(DEVICE, INDEX_DTYPES[case.index_dtype])
        lead, lse_shape = (case.n_dst,), (case.n_dst, h)
    elif case.pattern == "segments":
        n = sum(case.sizes)
        values = {"q": rand(n, h, d), "k": rand(n, h, d), "v": rand(n, h, dv)}
        ptr = torch.tensor((0,) + case.sizes).cumsum(0).to(DEVICE)
        lead, lse_shape = (n,), (n, h)
    else:
        values = {"q": rand(*case.batch, case.lq, h, d), "k": rand(*case.batch, case.lk, h, d),
                  "v": rand(*case.batch, case.lk, h, dv)}
        lead, lse_shape = case.batch + (case.lq,), case.batch + (case.lq, h)
    upstream = {"out": rand(*lead, h, dv), "lse": rand(*lse_shape), "alpha": rand(len(case.edges), h)}
    return Inputs(values, edge_index, ptr, upstream)


def masked_bias(case: Case, bias: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The [E, H] (or [E]) bias with the case's -inf entries."""
    bias = bias.clone()
    for column, head in case.masked:
        bias[column, head] = -math.inf
    for target, head in case.masked_targets:
        bias[dst == target, head] = -math.inf
    if case.bias == "e":  # shared by heads: an entry masked in any head is masked in all
        return torch.where(torch.isinf(bias).any(1), -math.inf, bias[:, 0])
    return bias


def as_input(value: torch.Tensor, dtype, strided: bool) -> torch.Tensor:
    """`value` in `dtype`, requiring grad. strided: a view with no unit stride anywhere (every other
    element of a wider last dim, first two dims stored swapped), like a slice of a fused projection."""
    if not strided:  # a copy: no backend shares a tensor with another or with the reference
        return value.to(dtype, copy=True).requires_grad_()
    if value.dim() == 1:
        buf = value.new_zeros(2 * value.shape[0], dtype=dtype)
        buf[::2] = value
        return buf.requires_grad_()[::2]
    swapped = value.transpose(0, 1)
    buf = value.new_zeros(*swapped.shape[:-1], 2 * swapped.shape[-1], dtype=dtype)
    buf[..., ::2] = swapped
    return buf.requires_grad_()[..., ::2].transpose(0, 1)


def pattern_arg(case: Case, inputs: Inputs, shared_graph):
    """What is passed as edge_index: the tensor, a (shared) Graph, or None for dense."""
    if case.pattern == "sparse":
        return shared_graph if case.reuse_graph else inputs.edge_index
    if case.pattern == "segments":
        if case.from_batch:
            batch = torch.repeat_interleave(torch.arange(len(case.sizes), device=DEVICE),
                                            torch.tensor(case.sizes, device=DEVICE))
            return graphattn.Graph.from_batch(batch)
        return graphattn.Graph.block_diagonal(inputs.ptr)
    return None


# ---------------------------------------------------------------------------
# Running a call, the reference, and comparing
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    out: torch.Tensor
    lse: Optional[torch.Tensor]
    alpha: Optional[torch.Tensor]
    grads: dict  # name -> gradient (empty without grad)


def loss(result: Result, upstream: dict) -> torch.Tensor:
    """A fixed random linear function of everything the call returned."""
    total = (result.out.double() * upstream["out"]).sum()
    if result.lse is not None:
        lse = result.lse.double()
        total = total + (torch.where(torch.isfinite(lse), lse, 0.0) * upstream["lse"]).sum()
    if result.alpha is not None:
        total = total + (result.alpha.double() * upstream["alpha"]).sum()
    return total


def with_grads(result: Result, leaves: dict, upstream: dict, grad: bool) -> Result:
    """The gradients of `loss` for every leaf (None for a leaf the result does not depend on)."""
    if grad:
        names = list(leaves)
        result.grads = dict(zip(names, torch.autograd.grad(loss(result, upstream), [leaves[n] for n in names],
                                                           allow_unused=True)))
    return result


def reference_grads(result: Result, leaves: dict, upstream: dict, grad: bool) -> Result:
    """with_grads for the reference, whose results on empty inputs (no keys, no nodes) are constants
    with no autograd graph: their gradients are zero."""
    if grad and not loss(result, upstream).requires_grad:
        result.grads = {name: torch.zeros_like(t) for name, t in leaves.items()}
        return result
    return with_grads(result, leaves, upstream, grad)


def run(case: Case, inputs: Inputs, backend: str, pattern, grad: bool) -> Result:
    """graphattn.attention on the case's inputs with `backend`; raises BackendError if it does not serve."""
    dtype = DTYPES[case.dtype]
    leaves = {name: as_input(t, dtype, case.strided) for name, t in inputs.values.items()}
    extras = {}
    if case.pattern == "sparse":
        extras = dict(bias=leaves.get("bias"), score=case.score, att=leaves.get("att"),
                      dropout_p=case.dropout_p, return_attention=case.return_attention)
        if case.score != "dot":
            extras["negative_slope"] = case.negative_slope
        if case.dropout_p > 0:
            extras["generator"] = torch.Generator(device=DEVICE).manual_seed(case.seed)
    with torch.set_grad_enabled(grad):
        returned = graphattn.attention(leaves["q"], leaves["k"], leaves["v"], pattern, scale=case.scale,
                                       causal=case.causal, return_lse=case.return_lse, backend=backend, **extras)
        returned = list(returned) if isinstance(returned, tuple) else [returned]
    out = returned.pop(0)
    lse = returned.pop(0) if case.return_lse else None
    alpha = returned.pop(0) if case.return_attention else None
    assert not returned, f"{backend}: {len(returned)} unexpected extra results"
    return with_grads(Result(out, lse, alpha, {}), leaves, inputs.upstream, grad)


def expected(case: Case, inputs: Inputs) -> Result:
    """The float64 reference on the raw edge_index columns (graphattn/reference.py)."""
    leaves = {name: t.clone().requires_grad_() for name, t in inputs.values.items()}
    q, k, v = leaves["q"], leaves["k"], leaves["v"]
    alpha = None
    if case.pattern == "sparse":
        src, dst = inputs.edge_index.long()
        keep = None
        if case.dropout_p > 0:  # the contract's mask: a hash of (seed drawn from the generator, column, head)
            seed = dropout.draw_seed(torch.Generator(device=DEVICE).manual_seed(case.seed), DEVICE)
            keep = dropout.keep_mask(seed, len(case.edges), case.heads, case.dropout_p)
        out, lse, alpha = reference.sparse_attention(
            q, k, v, src, dst, leaves.get("bias"), case.scale, score=case.score,
            negative_slope=case.negative_slope, att=leaves.get("att"), dropout_p=case.dropout_p,
            dropout_mask=keep, return_attention=True)
    elif case.pattern == "segments":
        out, lse = reference.segment_attention(q, k, v, inputs.ptr, case.scale)
    else:
        out, lse = reference.dense_attention(q, k, v, case.scale, case.causal)
    result = Result(out, lse if case.return_lse else None, alpha if case.return_attention else None, {})
    return reference_grads(result, leaves, inputs.upstream, case.grad)


def assert_close(got, want, dtype, what):
    """conftest's assert_matches (same infinities, relative RMS within REL_RMS[dtype]), the error of a
    vanishing expected tensor measured against unit scale (see UNIT_RMS_FLOOR)."""
    assert got is not None, f"{what}: missing"
    finite = torch.isfinite(want)
    norm = float(want.detach()[finite].double().norm())
    floor = REL_RMS[dtype] * UNIT_RMS_FLOOR * math.sqrt(int(finite.sum())) / (norm + 1e-30)
    assert_matches(got, want, dtype, what, floor=floor)


def compare(case: Case, got: Result, want: Result, label: str):
    dtype = DTYPES[case.dtype]
    assert got.out.dtype == dtype, f"{label} out: dtype {got.out.dtype}, not {dtype}"
    assert_close(got.out, want.out, dtype, f"{label} out")
    if case.return_lse:
        # float32, or float64 for float64 inputs (README, "Numerics": it keeps gradcheck exact).
        lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        assert got.lse.dtype == lse_dtype, f"{label} lse: dtype {got.lse.dtype}, not {lse_dtype}"
        assert_close(got.lse, want.lse, dtype, f"{label} lse")
    if case.return_attention:
        assert got.alpha.dtype == dtype, f"{label} alpha: dtype {got.alpha.dtype}, not {dtype}"
        assert_close(got.alpha, want.alpha, dtype, f"{label} alpha")
    for name, want_grad in want.grads.items():
        got_grad = got.grads.get(name)
        if want_grad is None:  # the reference never read it (e.g. no edges): nothing may flow to it
            assert got_grad is None or not got_grad.any(), f"{label} d{name}: nonzero, expected none"
            continue
        if got_grad is None:  # graphattn gave no gradient at all: it must be zero
            got_grad = torch.zeros_like(want_grad, dtype=dtype)
        assert got_grad.dtype == dtype, f"{label} d{name}: dtype {got_grad.dtype}, not {dtype}"
        assert_close(got_grad, want_grad, dtype, f"{label} d{name}")


def dead_targets(case: Case, inputs: Inputs) -> torch.Tensor:
    """bool [N_dst, H]: (target, head) pairs without an edge whose bias is not -inf."""
    live = torch.zeros(case.n_dst, case.heads, dtype=torch.bool, device=DEVICE)
    if case.edges:
        bias = inputs.values.get("bias")
        alive = (torch.ones(len(case.edges), case.heads, dtype=torch.bool, device=DEVICE) if bias is None
                 else torch.isfinite(bias if bias.dim() == 2 else bias[:, None].expand(-1, case.heads)))
        live.index_put_((inputs.edge_index[1].long(),), alive, accumulate=True)
    return ~live


def check_invariants(case: Case, inputs: Inputs, got: Result, label: str):
    """What the contract says without a reference: finite inputs give no NaN and no +inf; a target
    without a live edge gives out 0, lse -inf, zero dq and zero weights, per head."""
    for name, t in [("out", got.out), ("alpha", got.alpha)] + [(f"d{n}", g) for n, g in got.grads.items()]:
        if t is not None:
            assert torch.isfinite(t).all(), f"{label} {name}: not finite (NaN or inf) for finite inputs"
    if got.lse is not None:
        assert not torch.isnan(got.lse).any() and not torch.isposinf(got.lse).any(), f"{label} lse: NaN or +inf"
    if case.pattern != "sparse":
        return
    dead = dead_targets(case, inputs)
    assert not got.out[dead].any(), f"{label} out: nonzero on a target without a live edge"
    if got.lse is not None:
        assert torch.isneginf(got.lse[dead]).all(), f"{label} lse: not -inf on a target without a live edge"
    if got.grads.get("q") is not None:
        assert not got.grads["q"][dead].any(), f"{label} dq: nonzero on a target without a live edge"
    if got.alpha is not None and case.edges:
        assert not got.alpha[dead[inputs.edge_index[1].long()]].any(), f"{label} alpha: nonzero into a dead target"


def documented_backends(case: Case) -> set:
    """Backends the README's table says serve this call on DEVICE (besides 'reference' and 'auto')."""
    names = set()
    if DEVICE == "cpu" and case.pattern in ("sparse", "segments"):
        names.add("cpu")
    if case.pattern == "dense" or (DEVICE == "cpu" and case.pattern == "segments"):
        names.add("sdpa")
    triton = TRITON_CSR if case.pattern == "sparse" else TRITON_DENSE
    if triton and case.dtype != "float64":
        names.add("triton")
    return names


def report(line: str):
    """hypothesis prints notes of the shrunk failing example only; the corpus replay prints (pytest
    shows captured output of failures)."""
    if currently_in_test_context():
        note(line)
    else:
        print(line)


@contextlib.contextmanager
def triton_hub_chunk(chunk: int):
    """Make the Triton CSR plan split rows above `chunk` edges (0: leave its default)."""
    if not chunk or not TRITON_CSR:
        yield
        return
    kernels = importlib.import_module("graphattn.kernels.csr_attention")
    with mock.patch.object(kernels, "build_csr_plan", functools.partial(kernels.build_csr_plan, hub_chunk=chunk)):
        yield


def check(case: Case):
    """Every backend that serves `case` against the float64 reference, and the contract's invariants."""
    report(f"reproduce: check({case!r})")
    report(f"corpus entry (tests/fuzz_corpus.json): {{\"why\": \"...\", \"case\": {case.as_json()}}}")
    inputs = build(case)
    want = expected(case, inputs)
    assert not any(torch.isnan(t).any() for t in [want.out, want.lse, want.alpha, *want.grads.values()]
                   if t is not None), "the reference itself gives NaN"
    served = []
    with triton_hub_chunk(case.triton_hub_chunk if case.pattern == "sparse" else 0):
        shared_graph = None
        if case.pattern == "sparse" and case.reuse_graph:
            shared_graph = graphattn.Graph.from_edge_index(inputs.edge_index, num_nodes=(case.n_src, case.n_dst))
        for backend in [*BACKENDS, "auto"]:
            # With a reused Graph: a forward without grad first (plans without the transpose), then the call.
            grads = [False, case.grad] if case.reuse_graph else [case.grad]
            for i, grad in enumerate(grads):
                label = f"backend={backend!r} call {i + 1}/{len(grads)}"
                pattern = pattern_arg(case, inputs, shared_graph)
                try:
                    got = run(case, inputs, backend, pattern, grad)
                except BackendError:
                    if backend in ("reference", "auto"):  # something always serves: never a BackendError
                        raise
                    break
                if i == 0:
                    served.append(backend)
                check_invariants(case, inputs, got, label)
                compare(case, got, want if grad else dataclasses.replace(want, grads={}), label)
    if currently_in_test_context():
        event(f"served by: {', '.join(served)}")
    missing = documented_backends(case) - set(served)
    assert not missing, f"{sorted(missing)} refused a call the README says they serve"


# ---------------------------------------------------------------------------
# The fuzz, and the corpus of what it found
# ---------------------------------------------------------------------------
@fuzz_settings(120)
@given(case=sparse_cases())
def test_fuzz_sparse(case):
    check(case)


@fuzz_settings(40)
@given(case=segment_cases())
def test_fuzz_segments(case):
    check(case)


@fuzz_settings(60)
@given(case=dense_cases())
def test_fuzz_dense(case):
    check(case)


CORPUS = json.loads((Path(__file__).parent / "fuzz_corpus.json").read_text())


@pytest.mark.parametrize("entry", CORPUS, ids=[f"{i}-{e['why'][:50]}" for i, e in enumerate(CORPUS)])
def test_corpus(entry):
    """Every failure the fuzz found (and the defects it was written to cover), replayed."""
    check(Case(**entry["case"]))


def test_checker_catches_a_wrong_backend():
    """The checker must fail when a backend's answer is off: a softmax that drops the last edge
    of every call. The edges are plain, so any serving backend would be wrong the same way."""
    case = Case(pattern="sparse", n_src=5, n_dst=4, heads=2, edges=((0, 0), (1, 0), (2, 1), (3, 1), (4, 3)))
    original = graphattn.attention

    def drops_an_edge(q, k, v, edge_index=None, **kw):
        if isinstance(edge_index, torch.Tensor):
            edge_index = edge_index[:, :-1]
        return original(q, k, v, edge_index, **kw)

    with mock.patch.object(graphattn, "attention", drops_an_edge), pytest.raises(AssertionError):
        check(case)
    check(case)
