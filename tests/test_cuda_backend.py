"""The hand-written CUDA kernels (backend="cuda", csrc/cuda/) against the float64
reference: odd head dims, many heads, hub rows far above the hub threshold,
empty targets, no edges, both bias forms, non-contiguous and misaligned inputs
(the scalar-load fallback), large logits, determinism, corrupt graphs, and the
Triton backend where it runs.

The GPU tests skip without a CUDA device. On any machine with the CUDA headers,
GRAPHATTN_TEST_CUDA_EMULATION=1 also compiles the same kernels against the CPU
emulation of csrc/cuda/emulation.h and compares them with the C++ CPU kernels
(slow: a minute to compile, seconds per case).
"""
import os
import shutil

import pytest
import torch

import graphattn
from conftest import assert_matches, has_triton_kernels, leaf, random_edges, random_rows, reference_sparse, rel_rms
from graphattn.backends.cuda import CudaBackend

HAS_GPU = torch.cuda.is_available()
CUDA_REASON = CudaBackend().unavailable_reason("cuda")
REGISTERED = "cuda" in graphattn.dispatch.BACKENDS

needs_cuda_backend = pytest.mark.skipif(
    not HAS_GPU or CUDA_REASON is not None or not REGISTERED,
    reason="needs a CUDA GPU and graphattn._C built with its CUDA kernels, registered as backend 'cuda' "
           f"({'no GPU' if not HAS_GPU else CUDA_REASON or 'not registered'})")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(q, k, v, edge_index, bias=None, scale=None, pattern=None, vs_float32=False, backend="cuda"):
    """graphattn.attention on `backend` vs the float64 reference: out, lse and every gradient
    (through a loss on out and on the finite lse). `vs_float32` also allows 2x the error of the
    reference computed in float32 (for inputs float32 itself cannot resolve). -> (out, lse, grads)."""
    dtype = q.dtype
    qa, ka, va = leaf(q), leaf(k), leaf(v)
    ba = None if bias is None else leaf(bias)
    out, lse = graphattn.attention(qa, ka, va, edge_index if pattern is None else pattern, bias=ba, scale=scale,
                                   return_lse=True, backend=backend)
    ref_out, ref_lse, ref_leaves = reference_sparse(q, k, v, edge_index, bias, scale)
    assert out.dtype == dtype and lse.dtype == torch.float32
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    g_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(out.device)
    finite = torch.isfinite(ref_lse)

    def loss(o, l):
        return (o.double() * g_out).sum() + (l.double()[finite] * g_lse[finite]).sum()

    grads = torch.autograd.grad(loss(out, lse), [t for t in (qa, ka, va, ba) if t is not None])
    ref_grads = torch.autograd.grad(loss(ref_out, ref_lse), [t for t in ref_leaves if t is not None])
    floors = [0.0] * (2 + len(grads))
    if vs_float32:
        out32, lse32, leaves32 = reference_sparse(q, k, v, edge_index, bias, scale, dtype=torch.float32)
        grads32 = torch.autograd.grad(loss(out32, lse32), [t for t in leaves32 if t is not None])
        # The backward recomputes the weights from the float32 lse: their error is about ulp(lse).
        lse_ulp = 2 * torch.finfo(torch.float32).eps * float(ref_lse.detach()[finite].abs().max()) if finite.any() else 0.0
        floors = [2 * rel_rms(out32, ref_out), 2 * rel_rms(lse32, ref_lse)] + [
            max(2 * rel_rms(a, b), lse_ulp) for a, b in zip(grads32, ref_grads)]
    assert_matches(out, ref_out, dtype, "out", floors[0])
    assert_matches(lse, ref_lse, dtype, "lse", floors[1])
    for name, got, want, floor in zip("qkvb", grads, ref_grads, floors[2:]):
        assert got.dtype == dtype
        assert_matches(got, want, dtype, f"d{name}", floor)
    return out, lse, grads


