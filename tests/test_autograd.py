"""Autograd and torch integration: gradcheck, determinism, opcheck, torch.compile."""
import pytest
import torch

import graphattn
from graphattn import ops

from conftest import DEVICE, random_edges, random_rows

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="float64 gradcheck and the C++ CPU kernels run on CPU")


def leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]


def test_gradcheck_sparse_with_bias_and_lse():
    n_src, n_dst, heads, d, dv, e = 7, 5, 2, 3, 4, 20
    q, k, v, b = leaves((n_dst, heads, d), (n_src, heads, d), (n_src, heads, dv), (e, heads))
    edge_index = random_edges(n_src, n_dst, e, seed=1)
    edge_index[1, edge_index[1] == 4] = 3  # target 4 has no edge
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=(n_src, n_dst))

    def f(q, k, v, b):
        out, lse = graphattn.attention(q, k, v, graph, bias=b, return_lse=True, backend="cpu")
        return out, lse[:4]  # lse of the edgeless target is -inf by contract

    assert torch.autograd.gradcheck(f, (q, k, v, b))
    assert torch.autograd.gradgradcheck is not None  # second order is not supported (no double backward)


def test_gradcheck_shared_bias():
    q, k, v, b = leaves((4, 2, 3), (4, 2, 3), (4, 2, 3), (10,))
    edge_index = random_edges(4, 4, 10, seed=2)
    assert torch.autograd.gradcheck(lambda q, k, v, b: graphattn.attention(q, k, v, edge_index, bias=b,
                                                                           backend="cpu"), (q, k, v, b))


def test_gradcheck_segments():
    q, k, v = leaves((9, 2, 3), (9, 2, 3), (9, 2, 5))
    graph = graphattn.Graph.block_diagonal(torch.tensor([0, 4, 4, 5, 9]))
    assert torch.autograd.gradcheck(
        lambda q, k, v: graphattn.attention(q, k, v, graph, return_lse=True, backend="cpu"), (q, k, v))


