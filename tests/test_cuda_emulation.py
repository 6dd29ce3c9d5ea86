"""The CUDA kernels of csrc/cuda/ run on the CPU, on every CI run.

csr_attention_binding.cpp with GRAPHATTN_CUDA_EMULATION defined compiles the same
kernels and launchers (csr_attention.cuh, through the same .cu files) with the host
compiler against csrc/cuda/emulation.h: a block is blockDim.x threads, warp shuffles
and __syncthreads are barriers, __shared__ is static. The ops register as
torch.ops.graphattn_emu.* for CPU tensors, with the CUDA binding's checks.

Checked against the float64 reference (graphattn/reference.py) and the C++ CPU
kernels: forward, backward, lse, both bias forms, hub rows (the block-per-row
kernels and their work queue), empty targets, no edges, the three dtypes, head dims
that are not powers of two, misaligned rows (the scalar-load fallback), masked rows,
and corrupt graphs (IndexError / RuntimeError, never an out-of-bounds read).

The build is cached under build/cuda-emulation (a minute or two the first time). It
needs a C++20 compiler and the CUDA headers (cuda_fp16.h works on the host); without
them the tests skip, saying which is missing, except where GRAPHATTN_REQUIRE_CUDA_EMULATION=1
(CI sets it where nvcc exists) makes that a failure. Sizes are small: every emulated
thread is a fiber.
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphattn
from conftest import assert_matches, reference_sparse

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HUB_DEGREE = 256  # kHubDegree of csr_attention.cuh: rows with more edges go to the hub kernels
REQUIRED = os.environ.get("GRAPHATTN_REQUIRE_CUDA_EMULATION") == "1"


def _setup_functions(*names):
    """Functions of setup.py, without running setup(): the same toolkit search as the build."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    namespace = {"os": os, "re": __import__("re"), "shutil": shutil, "subprocess": subprocess, "sys": sys}
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), namespace)
    return [namespace[n] for n in names]


def _cuda_include_dir():
    is_cuda_toolkit, cuda_home_from_nvcc = _setup_functions("is_cuda_toolkit", "cuda_home_from_nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if shutil.which("nvcc"):
        homes.append(cuda_home_from_nvcc(shutil.which("nvcc")))
    homes.append("/usr/local/cuda")
    for home in homes:
        if is_cuda_toolkit(home) and os.path.exists(os.path.join(home, "include", "cuda_fp16.h")):
            return os.path.join(home, "include")
    return None


def _unavailable(why):
    if REQUIRED:
        pytest.fail(f"GRAPHATTN_REQUIRE_CUDA_EMULATION=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def emu():
    """torch.ops.graphattn_emu, built (or loaded from build/cuda-emulation) once per process."""
    try:  # already loaded in this process (the namespace can be registered only once)
        torch.ops.graphattn_emu.csr_attention_forward.default
        return torch.ops.graphattn_emu
    except (AttributeError, RuntimeError):
        pass
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _unavailable(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH to build the CUDA kernels' "
                     "CPU emulation")
    include = _cuda_include_dir()
    if include is None:
        _unavailable("no CUDA toolkit headers (cuda_fp16.h; set CUDA_HOME or put nvcc on PATH) for the CUDA "
                     "kernels' CPU emulation")
    from torch.utils import cpp_extension

    build = ROOT / "build" / "cuda-emulation"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="graphattn_cuda_emulation",
        sources=[str(ROOT / "csrc" / "cuda" / "csr_attention_binding.cpp")],
        # -O1: the emulation's time goes to thread switches, not arithmetic; -O2 only compiles longer.
        extra_cflags=["-std=c++20", "-DGRAPHATTN_CUDA_EMULATION", "-O1", "-fno-strict-aliasing"],
        extra_include_paths=[str(ROOT / "csrc"), include],
        build_directory=str(build), is_python_module=False)
    return torch.ops.graphattn_emu


# ---------------------------------------------------------------------------
# Inputs and the comparison
# ---------------------------------------------------------------------------
def _rows(n, heads, dim, dtype, gen, scale=1.0):
    return (scale * torch.randn(n, heads, dim, generator=gen)).to(dtype)


def _edges(n_src, n_dst, e, gen):
    return torch.stack([torch.randint(0, n_src, (e,), generator=gen), torch.randint(0, n_dst, (e,), generator=gen)])


def _with_hubs(edge_index, n_src, n_dst, targets, sources, degree, gen):
    """Adds `degree` incoming edges to each target of `targets` and outgoing ones to each source of `sources`."""
    parts = [edge_index]
    for i in targets:
        parts.append(torch.stack([torch.randint(0, n_src, (degree,), generator=gen), torch.full((degree,), i)]))
    for j in sources:
        parts.append(torch.stack([torch.full((degree,), j), torch.randint(0, n_dst, (degree,), generator=gen)]))
    edge_index = torch.cat(parts, 1)
    return edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)]


