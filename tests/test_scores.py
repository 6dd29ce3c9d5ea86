"""Score kinds (dot / gat / gatv2), attention dropout and returned attention weights
on the sparse path, against an independent per-target formula in float64."""
import pytest
import torch

import graphattn
from conftest import assert_matches, leaf, random_edges

# Run on CPU tensors so the tests are the same on any machine: auto serves them with the
# fused CPU kernels (tests/test_scored_backends.py compares every kernel backend with the
# reference backend).
DEV = "cpu"


def leaky(x, slope):
    return torch.where(x > 0, x, slope * x)


def naive(q, k, v, edge_index, score, *, slope=0.2, att=None, bias=None, scale=None, keep=None, p=0.0):
    """Loop over targets; softmax over each target's edges; returns (out, alpha [E, H])."""
    src, dst = edge_index[0].long(), edge_index[1].long()
    n_dst, heads, dv = q.shape[0], q.shape[1], v.shape[-1]
    if scale is None and score == "dot":
        scale = q.shape[-1] ** -0.5
    outs, alpha = [], q.new_zeros(edge_index.shape[1], heads)
    for i in range(n_dst):
        es = (dst == i).nonzero().flatten()
        if es.numel() == 0:
            outs.append(v.new_zeros(heads, dv))
            continue
        j = src[es]
        if score == "dot":
            s = scale * (q[i][None] * k[j]).sum(-1)
        elif score == "gat":
            s = leaky(q[i][None] + k[j], slope)
        else:
            s = (leaky(q[i][None] + k[j], slope) * att).sum(-1)
        if bias is not None:
            s = s + (bias[es][:, None] if bias.dim() == 1 else bias[es])
        e = torch.exp(s - s.max(0).values)
        a = e / e.sum(0)
        if keep is not None:
            a = a * keep[es] / (1 - p)
        alpha = alpha.index_put((es,), a)
        outs.append((a[..., None] * v[j]).sum(0))
    return torch.stack(outs), alpha


def inputs(score, n_src=9, n_dst=7, heads=3, d=5, dv=4, num_edges=40, seed=0, dtype=torch.float64, bias=None):
    g = torch.Generator().manual_seed(seed)
    edge_index = random_edges(n_src, n_dst, num_edges, seed=seed, device=DEV)
    # make one target have no edge, and add a duplicate edge
    edge_index = edge_index[:, edge_index[1] != n_dst - 1]
    edge_index = torch.cat([edge_index, edge_index[:, :1]], 1)
    qshape = (n_dst, heads) if score == "gat" else (n_dst, heads, d)
    kshape = (n_src, heads) if score == "gat" else (n_src, heads, d)
    q = torch.randn(qshape, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(kshape, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(n_src, heads, dv, generator=g, dtype=torch.float64).to(dtype)
    att = torch.randn(heads, d, generator=g, dtype=torch.float64).to(dtype) if score == "gatv2" else None
    b = None
    if bias == "eh":
        b = torch.randn(edge_index.shape[1], heads, generator=g, dtype=torch.float64).to(dtype)
    elif bias == "e":
        b = torch.randn(edge_index.shape[1], generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, att, b, edge_index


@pytest.mark.parametrize("score", ["gat", "gatv2"])
@pytest.mark.parametrize("bias", [None, "eh", "e"])
@pytest.mark.parametrize("slope", [0.2, 0.01])
def test_forward_backward_float64(score, bias, slope):
    q, k, v, att, b, ei = inputs(score, bias=bias)
    leaves = [leaf(t) for t in (q, k, v)] + [None if t is None else leaf(t) for t in (att, b)]
    qa, ka, va, atta, ba = leaves
    out = graphattn.attention(qa, ka, va, ei, bias=ba, score=score, negative_slope=slope, att=atta)
    refs = [leaf(t) if t is not None else None for t in (q, k, v, att, b)]
    qr, kr, vr, attr, br = refs
    ref, _ = naive(qr, kr, vr, ei, score, slope=slope, att=attr, bias=br)
    assert out.dtype == torch.float64
    assert_matches(out, ref, torch.float64, "out")
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))  # target without edges
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for name, a, r in zip("q k v att bias".split(), leaves, refs):
        if a is None:
            continue
        assert a.grad is not None, name
        assert_matches(a.grad, r.grad, torch.float64, f"grad {name}")


@pytest.mark.parametrize("score", ["gat", "gatv2"])
def test_gradcheck(score):
    q, k, v, att, b, ei = inputs(score, n_src=5, n_dst=4, heads=2, d=3, dv=2, num_edges=12, bias="eh")
    leaves = [leaf(t) for t in (q, k, v, b)] + ([leaf(att)] if att is not None else [])

    def fn(q, k, v, b, *att):
        return graphattn.attention(q, k, v, ei, bias=b, score=score, att=att[0] if att else None)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("score", ["gat", "gatv2"])
def test_low_precision(score, dtype):
    q, k, v, att, b, ei = inputs(score, bias="eh", dtype=dtype, n_src=30, n_dst=25, num_edges=200)
    out = graphattn.attention(q, k, v, ei, bias=b, score=score, att=att)
    up = [None if t is None else t.double() for t in (q, k, v, att, b)]
    ref, _ = naive(up[0], up[1], up[2], ei, score, att=up[3], bias=up[4])
    assert out.dtype == dtype
    assert_matches(out, ref, dtype, "out")


@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
def test_return_attention(score):
    q, k, v, att, b, ei = inputs(score, bias="eh")
    out, lse, alpha = graphattn.attention(q, k, v, ei, bias=b, score=score, att=att, return_lse=True,
                                          return_attention=True)
    ref_out, ref_alpha = naive(q, k, v, ei, score, att=att, bias=b)
    assert alpha.shape == (ei.shape[1], q.shape[1]) and alpha.dtype == q.dtype
    assert_matches(alpha, ref_alpha, torch.float64, "alpha")
    assert_matches(out, ref_out, torch.float64, "out")
    sums = alpha.new_zeros(q.shape[0], q.shape[1]).index_add(0, ei[1], alpha)
    has_edges = torch.bincount(ei[1], minlength=q.shape[0]) > 0
    torch.testing.assert_close(sums[has_edges], torch.ones_like(sums[has_edges]))
    assert torch.equal(sums[~has_edges], torch.zeros_like(sums[~has_edges]))
    assert torch.isneginf(lse[~has_edges]).all()
    # the plain call gives the same out
    out2, alpha2 = graphattn.attention(q, k, v, ei, bias=b, score=score, att=att, return_attention=True)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    # a Graph gives the same alpha, in edge_index column order
    graph = graphattn.Graph.from_edge_index(ei, num_nodes=(k.shape[0], q.shape[0]))
    _, alpha3 = graphattn.attention(q, k, v, graph, bias=b, score=score, att=att, return_attention=True)
    torch.testing.assert_close(alpha3, alpha)
    # alpha is differentiable
    leaves = [leaf(t) for t in (q, k, v)]
    _, a = graphattn.attention(*leaves, ei, score=score, att=att, return_attention=True)
    a.pow(2).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves[:2])


