"""Dense (Transformer) and segment (batch of complete graphs) attention against the
float64 reference, and the reference itself against torch's SDPA."""
import pytest
import torch
import torch.nn.functional as F

import graphattn
from graphattn import reference

from conftest import DEVICE, REL_RMS, assert_matches, has_triton_kernels, leaf, random_rows

DENSE_BACKENDS = ["sdpa", "reference"] + (["triton"] if has_triton_kernels("dense_attention") else [])
SEGMENT_BACKENDS = (["cpu"] if DEVICE == "cpu" else []) + ["reference"] + (
    ["triton"] if has_triton_kernels("dense_attention") else [])


def dense_inputs(lead, lq, lk, heads, d, dv, dtype):
    q = random_rows(int(torch.tensor(lead).prod()) * lq, heads, d, dtype, seed=1).reshape(*lead, lq, heads, d)
    k = random_rows(int(torch.tensor(lead).prod()) * lk, heads, d, dtype, seed=2).reshape(*lead, lk, heads, d)
    v = random_rows(int(torch.tensor(lead).prod()) * lk, heads, dv, dtype, seed=3).reshape(*lead, lk, heads, dv)
    return q, k, v


def compare(run, run_reference, inputs, dtype, with_lse=True):
    """Forward (out, lse) and grads of run(*inputs) vs run_reference(*float64 inputs)."""
    leaves = [leaf(t) for t in inputs]
    leaves64 = [leaf(t.double()) for t in inputs]
    out, lse = run(*leaves)
    ref_out, ref_lse = run_reference(*leaves64)
    assert out.dtype == dtype
    assert_matches(out, ref_out, dtype, "out")
    gen = torch.Generator().manual_seed(0)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device)
    loss = lambda o, l: (o.double() * g_out).sum() + (l.double().sum() if with_lse else 0)  # noqa: E731
    if with_lse:
        assert_matches(lse, ref_lse, dtype, "lse")
    grads = torch.autograd.grad(loss(out, lse), leaves)
    ref_grads = torch.autograd.grad(loss(ref_out, ref_lse), leaves64)
    for name, got, want in zip("qkv", grads, ref_grads):
        assert_matches(got, want, dtype, f"d{name}")


def dtypes_for(backend):
    extra = [torch.float64] if backend != "triton" and DEVICE == "cpu" else []
    return [torch.float32, torch.bfloat16, torch.float16] + extra


@pytest.mark.parametrize("backend", DENSE_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dense(backend, causal, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} on {DEVICE} does not take {dtype}")
    q, k, v = dense_inputs((2,), 17, 23, 3, 12, 10, dtype)
    compare(lambda q, k, v: graphattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend),
            lambda q, k, v: reference.dense_attention(q, k, v, causal=causal), (q, k, v), dtype)


@pytest.mark.parametrize("backend", DENSE_BACKENDS)
def test_dense_more_leading_dims_odd_sizes_and_non_contiguous(backend):
    q, k, v = dense_inputs((2, 3), 5, 1, 2, 7, 3, torch.float32)
    compare(lambda q, k, v: graphattn.attention(q, k, v, return_lse=True, backend=backend),
            reference.dense_attention, (q, k, v), torch.float32)
    qkv = random_rows(2 * 9, 3 * 2, 8, torch.float32, seed=5).reshape(2, 9, 3, 2, 8)
    compare(lambda q, k, v: graphattn.attention(q, k, v, causal=True, scale=0.5, return_lse=True, backend=backend),
            lambda q, k, v: reference.dense_attention(q, k, v, scale=0.5, causal=True),
            (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]), torch.float32)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_is_sdpa(causal):
    q, k, v = dense_inputs((2,), 6, 9, 2, 5, 4, torch.float64)
    out, _ = reference.dense_attention(q, k, v, causal=causal)
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    assert torch.allclose(out, sdpa.transpose(1, 2), atol=1e-12)


def segment_inputs(sizes, heads, d, dv, dtype):
    n = sum(sizes)
    ptr = torch.tensor([0] + sizes).cumsum(0).to(DEVICE)
    return (random_rows(n, heads, d, dtype, seed=1), random_rows(n, heads, d, dtype, seed=2),
            random_rows(n, heads, dv, dtype, seed=3), ptr)


@pytest.mark.parametrize("backend", SEGMENT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_segments(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} on {DEVICE} does not take {dtype}")
    q, k, v, ptr = segment_inputs([5, 1, 0, 40, 3], 2, 9, 6, dtype)
    graph = graphattn.Graph.block_diagonal(ptr)
    compare(lambda q, k, v: graphattn.attention(q, k, v, graph, return_lse=True, backend=backend),
            lambda q, k, v: reference.segment_attention(q, k, v, ptr), (q, k, v), dtype)


def test_segments_equal_the_same_complete_graphs_as_an_edge_list():
    q, k, v, ptr = segment_inputs([4, 7, 2], 2, 5, 5, torch.float32)
    blocks = [torch.cartesian_prod(torch.arange(a, b), torch.arange(a, b)) for a, b in zip(ptr[:-1], ptr[1:])]
    edge_index = torch.cat(blocks).t().to(DEVICE)
    dense_out = graphattn.attention(q, k, v, graphattn.Graph.block_diagonal(ptr))
    sparse_out = graphattn.attention(q, k, v, edge_index)
    assert (dense_out - sparse_out).abs().max() < 1e-5
    assert REL_RMS[torch.float32] < 1e-4


def test_from_batch_is_block_diagonal():
    q, k, v, ptr = segment_inputs([3, 4], 1, 4, 4, torch.float32)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1], device=DEVICE)
    a = graphattn.attention(q, k, v, graphattn.Graph.from_batch(batch))
    b = graphattn.attention(q, k, v, graphattn.Graph.block_diagonal(ptr))
    assert torch.equal(a, b)