def rows(n, heads, dim, dtype, seed, scale=1.0):
    return random_rows(n, heads, dim, dtype, device="cuda", seed=seed, scale=scale)


def edges(n_src, n_dst, e, seed):
    return random_edges(n_src, n_dst, e, seed=seed, device="cuda")


# ---------------------------------------------------------------------------
# Declarations (run everywhere)
# ---------------------------------------------------------------------------
def test_declares_what_it_serves():
    b = CudaBackend()
    assert b.name == "cuda" and b.devices == ("cuda",) and b.patterns == ("csr",)
    assert set(b.dtypes) == {torch.float16, torch.bfloat16, torch.float32} and b.max_head_dim == 256
    if CUDA_REASON is not None:  # the reason names the build
        assert "graphattn._C" in CUDA_REASON


# ---------------------------------------------------------------------------
# Against the float64 reference (GPU)
# ---------------------------------------------------------------------------
@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, d, dv", [(1, 7, 7), (4, 40, 40), (8, 100, 100), (1, 256, 256), (4, 64, 64),
                                          (8, 64, 32), (16, 16, 16), (3, 7, 5), (2, 256, 8)])
def test_head_counts_and_dims(dtype, heads, d, dv):
    n_src, n_dst, e = 53, 61, 700
    q, k = rows(n_dst, heads, d, dtype, 1), rows(n_src, heads, d, dtype, 2)
    v = rows(n_src, heads, dv, dtype, 3)
    bias = torch.randn(e, heads, generator=torch.Generator().manual_seed(4)).to("cuda", dtype)
    check(q, k, v, edges(n_src, n_dst, e, seed=heads * 1000 + d), bias=bias, scale=0.3)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, d", [(2, 8), (4, 64), (8, 7)])
def test_hub_rows_of_degree_5000(dtype, heads, d):
    """A target hub (forward and dQ hub kernels) and a source hub (dK/dV hub kernel)."""
    n, hub_degree = 400, 5000
    gen = torch.Generator().manual_seed(7)
    to_hub = torch.stack([torch.randint(0, n, (hub_degree,), generator=gen), torch.full((hub_degree,), 3)])
    from_hub = torch.stack([torch.full((hub_degree,), 5), torch.randint(0, n, (hub_degree,), generator=gen)])
    rest = random_edges(n, n, 2000, seed=8, device="cpu")
    edge_index = torch.cat([to_hub, from_hub, rest], 1)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)].cuda()
    q, k, v = (rows(n, heads, d, dtype, s) for s in (1, 2, 3))
    bias = torch.randn(edge_index.shape[1], heads, generator=gen).to("cuda", dtype)
    check(q, k, v, edge_index, bias=bias)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_hub_rows(dtype):
    """More hub rows than hub-kernel blocks: the work queue hands out all of them."""
    n = 600
    edge_index = edges(n, n, 400 * n, seed=11)  # every row has ~400 > 256 edges each way
    q, k, v = (rows(n, 2, 32, dtype, s) for s in (1, 2, 3))
    check(q, k, v, edge_index)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_targets_and_unused_sources(dtype):
    n, heads, d = 40, 4, 64
    q, k, v = (rows(n, heads, d, dtype, s) for s in (1, 2, 3))
    edge_index = torch.tensor([[1, 2, 5, 7, 7, 9], [0, 0, 3, 4, 4, 39]], device="cuda")
    out, lse, (dq, dk, dv) = check(q, k, v, edge_index)
    empty = torch.ones(n, dtype=torch.bool, device="cuda")
    empty[[0, 3, 4, 39]] = False
    assert torch.equal(out[empty], torch.zeros_like(out[empty])) and torch.isneginf(lse[empty]).all()
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))
    unused = torch.ones(n, dtype=torch.bool, device="cuda")
    unused[[1, 2, 5, 7, 9]] = False
    assert torch.equal(dk[unused], torch.zeros_like(dk[unused]))
    assert torch.equal(dv[unused], torch.zeros_like(dv[unused]))


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_edges_at_all(dtype):
    q, k, v = (rows(6, 2, 8, dtype, s) for s in (1, 2, 3))
    out, lse, grads = check(q, k, v, torch.empty(2, 0, dtype=torch.long, device="cuda"))
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_shared_bias_of_shape_e(dtype):
    n, heads, d, e = 50, 4, 32, 400
    q, k, v = (rows(n, heads, d, dtype, s) for s in (1, 2, 3))
    bias = torch.randn(e, generator=torch.Generator().manual_seed(5)).to("cuda", dtype)
    check(q, k, v, edges(n, n, e, seed=2), bias=bias)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_misaligned_inputs(dtype):
    n, heads, d, e = 45, 4, 64, 500
    qkv = rows(n, 3 * heads, d, dtype, 11).view(n, 3, heads, d)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # row stride 3*H*D: still 16-byte chunks
    bias = torch.randn(heads, e, generator=torch.Generator().manual_seed(3)).to("cuda", dtype).t()
    edge_index = edges(n, n, e, seed=4)
    check(q, k, v, edge_index, bias=bias)
    # Shifted by one element: not 16-byte aligned, so the kernels take single-element loads.
    flat = rows(n * heads * d + 1, 1, 1, dtype, 12).flatten()
    k_shifted = flat[1:].view(n, heads, d)
    check(q, k_shifted, v, edge_index)
    # Head stride that is not a multiple of 16 bytes, and a last dim that is not unit-stride.
    q_odd = rows(n, heads, d + 1, dtype, 13)[:, :, :d]
    v_t = rows(n, d, heads, dtype, 14).transpose(1, 2)
    check(q_odd, k, v_t, edge_index)