def _ops_call(ops, q, k, v, graph, bias, scale, g_out, g_lse):
    """Forward and backward of one op namespace: (out, lse, dq, dk, dv, dbias [E, H] or None)."""
    t = graph.transposed()
    out, lse = ops.csr_attention_forward(q, k, v, graph.rowptr, graph.col, graph.eid, bias, scale)
    dq, dk, dv, dbias = ops.csr_attention_backward(
        g_out.to(q.dtype), g_lse, q, k, v, bias, out, lse, graph.rowptr, graph.col, graph.eid, t.colptr, t.row,
        t.eid, scale, bias is not None)
    return out, lse, dq, dk, dv, (dbias if bias is not None else None)


def check(emu, q, k, v, edge_index, bias=None, scale=0.37, num_nodes=None, repeat=False):
    """The emulated CUDA kernels against the float64 reference and against the C++ CPU kernels:
    out, lse and the gradients of sum(out * g_out) + sum(lse * g_lse) (over finite lse) for
    q, k, v and bias. `bias` is None, [E, H] or [E] (passed to the ops as the [E, H] view of
    stride 0 over heads, as graphattn.attention does). `repeat`: run the emulation again and
    require the same bits. -> the emulation's results."""
    dtype = q.dtype
    n_src, n_dst = k.shape[0], q.shape[0]
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=num_nodes or (n_src, n_dst))
    heads = q.shape[1]
    bias_eh = bias[:, None].expand(bias.shape[0], heads) if bias is not None and bias.dim() == 1 else bias

    ref_out, ref_lse, leaves = reference_sparse(q, k, v, edge_index, bias, scale)
    gen = torch.Generator().manual_seed(99)
    g_out = torch.randn(ref_out.shape, generator=gen, dtype=torch.float64)
    finite = torch.isfinite(ref_lse.detach())
    g_lse = torch.where(finite, torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64), 0.0)
    loss = (ref_out * g_out).sum() + (ref_lse[finite] * g_lse[finite]).sum()
    ref_grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])

    names = ["out", "lse", "dq", "dk", "dv", "dbias"]
    got = _ops_call(emu, q, k, v, graph, bias_eh, scale, g_out, g_lse.float())
    cpu = _ops_call(torch.ops.graphattn, q, k, v, graph, bias_eh, scale, g_out, g_lse.float())
    if repeat:  # the threads of each block run in the reverse order between barriers: the same bits
        os.environ["GRAPHATTN_EMULATION_REVERSE"] = "1"
        try:
            again = _ops_call(emu, q, k, v, graph, bias_eh, scale, g_out, g_lse.float())
        finally:
            del os.environ["GRAPHATTN_EMULATION_REVERSE"]
        for name, a, b in zip(names, got, again):
            assert a is None or torch.equal(a, b), f"{name}: the thread order changed the result"

    def reduce_bias(results):  # the [E] form's gradient: the sum over heads (autograd's reduction)
        out, lse, dq, dk, dv, dbias = results
        if dbias is not None and bias is not None and bias.dim() == 1:
            dbias = dbias.sum(1)
        return [out, lse, dq, dk, dv] + ([dbias] if dbias is not None else [])

    got_r, cpu_r = reduce_bias(got), reduce_bias(cpu)
    want = [ref_out, ref_lse] + list(ref_grads)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    for name, a, w, c in zip(names, got_r, want, cpu_r):
        assert a.shape == w.shape and a.dtype == (torch.float32 if name == "lse" else dtype), name
        assert_matches(a, w, dtype, f"{name} (emulated CUDA vs float64 reference)")
        assert_matches(a, c.to(a.dtype), dtype, f"{name} (emulated CUDA vs CPU kernels)")
    return got