def test_gradcheck_dense_causal_lse():
    q, k, v = leaves((2, 5, 2, 3), (2, 6, 2, 3), (2, 6, 2, 3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: graphattn.attention(q, k, v, causal=True, return_lse=True), (q, k, v))


@pytest.mark.parametrize("pattern", ["csr", "segments"])
def test_deterministic_runs_are_bitwise_identical(pattern, deterministic):
    n, heads, d = 300, 4, 16
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
    if pattern == "csr":
        graph = graphattn.Graph.from_edge_index(random_edges(n, n, 5000, seed=4), num_nodes=n)
    else:
        graph = graphattn.Graph.block_diagonal(torch.tensor([0, 10, 200, 300]))

    def run():
        out = graphattn.attention(q, k, v, graph)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        return [out.detach(), *grads]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_deterministic_mode_keeps_the_cpu_backend(deterministic):
    call = graphattn.backends.Call("csr", "cpu", torch.float32, 2, 4, 4, False, False, True, False)
    assert graphattn.dispatch.choose(call).name == "cpu"


def _sample_csr(dtype=torch.float32, requires_grad=True):
    n, heads, d, e = 6, 2, 4, 15
    q, k, v = (random_rows(n, heads, d, dtype, seed=s).requires_grad_(requires_grad) for s in (1, 2, 3))
    graph = graphattn.Graph.from_edge_index(random_edges(n, n, e, seed=5), num_nodes=n)
    t = graph.transposed()
    bias = torch.randn(e, heads, dtype=dtype).requires_grad_(requires_grad)
    return (q, k, v, bias, graph.rowptr, graph.col, graph.eid, t.colptr, t.row, t.eid, [], 0.5, "cpu")


def test_opcheck_sparse_op():
    torch.library.opcheck(ops.attention_csr, _sample_csr())
    torch.library.opcheck(ops.attention_csr, _sample_csr(torch.float64))


def test_opcheck_segment_op():
    q, k, v = (random_rows(7, 2, 3, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
    torch.library.opcheck(ops.attention_segments, (q, k, v, torch.tensor([0, 3, 7]), [], 0.5, "cpu"))


def test_opcheck_cpp_kernel_ops():
    q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, _, scale, _ = _sample_csr(requires_grad=False)
    out, lse = torch.ops.graphattn.csr_attention_forward(q, k, v, rowptr, col, eid, bias, scale)
    torch.library.opcheck(torch.ops.graphattn.csr_attention_forward, (q, k, v, rowptr, col, eid, bias, scale))
    torch.library.opcheck(torch.ops.graphattn.csr_attention_backward,
                          (torch.randn_like(out), None, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t,
                           eid_t, scale, True))


class TinyGraphTransformer(torch.nn.Module):
    def __init__(self, graph, dim=8, heads=2):
        super().__init__()
        self.graph, self.heads = graph, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, -1).unbind(1)
        return self.out(graphattn.attention(q, k, v, self.graph).reshape(n, -1))


@pytest.mark.parametrize("pattern", ["csr", "segments", "dense"])
def test_torch_compile_fullgraph_forward_and_backward(pattern):
    torch._dynamo.reset()
    n = 12
    if pattern == "csr":
        graph = graphattn.Graph.from_edge_index(random_edges(n, n, 40, seed=1), num_nodes=n)
    elif pattern == "segments":
        graph = graphattn.Graph.block_diagonal(torch.tensor([0, 5, 12]))
    else:
        graph = None
    model = TinyGraphTransformer(graph)
    x = torch.randn(n, 8)
    if graph is None:
        model.forward = lambda x: model.out(graphattn.attention(
            *model.qkv(x).view(1, n, 3, 2, 4).unbind(2), causal=True).reshape(n, -1))
    expected = model(x)
    expected.sum().backward()
    expected_grad = model.qkv.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model.forward if graph is None else model, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got.sum().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(model.qkv.weight.grad, expected_grad, atol=1e-5)


def test_torch_compile_with_a_raw_edge_index_inductor():
    """A fresh edge_index per call (sorting traced into the graph), backward included, default backend."""
    torch._dynamo.reset()
    q, k, v = (random_rows(10, 2, 4, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
    edge_index = random_edges(10, 10, 30, seed=2)
    compiled = torch.compile(lambda q, k, v, e: graphattn.attention(q, k, v, e), fullgraph=True)
    got = compiled(q, k, v, edge_index)
    got_grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    expected = graphattn.attention(q, k, v, edge_index)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert torch.allclose(got, expected, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_grads, expected_grads))


def test_torch_compile_builds_the_lazy_transpose_once():
    torch._dynamo.reset()
    q, k, v = (random_rows(10, 2, 4, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
    graph = graphattn.Graph.from_edge_index(random_edges(10, 10, 30, seed=3), num_nodes=10)
    assert graph._transposed is None
    compiled = torch.compile(lambda q, k, v: graphattn.attention(q, k, v, graph), fullgraph=True,
                             backend="aot_eager")
    compiled(q, k, v).sum().backward()
    first = graph._transposed
    assert first is not None
    compiled(q, k, v).sum().backward()
    assert graph._transposed is first


def _sample_scored(score, dropout_p, return_alpha=True):
    q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, _, scale, _ = _sample_csr()
    att = None
    if score == "gat":
        q, k = (t.detach()[..., :1].clone().requires_grad_() for t in (q, k))
    if score == "gatv2":
        att = torch.randn(q.shape[1], q.shape[2]).requires_grad_()
    seed = graphattn.dropout.draw_seed(torch.Generator().manual_seed(1)) if dropout_p else None
    return (q, k, v, bias, att, seed, rowptr, col, eid, colptr, row_t, eid_t, [], score, scale, 0.2, dropout_p,
            return_alpha, "cpu")


@pytest.mark.parametrize("score,dropout_p", [("dot", 0.3), ("gat", 0.0), ("gatv2", 0.5)])
def test_opcheck_scored_op(score, dropout_p):
    from graphattn import scored_ops
    from graphattn.backends.compiled import SCORE_CODES

    torch.library.opcheck(scored_ops.attention_csr_scored, _sample_scored(score, dropout_p))
    args = _sample_scored(score, dropout_p)
    q, k, v, bias, att, seed, rowptr, col, eid = args[:9]
    code = SCORE_CODES[score]
    detached = [None if t is None else t.detach() for t in (q, k, v, bias, att)]
    fwd_args = (*detached[:3], rowptr, col, eid, detached[3], detached[4], seed, code, 0.5, 0.2, dropout_p, True)
    torch.library.opcheck(torch.ops.graphattn.csr_scored_attention_forward, fwd_args)
    out, lse, alpha = torch.ops.graphattn.csr_scored_attention_forward(*fwd_args)
    torch.library.opcheck(torch.ops.graphattn.csr_scored_attention_backward,
                          (torch.randn_like(out), None, torch.randn_like(alpha), *detached[:3], detached[3],
                           detached[4], seed, out, lse, rowptr, col, eid, *args[9:12], code, 0.5, 0.2, dropout_p,
                           True, att is not None))


def test_torch_compile_gatv2_with_dropout_and_alpha():
    """The scored op traces with fullgraph=True; the seed is drawn inside the graph, so compiled and
    eager runs match under the same torch.manual_seed only for the dropout-free part: compare p=0."""
    torch._dynamo.reset()
    n, heads, d = 12, 2, 4
    graph = graphattn.Graph.from_edge_index(random_edges(n, n, 40, seed=1), num_nodes=n)
    q, k, v = (random_rows(n, heads, d, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
    att = torch.randn(heads, d, requires_grad=True)

    def fn(q, k, v, att, p):
        out, alpha = graphattn.attention(q, k, v, graph, score="gatv2", att=att, dropout_p=p,
                                         return_attention=True)
        return out.square().sum() + alpha.square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v, att, 0.0)
    got_grads = torch.autograd.grad(got, (q, k, v, att))
    expected = fn(q, k, v, att, 0.0)
    expected_grads = torch.autograd.grad(expected, (q, k, v, att))
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_grads, expected_grads))
    dropped = compiled(q, k, v, att, 0.5)  # traces and runs with dropout too
    assert torch.isfinite(dropped)
