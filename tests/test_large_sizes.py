"""Sizes past 2**31 elements: every row offset (row * H * D) past the int32 range must be computed in
64 bits by the CPU kernels. One bfloat16 tensor x [N, H, D] with N * H * D > 2**31 serves as both q
and k (two leaves sharing its storage, so the gradients dq and dk are separate tensors and autograd
does not add them into a third); the edges touch rows just below, at and above element 2**31 and the
last row, plus random ones. Checked against the float64 reference on the touched rows, forward and
backward, and every other gradient row must be exactly zero (a write at a wrapped offset lands
there).

Memory: x is zeros from calloc, written only at the touched rows, so its untouched pages are never
resident; dq and dk (4.3 GB each, written in full by the kernels) make the peak about 9 GB. Time:
about 30 s per test on 2 busy cores. Both run in CI by default; they are skipped, saying so, when the
machine has less than 12 GiB available, and GRAPHATTN_LARGE_TESTS=0 turns them off.

Not covered here: E or E * H past 2**31 (the int64 CSR alone would take 2 * 8 * 2**31 bytes), and the
Triton and CUDA kernels at these sizes (the interpreter copies whole tensors; GPU runs belong to the
GPU validation).
"""
import os

import numpy as np
import pytest
import torch

import graphattn
from graphattn import Graph, reference

from conftest import DEVICE, assert_matches

H, D, DV = 2, 256, 4
ROW = H * D
BOUNDARY_ROW = (1 << 31) // ROW  # its first element is element 2**31 of x
N = BOUNDARY_ROW + 4097  # N * H * D = 2**31 + 4097 * 512 elements: 4.3 GB in bfloat16
NEEDED_GIB = 12


def _available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 0.0


pytestmark = [
    pytest.mark.skipif(DEVICE != "cpu", reason="the CPU kernels' 64-bit offsets (GPU sizes: the GPU validation)"),
    pytest.mark.skipif(os.environ.get("GRAPHATTN_LARGE_TESTS", "1") == "0", reason="GRAPHATTN_LARGE_TESTS=0"),
    pytest.mark.skipif(_available_gib() < NEEDED_GIB,
                       reason=f"needs {NEEDED_GIB} GiB of available memory, has {_available_gib():.1f}"),
]


def touched_rows(generator):
    """Rows on both sides of element 2**31, the first and last rows, and random ones; sorted, unique."""
    fixed = [0, 1, BOUNDARY_ROW - 2, BOUNDARY_ROW - 1, BOUNDARY_ROW, BOUNDARY_ROW + 1, N - 2, N - 1]
    rand = torch.randint(0, N, (24,), generator=generator).tolist()
    return torch.tensor(sorted(set(fixed + rand)))


def lazy_zeros(*shape):
    """A bfloat16 zero tensor whose pages become resident only where written: numpy's zeros comes
    from calloc, which maps fresh zero pages instead of writing them (torch.zeros writes them all)."""
    return torch.from_numpy(np.zeros(shape, dtype=np.uint16)).view(torch.bfloat16)


def large_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    rows = touched_rows(g)
    x = lazy_zeros(N, H, D)
    x[rows] = torch.randn(rows.numel(), H, D, generator=g).to(torch.bfloat16)
    v = torch.randn(N, H, DV, generator=g).to(torch.bfloat16)
    return g, rows, x, v


def assert_zero_outside(grad, rows, what):
    """Every row of grad outside `rows` is zero, scanned in chunks (no 2**31-element temporaries)."""
    outside = torch.ones(N, dtype=torch.bool)
    outside[rows] = False
    chunk = 1 << 18
    for start in range(0, N, chunk):
        block = grad[start:start + chunk]
        nonzero = block.reshape(block.shape[0], -1).ne(0).any(1) & outside[start:start + chunk]
        assert not nonzero.any(), f"{what}: rows {(nonzero.nonzero().flatten() + start)[:5].tolist()} are nonzero"


