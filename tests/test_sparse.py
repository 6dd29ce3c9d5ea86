"""The sparse (edge list) contract, forward and backward, for every sparse backend
against the float64 reference."""
import pytest
import torch

import graphattn
from conftest import (DEVICE, REL_RMS, assert_matches, leaf, random_edges, random_rows, reference_sparse,
                      rel_rms, sparse_backends)

BACKENDS = sparse_backends()
LOW_PRECISION = [torch.float16, torch.bfloat16]


def dtypes_of(backend):
    out = [torch.float32] + LOW_PRECISION
    if DEVICE == "cpu" and backend in ("cpu", "reference"):
        out.append(torch.float64)
    return out


def check_against_reference(backend, q, k, v, edge_index, bias=None, scale=None, pattern=None, vs_float32=False):
    """Run graphattn.attention and the float64 reference; compare out, lse and every gradient.

    `pattern` is what is passed as edge_index (a tensor or a Graph); `edge_index` the raw edges.
    `vs_float32`: also allow 2x the error of the reference run in float32 (for inputs where
    float32 arithmetic itself is far from the exact answer). Returns (out, lse, grads).
    """
    dtype = q.dtype
    qa, ka, va = leaf(q), leaf(k), leaf(v)
    ba = None if bias is None else leaf(bias)
    out, lse = graphattn.attention(qa, ka, va, edge_index if pattern is None else pattern, bias=ba, scale=scale,
                                   return_lse=True, backend=backend)
    ref_out, ref_lse, ref_leaves = reference_sparse(q, k, v, edge_index, bias, scale)
    results = [ref_out, ref_lse]
    if vs_float32:
        out32, lse32, leaves32 = reference_sparse(q, k, v, edge_index, bias, scale, dtype=torch.float32)
        results32 = [out32, lse32]
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    floors = [0.0] * 6
    if vs_float32:
        floors[:2] = [2 * rel_rms(a, b) for a, b in zip(results32, results)]
    assert_matches(out, ref_out, dtype, "out", floors[0])
    assert_matches(lse, ref_lse, dtype, "lse", floors[1])

    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    g_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).to(out.device)
    finite = torch.isfinite(ref_lse)

    def loss(o, l):
        return (o.double() * g_out).sum() + (l.double()[finite] * g_lse[finite]).sum()

    inputs = [t for t in (qa, ka, va, ba) if t is not None]
    grads = torch.autograd.grad(loss(out, lse), inputs)
    ref_grads = torch.autograd.grad(loss(ref_out, ref_lse), [t for t in ref_leaves if t is not None])
    if vs_float32:
        grads32 = torch.autograd.grad(loss(out32, lse32), [t for t in leaves32 if t is not None])
        # The backward recomputes the weights as exp(s - lse) from the float32 lse (the
        # FlashAttention convention), so their relative error is about ulp(lse): beyond
        # what autograd's float32 reference, which keeps the exact weights, shows.
        lse_ulp = 2 * torch.finfo(torch.float32).eps * float(ref_lse.detach()[finite].abs().max()) if finite.any() else 0.0
        floors[2:] = [max(2 * rel_rms(a, b), lse_ulp) for a, b in zip(grads32, ref_grads)]
    for name, got, want, floor in zip("qkvb", grads, ref_grads, floors[2:]):
        assert got.dtype == dtype
        assert_matches(got, want, dtype, f"d{name}", floor)
    return out, lse, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_random_graph_with_bias(backend, dtype):
    if dtype not in dtypes_of(backend):
        pytest.skip(f"{backend} on {DEVICE} does not take {dtype} (contract: float64 on CPU only)")
    n_src, n_dst, heads, d, dv, e = 29, 37, 3, 7, 5, 300
    q, k = random_rows(n_dst, heads, d, dtype, seed=1), random_rows(n_src, heads, d, dtype, seed=2)
    v = random_rows(n_src, heads, dv, dtype, seed=3)
    bias = torch.randn(e, heads, generator=torch.Generator().manual_seed(4)).to(DEVICE, dtype)
    check_against_reference(backend, q, k, v, random_edges(n_src, n_dst, e), bias=bias, scale=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_bias_and_default_scale(backend):
    n, heads, d, e = 20, 2, 16, 90
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s) for s in (1, 2, 3))
    bias = torch.randn(e, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    check_against_reference(backend, q, k, v, random_edges(n, n, e, seed=2), bias=bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_without_edges_give_zero_and_minus_inf(backend):
    n, heads, d = 12, 2, 5
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s) for s in (1, 2, 3))
    # Only targets 0, 3 and 4 receive edges.
    edge_index = torch.tensor([[1, 2, 5, 7, 7], [0, 0, 3, 4, 4]], device=DEVICE)
    out, lse, (dq, dk, dv) = check_against_reference(backend, q, k, v, edge_index)
    empty = torch.ones(n, dtype=torch.bool, device=DEVICE)
    empty[[0, 3, 4]] = False
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert torch.isneginf(lse[empty]).all() and torch.isfinite(lse[~empty]).all()
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))
    unused_sources = torch.ones(n, dtype=torch.bool, device=DEVICE)
    unused_sources[[1, 2, 5, 7]] = False
    assert torch.equal(dk[unused_sources], torch.zeros_like(dk[unused_sources]))
    assert torch.equal(dv[unused_sources], torch.zeros_like(dv[unused_sources]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_edges_at_all(backend):
    q, k, v = (random_rows(4, 2, 3, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = torch.empty(2, 0, dtype=torch.long, device=DEVICE)
    out, lse, grads = check_against_reference(backend, q, k, v, edge_index)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edges", [[[0], [0]], []], ids=["one-self-loop", "no-edge"])
def test_single_node(backend, edges):
    q, k, v = (random_rows(1, 1, 1, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = torch.tensor(edges, dtype=torch.long, device=DEVICE).reshape(2, -1)
    check_against_reference(backend, q, k, v, edge_index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hub_far_above_block_size_duplicates_and_self_loops(backend):
    n, heads, d = 40, 2, 8
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s) for s in (1, 2, 3))
    gen = torch.Generator().manual_seed(7)
    hub_src = torch.randint(0, n, (700,), generator=gen)  # target 3 is a hub: 700 incoming edges
    rest = random_edges(n, n, 120, seed=8).cpu()
    self_loops = torch.arange(0, n, 4).repeat(2, 1)
    duplicates = rest[:, :30]
    edge_index = torch.cat([torch.stack([hub_src, torch.full_like(hub_src, 3)]), rest, self_loops, duplicates], 1)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)]  # unsorted
    bias = torch.randn(edge_index.shape[1], heads, generator=gen)
    check_against_reference(backend, q, k, v, edge_index.to(DEVICE), bias=bias.to(DEVICE))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_edge_index_and_graph_reuse(backend):
    n, heads, d, e = 25, 2, 6, 140
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = random_edges(n, n, e, seed=3, dtype=torch.int32)
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=n)
    first = check_against_reference(backend, q, k, v, edge_index)[0]
    again = check_against_reference(backend, q, k, v, edge_index, pattern=graph)[0]
    assert torch.equal(first, again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    n, heads, d, e = 23, 3, 10, 150
    qkv = random_rows(n, 3 * heads, d, torch.float32, seed=11).view(n, 3, heads, d)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # row stride 3*H*D, like a fused projection
    assert not q.is_contiguous()
    v_t = random_rows(n, d, heads, torch.float32, seed=12).transpose(1, 2)  # last dim not unit-stride
    bias = torch.randn(heads, e, generator=torch.Generator().manual_seed(3)).to(DEVICE).t()
    check_against_reference(backend, q, k, v, random_edges(n, n, e, seed=4), bias=bias)
    check_against_reference(backend, q, k, v_t, random_edges(n, n, e, seed=4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_do_not_overflow(backend, dtype):
    n, heads, d, e = 16, 2, 4, 80
    q = random_rows(n, heads, d, dtype, seed=1, scale=100.0)
    k = random_rows(n, heads, d, dtype, seed=2, scale=100.0)  # scores ~ 1e4
    v = random_rows(n, heads, d, dtype, seed=3)
    out, lse, grads = check_against_reference(backend, q, k, v, random_edges(n, n, e, seed=5), vs_float32=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bipartite_and_value_dim_differs(backend):
    n_src, n_dst, heads, d, dv, e = 31, 9, 2, 12, 20, 100
    q = random_rows(n_dst, heads, d, torch.float32, seed=1)
    k, v = random_rows(n_src, heads, d, torch.float32, seed=2), random_rows(n_src, heads, dv, torch.float32, seed=3)
    check_against_reference(backend, q, k, v, random_edges(n_src, n_dst, e, seed=6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_order_does_not_change_the_result(backend):
    n, heads, d, e = 30, 2, 8, 200
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = random_edges(n, n, e, seed=9)
    bias = torch.randn(e, heads, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    perm = torch.randperm(e, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    out = graphattn.attention(q, k, v, edge_index, bias=bias, backend=backend)
    out_perm = graphattn.attention(q, k, v, edge_index[:, perm], bias=bias[perm], backend=backend)
    assert (out - out_perm).abs().max() <= 1e-5


def test_auto_on_cpu_matches_forced_cpu():
    if DEVICE != "cpu":
        pytest.skip("checks the CPU priority")
    q, k, v = (random_rows(10, 2, 4, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = random_edges(10, 10, 40)
    assert torch.equal(graphattn.attention(q, k, v, edge_index), graphattn.attention(q, k, v, edge_index,
                                                                                      backend="cpu"))


def test_tolerances_are_tight_enough_to_catch_a_wrong_kernel():
    """The comparison must fail for a plausible bug: a softmax missing one edge."""
    q, k, v = (random_rows(10, 2, 4, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = random_edges(10, 10, 60)
    out = graphattn.attention(q, k, v, edge_index[:, 1:], backend=BACKENDS[0])
    ref_out, _, _ = reference_sparse(q, k, v, edge_index)
    with pytest.raises(AssertionError):
        assert_matches(out, ref_out, torch.float32)
    assert REL_RMS[torch.float32] < 1e-4