@needs_cuda_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_do_not_overflow(dtype):
    n, heads, d, e = 64, 2, 16, 600
    q, k = rows(n, heads, d, dtype, 1, scale=30.0), rows(n, heads, d, dtype, 2, scale=30.0)  # scores ~ 1e3..1e4
    v = rows(n, heads, d, dtype, 3)
    out, lse, grads = check(q, k, v, edges(n, n, e, seed=5), vs_float32=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@needs_cuda_backend
def test_runs_are_bitwise_identical(deterministic):
    n, heads, d = 500, 4, 64
    gen = torch.Generator().manual_seed(3)
    hub = torch.stack([torch.randint(0, n, (3000,), generator=gen), torch.full((3000,), 7)])
    edge_index = torch.cat([random_edges(n, n, 20000, seed=4, device="cpu"), hub], 1).cuda()
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=n)
    bias = torch.randn(edge_index.shape[1], heads, generator=gen).cuda()
    results = []
    for _ in range(2):
        q, k, v = (rows(n, heads, d, torch.float16, s).requires_grad_() for s in (1, 2, 3))
        b = bias.clone().requires_grad_()
        out, lse = graphattn.attention(q, k, v, graph, bias=b.half(), return_lse=True, backend="cuda")
        (out.float().square().sum() + lse[torch.isfinite(lse)].sum()).backward()
        results.append([out, lse, q.grad, k.grad, v.grad, b.grad])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_cuda_backend
def test_auto_can_choose_it():
    q, k, v = (rows(10, 2, 16, torch.float16, s) for s in (1, 2, 3))
    call = graphattn.backends.Call(pattern="csr", device_type="cuda", dtype=torch.float16, num_heads=2, head_dim=16,
                                   value_dim=16, has_bias=False, causal=False, deterministic=True, return_lse=False)
    assert CudaBackend().not_supported_reasons(call) == []
    out = graphattn.attention(q, k, v, edges(10, 10, 40, seed=1), backend="cuda")
    assert out.shape == (10, 2, 16)


@needs_cuda_backend
def test_head_dim_above_256_is_refused_with_the_reason():
    q = rows(4, 1, 264, torch.float16, 1)
    with pytest.raises(graphattn.BackendError, match="head dim 264 > 256"):
        graphattn.attention(q, q, q, edges(4, 4, 8, seed=1), backend="cuda")