def test_edge_list_past_2_31_elements_matches_the_reference_on_the_touched_rows():
    g, rows, x, v = large_inputs(0)
    # Each touched row sends to and receives from 3 touched rows: q offsets (targets), k offsets
    # (sources) and the transposed CSR's source rows all reach past 2**31.
    src = rows[torch.randint(0, rows.numel(), (3 * rows.numel(),), generator=g)]
    dst = rows.repeat(3)
    edge_index = torch.stack([src, dst])
    q, k = x.detach().requires_grad_(), x.detach().requires_grad_()  # one storage, two leaves
    v.requires_grad_()
    graph = Graph.from_edge_index(edge_index, num_nodes=N)
    out, lse = graphattn.attention(q, k, v, graph, backend="cpu", return_lse=True)
    grad_out = torch.randn(rows.numel(), H, DV, generator=g).to(torch.bfloat16)
    full_grad_out = torch.zeros(N, H, DV, dtype=torch.bfloat16)
    full_grad_out[rows] = grad_out
    out.backward(full_grad_out)

    # The reference on the sub-problem of the touched rows, renumbered 0..R-1, in float64.
    remap = torch.full((N,), -1)
    remap[rows] = torch.arange(rows.numel())
    sub = [x[rows].double().requires_grad_(), x[rows].double().requires_grad_(), v.detach()[rows].double()]
    sub[2].requires_grad_()
    ref_out, ref_lse = reference.sparse_attention(*sub, remap[src], remap[dst])
    ref_out.backward(grad_out.double())

    assert_matches(out.detach()[rows], ref_out, torch.bfloat16, "out")
    assert_matches(lse.detach()[rows], ref_lse, torch.bfloat16, "lse")
    for name, got, ref in (("dq", q.grad, sub[0].grad), ("dk", k.grad, sub[1].grad), ("dv", v.grad, sub[2].grad)):
        assert_matches(got[rows], ref, torch.bfloat16, name)
        assert_zero_outside(got, rows, name)
    others = torch.randint(0, N, (4096,), generator=g)
    others = others[remap[others] < 0]
    assert torch.equal(out.detach()[others], torch.zeros(others.numel(), H, DV, dtype=torch.bfloat16))
    assert torch.isneginf(lse.detach()[others]).all()


def test_segments_past_2_31_elements_match_the_reference_on_the_touched_rows():
    """The segment kernel at the same size: segments of one node everywhere (so the work stays
    O(N * H * D)), and segments of 2 and 3 nodes straddling element 2**31 and at the end."""
    g, rows, x, v = large_inputs(1)
    small = [(BOUNDARY_ROW - 1, BOUNDARY_ROW + 1), (BOUNDARY_ROW + 1, BOUNDARY_ROW + 4), (N - 3, N)]
    is_bound = torch.ones(N + 1, dtype=torch.bool)
    for lo, hi in small:
        is_bound[lo + 1:hi] = False
    ptr = torch.arange(N + 1)[is_bound]
    rows = torch.tensor(sorted(set(rows.tolist()) | {r for lo, hi in small for r in range(lo, hi)}))
    x[rows] = torch.randn(rows.numel(), H, D, generator=g).to(torch.bfloat16)
    q, k = x.detach().requires_grad_(), x.detach().requires_grad_()
    v.requires_grad_()
    out, lse = graphattn.attention(q, k, v, Graph.block_diagonal(ptr), backend="cpu", return_lse=True)
    grad_out = torch.randn(rows.numel(), H, DV, generator=g).to(torch.bfloat16)
    grad_lse = torch.randn(rows.numel(), H, generator=g)
    full_grad_out = torch.zeros(N, H, DV, dtype=torch.bfloat16)
    full_grad_out[rows] = grad_out
    full_grad_lse = torch.zeros(N, H)
    full_grad_lse[rows] = grad_lse
    torch.autograd.backward((out, lse), (full_grad_out, full_grad_lse))

    # The touched rows' segments, as one smaller segments problem.
    sizes = []
    i = 0
    row_list = rows.tolist()
    segment_of = {lo: hi for lo, hi in small}
    while i < len(row_list):
        hi = segment_of.get(row_list[i], row_list[i] + 1)
        sizes.append(hi - row_list[i])
        i += hi - row_list[i]
    sub_ptr = torch.tensor([0] + sizes).cumsum(0)
    sub = [x[rows].double().requires_grad_(), x[rows].double().requires_grad_(),
           v.detach()[rows].double().requires_grad_()]
    ref_out, ref_lse = reference.segment_attention(*sub, sub_ptr, 1.0 / D ** 0.5)
    torch.autograd.backward((ref_out, ref_lse), (grad_out.double(), grad_lse.double()))

    assert_matches(out.detach()[rows], ref_out, torch.bfloat16, "out")
    assert_matches(lse.detach()[rows], ref_lse, torch.bfloat16, "lse")
    for name, got, ref in (("dq", q.grad, sub[0].grad), ("dk", k.grad, sub[1].grad), ("dv", v.grad, sub[2].grad)):
        assert_matches(got[rows], ref, torch.bfloat16, name)
        assert_zero_outside(got, rows, name)