# ---------------------------------------------------------------------------
# Shapes and dtypes
# ---------------------------------------------------------------------------
# (heads, D, Dv): head dims that are not powers of two (7, 5, 40, 100), many heads per warp
# (16 x 8), several passes held at once (8 x 64: 4 passes in the forward, 2 head blocks in the
# backward), D != Dv, and D = 256 (the largest compiled head dim).
SHAPES = [(3, 7, 5), (4, 64, 64), (16, 8, 8), (3, 40, 100), (8, 64, 32), (1, 256, 24)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads, d, dv", SHAPES)
def test_matches_reference_and_cpu_kernels(emu, dtype, heads, d, dv):
    gen = torch.Generator().manual_seed(heads * 1000 + d)
    n_src, n_dst, e = 23, 29, 150
    q, k, v = _rows(n_dst, heads, d, dtype, gen), _rows(n_src, heads, d, dtype, gen), _rows(n_src, heads, dv, dtype, gen)
    bias = torch.randn(e, heads, generator=gen).to(dtype)
    check(emu, q, k, v, _edges(n_src, n_dst, e, gen), bias=bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shared_bias_of_shape_e_and_no_bias(emu, dtype):
    gen = torch.Generator().manual_seed(5)
    n, heads, d, e = 20, 4, 32, 120
    q, k, v = (_rows(n, heads, d, dtype, gen) for _ in range(3))
    edge_index = _edges(n, n, e, gen)
    check(emu, q, k, v, edge_index, bias=torch.randn(e, generator=gen).to(dtype))
    check(emu, q, k, v, edge_index, bias=None)
    # A non-contiguous [E, H] bias (edge stride 1, head stride E).
    check(emu, q, k, v, edge_index, bias=torch.randn(heads, e, generator=gen).to(dtype).t())


# ---------------------------------------------------------------------------
# Hub rows: more than HUB_DEGREE edges go to the block-per-row kernels
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hub_rows(emu, dtype):
    """Target hubs (forward and dQ hub kernels) and source hubs (dK/dV hub kernel): three of each,
    more than the emulation's two resident hub blocks, so blocks take several rows from the work
    queue; one target sits exactly at the threshold (warp-per-row kernel). Run again with the
    threads in the reverse order: the same bits (a missing barrier around the shared-memory merge
    would show up here)."""
    gen = torch.Generator().manual_seed(7)
    n, heads, d = 30, 2, 24
    edge_index = _with_hubs(_edges(n, n, 60, gen), n, n, targets=[1, 5, 9], sources=[0, 3, 8],
                            degree=HUB_DEGREE + 4, gen=gen)
    at_threshold = torch.stack([torch.randint(0, n, (HUB_DEGREE,), generator=gen), torch.full((HUB_DEGREE,), 23)])
    edge_index = torch.cat([edge_index, at_threshold], 1)
    q, k, v = (_rows(n, heads, d, dtype, gen) for _ in range(3))
    bias = torch.randn(edge_index.shape[1], heads, generator=gen).to(dtype)
    check(emu, q, k, v, edge_index, bias=bias, repeat=True)


def test_hub_row_with_many_heads_and_scalar_loads(emu):
    """A hub row on the scalar path (D = 7) with several head blocks in the backward."""
    gen = torch.Generator().manual_seed(8)
    n, heads, d = 12, 12, 7
    edge_index = _with_hubs(_edges(n, n, 20, gen), n, n, targets=[2], sources=[4], degree=HUB_DEGREE + 5, gen=gen)
    q, k, v = (_rows(n, heads, d, torch.float32, gen) for _ in range(3))
    check(emu, q, k, v, edge_index, bias=torch.randn(edge_index.shape[1], generator=gen), repeat=True)


# ---------------------------------------------------------------------------
# Empty rows, no edges, masked rows
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_targets_and_unused_sources(emu, dtype):
    gen = torch.Generator().manual_seed(3)
    n, heads, d = 40, 4, 16
    q, k, v = (_rows(n, heads, d, dtype, gen) for _ in range(3))
    edge_index = torch.tensor([[1, 2, 5, 7, 7, 9], [0, 0, 3, 4, 4, 39]])
    out, lse, dq, dk, dv, _ = check(emu, q, k, v, edge_index)
    empty = torch.ones(n, dtype=torch.bool)
    empty[[0, 3, 4, 39]] = False
    assert torch.equal(out[empty], torch.zeros_like(out[empty])) and torch.isneginf(lse[empty]).all()
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))
    unused = torch.ones(n, dtype=torch.bool)
    unused[[1, 2, 5, 7, 9]] = False
    assert torch.equal(dk[unused], torch.zeros_like(dk[unused])) and torch.equal(dv[unused], torch.zeros_like(dv[unused]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_edges_at_all(emu, dtype):
    gen = torch.Generator().manual_seed(4)
    q, k, v = (_rows(6, 2, 8, dtype, gen) for _ in range(3))
    out, lse, dq, dk, dv, dbias = check(emu, q, k, v, torch.empty(2, 0, dtype=torch.long),
                                        bias=torch.empty(0, 2, dtype=dtype))
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    assert all(torch.equal(g, torch.zeros_like(g)) for g in (dq, dk, dv)) and dbias.shape == (0, 2)


def test_no_rows_at_all(emu):
    q, k, v = torch.empty(0, 2, 8), torch.empty(0, 2, 8), torch.empty(0, 2, 8)
    graph = graphattn.Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=0)
    out, lse, dq, dk, dv, _ = _ops_call(emu, q, k, v, graph, None, 0.5, torch.empty(0, 2, 8), torch.empty(0, 2))
    assert out.shape == (0, 2, 8) and lse.shape == (0, 2) and dq.shape == dk.shape == dv.shape == (0, 2, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_edges_and_fully_masked_rows(emu, dtype):
    """A -inf bias masks an edge; a target whose every edge is masked (in one head, or in all) is a
    target without edges: out 0, lse -inf, zero gradients. Also in a hub row, where a whole
    warp's share of the edges is masked."""
    gen = torch.Generator().manual_seed(6)
    n, heads, d = 16, 2, 8
    edge_index = _with_hubs(_edges(n, n, 80, gen), n, n, targets=[3], sources=[], degree=HUB_DEGREE + 20, gen=gen)
    e = edge_index.shape[1]
    bias = torch.randn(e, heads, generator=gen)
    bias[torch.rand(e, generator=gen) < 0.3] = -float("inf")  # some edges masked in both heads
    bias[edge_index[1] == 5, 0] = -float("inf")  # target 5: every edge masked in head 0
    bias[edge_index[1] == 6] = -float("inf")  # target 6: every edge masked in every head
    hub = (edge_index[1] == 3).nonzero().flatten()
    bias[hub[: hub.numel() // 2]] = -float("inf")  # the first warps' shares of the hub row
    q, k, v = (_rows(n, heads, d, dtype, gen) for _ in range(3))
    out, lse, dq, dk, dv, dbias = check(emu, q, k, v, edge_index, bias=bias.to(dtype), repeat=True)
    assert torch.equal(out[6], torch.zeros_like(out[6])) and torch.isneginf(lse[6]).all()
    assert torch.equal(out[5, 0], torch.zeros_like(out[5, 0])) and torch.isneginf(lse[5, 0])
    assert torch.equal(dq[6], torch.zeros_like(dq[6])) and torch.equal(dq[5, 0], torch.zeros_like(dq[5, 0]))
    masked = torch.isneginf(bias)
    assert torch.equal(dbias[masked], torch.zeros_like(dbias[masked]))


# NaN at a row's first edge (k), a row of NaN scores (q), -inf in k (NaN scores): fmaxf alone once
# dropped those NaN as masked edges (found here).
@pytest.mark.parametrize("tensor, value", [("k", float("nan")), ("q", float("nan")), ("v", float("inf")),
                                           ("v", float("nan")), ("k", float("-inf"))])
def test_bad_values_reach_only_the_rows_that_read_them(emu, tensor, value):
    """NaN or inf in one row of q, k or v (every head) shows in the targets that read it, as on the
    CPU kernels (same non-finite pattern, same values elsewhere), and nowhere else: the forward's
    other rows are bitwise those of a clean run."""
    gen = torch.Generator().manual_seed(13)
    n, heads, d, e, bad = 16, 2, 8, 80, 5
    clean = {"q": _rows(n, heads, d, torch.float32, gen), "k": _rows(n, heads, d, torch.float32, gen),
             "v": _rows(n, heads, d, torch.float32, gen)}
    edge_index = _edges(n, n, e, gen)
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=n)
    g_out, g_lse = torch.randn(n, heads, d, generator=gen, dtype=torch.float64), torch.randn(n, heads, generator=gen)
    dirty = dict(clean)
    dirty[tensor] = clean[tensor].clone()
    dirty[tensor][bad] = value
    args = (dirty["q"], dirty["k"], dirty["v"], graph, None, 0.37, g_out, g_lse)
    got, cpu = _ops_call(emu, *args), _ops_call(torch.ops.graphattn, *args)
    for name, a, c in zip(["out", "lse", "dq", "dk", "dv"], got, cpu):
        torch.testing.assert_close(a, c, equal_nan=True, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    ref = _ops_call(emu, clean["q"], clean["k"], clean["v"], graph, None, 0.37, g_out, g_lse)
    hit = torch.zeros(n, dtype=torch.bool)
    if tensor == "q":
        hit[bad] = True
    else:
        hit[edge_index[1][edge_index[0] == bad]] = True
    assert hit.any() and (~hit).any()
    for name, a, r in zip(["out", "lse"], got[:2], ref[:2]):
        assert torch.equal(a[~hit], r[~hit]), f"{name}: a row that does not read row {bad} of {tensor} changed"
    assert (~torch.isfinite(got[0][hit])).any(), f"{value} in {tensor} did not show in the targets that read it"


# ---------------------------------------------------------------------------
# Layouts: misaligned and strided rows take the scalar loads
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_and_misaligned_rows(emu, dtype):
    gen = torch.Generator().manual_seed(11)
    n, heads, d, e = 17, 4, 32, 90
    qkv = _rows(n, 3 * heads, d, dtype, gen).view(n, 3, heads, d)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # row stride 3*H*D: still 16-byte chunks
    edge_index = _edges(n, n, e, gen)
    check(emu, q, k, v, edge_index, bias=torch.randn(e, heads, generator=gen).to(dtype))
    # Shifted by one element: not 16-byte aligned, so the kernels take single-element loads.
    k_shifted = _rows(n * heads * d + 1, 1, 1, dtype, gen).flatten()[1:].view(n, heads, d)
    assert k_shifted.data_ptr() % 16 != 0
    check(emu, q, k_shifted, v, edge_index)
    # A head stride that is not a multiple of 16 bytes, and a last dim that is not unit-stride.
    q_odd = _rows(n, heads, d + 1, dtype, gen)[:, :, :d]
    v_t = _rows(n, d, heads, dtype, gen).transpose(1, 2)
    check(emu, q_odd, k, v_t, edge_index)


def test_large_logits_do_not_overflow(emu):
    """Scores of magnitude ~1e3: the online softmax stays finite (float32 with a float32 floor)."""
    gen = torch.Generator().manual_seed(12)
    n, heads, d, e = 24, 2, 16, 200
    q, k = _rows(n, heads, d, torch.float32, gen, scale=8.0), _rows(n, heads, d, torch.float32, gen, scale=8.0)
    v = _rows(n, heads, d, torch.float32, gen)
    graph = graphattn.Graph.from_edge_index(_edges(n, n, e, gen), num_nodes=n)
    g_out, g_lse = torch.randn(n, heads, d, generator=gen, dtype=torch.float64), torch.zeros(n, heads)
    got = _ops_call(emu, q, k, v, graph, None, 1.0, g_out, g_lse)
    cpu = _ops_call(torch.ops.graphattn, q, k, v, graph, None, 1.0, g_out, g_lse)
    for name, a, c in zip(["out", "lse", "dq", "dk", "dv"], got, cpu):
        # Both recompute the weights as exp(s - lse) in float32: with scores ~1e3 that costs
        # ~1e3 * 2^-24 relative per weight, and the two sum in different orders.
        assert_matches(a, c, torch.float16, name)


# ---------------------------------------------------------------------------
# Corrupt graphs: flagged by the kernels, raised by the binding, never read out of bounds
# ---------------------------------------------------------------------------
def _corrupt_inputs():
    q, k, v = torch.randn(4, 2, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    rowptr, col, eid = torch.tensor([0, 2, 3, 3, 4]), torch.tensor([0, 4, 1, 2]), torch.arange(4)
    return q, k, v, rowptr, col, eid


@pytest.mark.parametrize("where, value", [("col", 5), ("col", -1), ("col", 1 << 40), ("eid", 4), ("eid", -3)])
def test_out_of_range_index_raises_index_error(emu, where, value):
    q, k, v, rowptr, col, eid = _corrupt_inputs()
    (col if where == "col" else eid)[1] = value
    with pytest.raises(IndexError, match="outside"):
        emu.csr_attention_forward(q, k, v, rowptr, col, eid, None, 0.5)


def test_out_of_range_index_in_the_transposed_csr_raises_index_error(emu):
    q, k, v, rowptr, col, eid = _corrupt_inputs()
    graph = graphattn.Graph.from_edge_index(torch.stack([col, torch.tensor([0, 0, 1, 3])]), num_nodes=(5, 4))
    t = graph.transposed()
    out, lse = emu.csr_attention_forward(q, k, v, graph.rowptr, graph.col, graph.eid, None, 0.5)
    row_t = t.row.clone()
    row_t[2] = 4  # a target row that does not exist (N_dst = 4)
    with pytest.raises(IndexError, match="outside"):
        emu.csr_attention_backward(torch.randn_like(out), None, q, k, v, None, out, lse, graph.rowptr, graph.col,
                                   graph.eid, t.colptr, row_t, t.eid, 0.5, False)


def test_corrupt_offsets_raise(emu):
    q, k, v, _, col, eid = _corrupt_inputs()
    for rowptr in ([0, 2, 1, 3, 4], [0, 2, 3, 3, 5], [1, 2, 3, 3, 4]):  # decreasing, past E, not from 0
        with pytest.raises(RuntimeError, match="rowptr"):
            emu.csr_attention_forward(q, k, v, torch.tensor(rowptr), col, eid, None, 0.5)


def test_argument_checks_of_the_binding(emu):
    q, k, v, rowptr, col, eid = _corrupt_inputs()
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        emu.csr_attention_forward(q.double(), k.double(), v.double(), rowptr, col, eid, None, 0.5)
    with pytest.raises(ValueError, match="head dims 1..256"):
        big = torch.randn(5, 1, 264)
        emu.csr_attention_forward(big[:4], big, big, rowptr, col, eid, None, 0.5)
    with pytest.raises(RuntimeError, match="bias must be"):
        emu.csr_attention_forward(q, k, v, rowptr, col, eid, torch.randn(3, 2), 0.5)