@needs_cuda_backend
def test_corrupt_graph_raises_instead_of_reading_out_of_bounds():
    q, k, v = (rows(8, 2, 16, torch.float32, s) for s in (1, 2, 3))
    graph = graphattn.Graph.from_edge_index(edges(8, 8, 30, seed=1), num_nodes=8)
    graph.col = graph.col.clone()
    graph.col[5] = 1 << 40
    with pytest.raises(IndexError, match="outside"):
        graphattn.attention(q, k, v, graph, backend="cuda")
    torch.cuda.synchronize()  # the context is still healthy
    graph = graphattn.Graph.from_edge_index(edges(8, 8, 30, seed=1), num_nodes=8)
    graph.rowptr = graph.rowptr.clone()
    graph.rowptr[3] = 1000
    with pytest.raises(RuntimeError, match="rowptr"):
        graphattn.attention(q, k, v, graph, backend="cuda")


@needs_cuda_backend
def test_opcheck_cuda_kernel_ops():
    n, heads, d, e = 9, 2, 8, 30
    q, k, v = (rows(n, heads, d, torch.float32, s) for s in (1, 2, 3))
    graph = graphattn.Graph.from_edge_index(edges(n, n, e, seed=3), num_nodes=n)
    t = graph.transposed()
    bias = torch.randn(e, heads, device="cuda")
    args = (q, k, v, graph.rowptr, graph.col, graph.eid, bias, 0.5)
    torch.library.opcheck(torch.ops.graphattn.csr_attention_forward, args)
    out, lse = torch.ops.graphattn.csr_attention_forward(*args)
    torch.library.opcheck(torch.ops.graphattn.csr_attention_backward,
                          (torch.randn_like(out), torch.randn_like(lse), q, k, v, bias, out, lse, graph.rowptr,
                           graph.col, graph.eid, t.colptr, t.row, t.eid, 0.5, True))


@needs_cuda_backend
@pytest.mark.skipif(not has_triton_kernels("csr_attention"), reason="the Triton CSR kernels do not run here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_triton(dtype):
    n, heads, d, e = 300, 4, 64, 6000
    gen = torch.Generator().manual_seed(9)
    hub = torch.stack([torch.randint(0, n, (1500,), generator=gen), torch.full((1500,), 2)])
    edge_index = torch.cat([random_edges(n, n, e, seed=10, device="cpu"), hub], 1).cuda()
    q, k, v = (rows(n, heads, d, dtype, s) for s in (1, 2, 3))
    bias = torch.randn(edge_index.shape[1], heads, generator=gen).to("cuda", dtype)
    out_c, lse_c, grads_c = check(q, k, v, edge_index, bias=bias, backend="cuda")
    out_t, lse_t, grads_t = check(q, k, v, edge_index, bias=bias, backend="triton")
    # Both are within tolerance of float64; against each other, allow the sum of the two.
    for what, a, b in [("out", out_c, out_t), ("lse", lse_c, lse_t)] + list(zip("qkvb", grads_c, grads_t)):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), what
        assert rel_rms(a[finite], b[finite]) <= 2 * {torch.float32: 2e-5, torch.float16: 4e-3,
                                                      torch.bfloat16: 2.5e-2}[dtype], what


# ---------------------------------------------------------------------------
# The same kernels on the CPU emulation (opt-in, no GPU needed)
# ---------------------------------------------------------------------------
def _cuda_include_dir():
    from torch.utils import cpp_extension

    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "include", "cuda_fp16.h")):
            return os.path.join(home, "include")
    return None


EMULATION = os.environ.get("GRAPHATTN_TEST_CUDA_EMULATION") == "1"