def big_graph(score, seed=0):
    return inputs(score, n_src=200, n_dst=150, heads=4, num_edges=5000, seed=seed)


@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
def test_dropout_fraction_and_scaling(score):
    q, k, v, att, _, ei = big_graph(score)
    p = 0.3
    _, plain = graphattn.attention(q, k, v, ei, score=score, att=att, return_attention=True)
    gen = torch.Generator().manual_seed(7)
    out, dropped = graphattn.attention(q, k, v, ei, score=score, att=att, dropout_p=p, generator=gen,
                                       return_attention=True)
    zeroed = dropped == 0
    frac = zeroed.double().mean().item()
    assert abs(frac - p) < 0.02, frac
    torch.testing.assert_close(dropped[~zeroed], plain[~zeroed] / (1 - p))
    # out uses exactly those weights
    ref_out, _ = naive(q, k, v, ei, score, att=att, keep=~zeroed, p=p)
    assert_matches(out, ref_out, torch.float64, "out with dropout")


def test_dropout_reproducible():
    q, k, v, att, _, ei = big_graph("gat")

    def run(**kw):
        return graphattn.attention(q, k, v, ei, score="gat", dropout_p=0.5, return_attention=True, **kw)

    torch.manual_seed(123)
    o1, a1 = run()
    torch.manual_seed(123)
    o2, a2 = run()
    o3, a3 = run()
    assert torch.equal(o1, o2) and torch.equal(a1, a2)
    assert not torch.equal(a1, a3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(run(generator=g1)[1], run(generator=g2)[1])


def test_dropout_zero_and_one():
    q, k, v, att, _, ei = inputs("gatv2")
    base = graphattn.attention(q, k, v, ei, score="gatv2", att=att)
    same = graphattn.attention(q, k, v, ei, score="gatv2", att=att, dropout_p=0.0)
    assert torch.equal(base, same)
    none = graphattn.attention(q, k, v, ei, score="gatv2", att=att, dropout_p=1.0)
    assert torch.equal(none, torch.zeros_like(none))


@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
def test_dropout_backward_uses_forward_mask(score):
    q, k, v, att, b, ei = inputs(score, bias="eh")
    p = 0.4
    leaves = [leaf(t) for t in (q, k, v, b)] + ([leaf(att)] if att is not None else [])
    gen = torch.Generator().manual_seed(11)
    out, alpha = graphattn.attention(*leaves[:3], ei, bias=leaves[3], score=score,
                                     att=leaves[4] if att is not None else None,
                                     dropout_p=p, generator=gen, return_attention=True)
    keep = alpha.detach() != 0
    assert 0 < keep.double().mean() < 1
    refs = [leaf(t) for t in (q, k, v, b)] + ([leaf(att)] if att is not None else [])
    ref, ref_alpha = naive(*refs[:3], ei, score, att=refs[4] if att is not None else None, bias=refs[3],
                           keep=keep, p=p)
    assert_matches(out, ref, torch.float64, "out")
    assert_matches(alpha, ref_alpha, torch.float64, "alpha")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for name, a, r in zip("q k v bias att".split(), leaves, refs):
        assert_matches(a.grad, r.grad, torch.float64, f"grad {name}")

    # gradcheck: a fixed generator seed per call gives one mask for every evaluation
    small = inputs(score, n_src=5, n_dst=4, heads=2, d=3, dv=2, num_edges=14)
    sq, sk, sv, satt, _, sei = small
    sleaves = [leaf(t) for t in (sq, sk, sv)] + ([leaf(satt)] if satt is not None else [])

    def fn(q, k, v, *att):
        gen = torch.Generator().manual_seed(2)
        return graphattn.attention(q, k, v, sei, score=score, att=att[0] if att else None, dropout_p=0.3,
                                   generator=gen)

    assert torch.autograd.gradcheck(fn, sleaves)


@pytest.mark.parametrize("kw", [dict(score="gat"), dict(score="gatv2"), dict(dropout_p=0.1),
                                dict(return_attention=True)])
def test_dispatch(kw):
    """auto serves the extras with the fused CPU kernels; the CUDA C++ backend says it does not take them."""
    score = kw.get("score", "dot")
    q, k, v, att, _, ei = inputs(score, dtype=torch.float32)
    call = graphattn.backends.Call("csr", "cpu", torch.float32, 3, 1 if score == "gat" else 5, 4, False, False,
                                   False, False, score=score, dropout="dropout_p" in kw,
                                   return_attention="return_attention" in kw)
    assert graphattn.dispatch.choose(call).name == "cpu"
    res = graphattn.attention(q, k, v, ei, att=att, **kw)
    assert torch.isfinite(res[0] if isinstance(res, tuple) else res).all()
    word = {"score": "score", "dropout_p": "dropout", "return_attention": "return_attention"}[next(iter(kw))]
    if "cuda" in graphattn.dispatch.BACKENDS:
        cuda_call = graphattn.backends.Call("csr", "cuda", torch.float16, 2, 16, 16, False, False, False, False,
                                            score=score, dropout="dropout_p" in kw,
                                            return_attention="return_attention" in kw)
        reasons = graphattn.dispatch.BACKENDS["cuda"].not_supported_reasons(cuda_call)
        assert any(word in r for r in reasons), reasons
    # segments take none of them, whatever the backend
    seg = graphattn.Graph.block_diagonal(torch.tensor([0, 3, 7]))
    with pytest.raises(ValueError, match="sparse"):
        graphattn.attention(q[:7], k[:7], v[:7], seg, att=att, backend="cpu", **kw)


def test_errors():
    q, k, v, att, _, ei = inputs("gatv2", dtype=torch.float32)
    qg, kg = q[..., 0], k[..., 0]
    cases = [
        (ValueError, "score", dict(score="gcn")),
        (ValueError, "att", dict(score="gatv2")),  # att missing
        (ValueError, "att", dict(score="dot", att=att)),
        (ValueError, "att", dict(score="gatv2", att=att[:, :2])),
        (TypeError, "att", dict(score="gatv2", att=att.double())),
        (TypeError, "att", dict(score="gatv2", att=[1.0])),
        (ValueError, "score='gat'", dict(score="gat")),  # q of rank 3
        (ValueError, "scale", dict(score="gatv2", att=att, scale=0.5)),
        (ValueError, "dropout_p", dict(dropout_p=1.5)),
        (TypeError, "dropout_p", dict(dropout_p="0.1")),
        (TypeError, "negative_slope", dict(negative_slope=None)),
        (TypeError, "generator", dict(dropout_p=0.1, generator=3)),
        (TypeError, "return_attention", dict(return_attention=1)),
    ]
    for exc, word, kw in cases:
        with pytest.raises(exc, match=word):
            graphattn.attention(q, k, v, ei, **kw)
    with pytest.raises(ValueError, match="heads"):
        graphattn.attention(qg[:, :2], kg, v, ei, score="gat")
    with pytest.raises(ValueError, match="source rows"):
        graphattn.attention(qg, kg[:-1], v, ei, score="gat")
    with pytest.raises(ValueError, match="score='gat'"):
        graphattn.attention(qg, kg, v[..., 0], ei, score="gat")
    # dense and segment paths do not take them
    dq = torch.randn(2, 5, 3, 4)
    for kw in (dict(score="gat"), dict(dropout_p=0.1), dict(return_attention=True)):
        with pytest.raises(ValueError, match="sparse"):
            graphattn.attention(dq, dq, dq, **kw)
    seg = graphattn.Graph.block_diagonal(torch.tensor([0, 3, 7]))
    with pytest.raises(ValueError, match="sparse"):
        graphattn.attention(q, k[:7], v[:7], seg, score="gatv2", att=att)