@pytest.fixture(scope="module")
def emulated_ops(tmp_path_factory):
    include = _cuda_include_dir()
    if include is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("the CUDA emulation needs a C++20 compiler and the CUDA headers (cuda_fp16.h)")
    from torch.utils import cpp_extension

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = tmp_path_factory.mktemp("cuda_emulation")
    cpp_extension.load(
        name="graphattn_cuda_emulation",
        sources=[os.path.join(root, "csrc", "cuda", "csr_attention_binding.cpp")],
        extra_cflags=["-std=c++20", "-DGRAPHATTN_CUDA_EMULATION", "-O1", "-fno-strict-aliasing"],
        extra_include_paths=[os.path.join(root, "csrc"), include],
        build_directory=str(build), is_python_module=False)
    return torch.ops.graphattn_emu


def _compare_with_cpu_kernels(ops, dtype, n_src, n_dst, heads, d, dv, e, hub=0, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, n_src, (e,), generator=gen), torch.randint(0, n_dst, (e,), generator=gen)
    if hub:
        src = torch.cat([src, torch.randint(0, n_src, (hub,), generator=gen), torch.full((hub,), 0)])
        dst = torch.cat([dst, torch.full((hub,), 1), torch.randint(0, n_dst, (hub,), generator=gen)])
    graph = graphattn.Graph.from_edge_index(torch.stack([src, dst]), num_nodes=(n_src, n_dst))
    t, num_edges = graph.transposed(), src.numel()
    q = torch.randn(n_dst, heads, d, generator=gen).to(dtype)
    k = torch.randn(n_src, heads, d, generator=gen).to(dtype)
    v = torch.randn(n_src, heads, dv, generator=gen).to(dtype)
    b = torch.randn(num_edges, heads, generator=gen).to(dtype) if bias else None
    args = (q, k, v, graph.rowptr, graph.col, graph.eid, b, 0.37)
    got, want = ops.csr_attention_forward(*args), torch.ops.graphattn.csr_attention_forward(*args)
    out, lse = want
    back = (torch.randn(out.shape, generator=gen).to(dtype), torch.randn(lse.shape, generator=gen), q, k, v, b,
            out, lse, graph.rowptr, graph.col, graph.eid, t.colptr, t.row, t.eid, 0.37, bias)
    got += ops.csr_attention_backward(*back)
    want += torch.ops.graphattn.csr_attention_backward(*back)
    for what, a, w in zip(["out", "lse", "dq", "dk", "dv", "dbias"], got, want):
        assert_matches(a, w, dtype, what)


@pytest.mark.skipif(not EMULATION, reason="set GRAPHATTN_TEST_CUDA_EMULATION=1 to run the CUDA kernels emulated on CPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, d, dv", [(3, 7, 5), (4, 64, 64), (16, 8, 8), (3, 40, 100)])
def test_emulated_kernels_match_the_cpu_kernels(emulated_ops, dtype, heads, d, dv):
    _compare_with_cpu_kernels(emulated_ops, dtype, 23, 29, heads, d, dv, 150)


@pytest.mark.skipif(not EMULATION, reason="set GRAPHATTN_TEST_CUDA_EMULATION=1 to run the CUDA kernels emulated on CPU")
def test_emulated_hub_kernels_match_the_cpu_kernels(emulated_ops):
    _compare_with_cpu_kernels(emulated_ops, torch.float32, 30, 20, 2, 8, 8, 60, hub=600)


@pytest.mark.skipif(not EMULATION, reason="set GRAPHATTN_TEST_CUDA_EMULATION=1 to run the CUDA kernels emulated on CPU")
def test_emulated_kernels_flag_corrupt_graphs(emulated_ops):
    q, k, v = torch.randn(4, 2, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    rowptr, eid = torch.tensor([0, 2, 3, 3, 4]), torch.arange(4)
    with pytest.raises(IndexError):
        emulated_ops.csr_attention_forward(q, k, v, rowptr, torch.tensor([0, 7, 1, 2]), eid, None, 0.5)
    with pytest.raises(RuntimeError, match="rowptr"):
        emulated_ops.csr_attention_forward(q, k, v, torch.tensor([0, 2, 1, 3, 4]), torch.tensor([0, 1, 1, 2]), eid,
                                           None, 0.5)
