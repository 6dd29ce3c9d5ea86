"""Every kernel backend that serves the sparse-path extras (score kinds, attention
dropout, returned weights) against the reference backend on the float64 copies of
the same inputs, with the same dropout seed: forward, lse, alpha, and the
gradients of q, k, v, att and bias, also through alpha."""
import pytest
import torch

import graphattn
from conftest import DEVICE, assert_matches, leaf, sparse_backends

SCORES = ["dot", "gat", "gatv2"]


def scored_backends():
    """Kernel backends (not the reference itself) that declare the extras on DEVICE."""
    names = []
    for name in sparse_backends():
        b = graphattn.dispatch.BACKENDS[name]
        if name != "reference" and "gatv2" in b.score_kinds and b.supports_dropout and b.supports_return_attention:
            names.append(name)
    return names


def make_inputs(score, *, n_src=11, n_dst=9, heads=2, d=5, dv=3, edges=None, dtype=torch.float32, bias=None,
                seed=0, logit_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    if edges is None:
        src = torch.randint(0, n_src, (40,), generator=g)
        dst = torch.randint(0, n_dst - 1, (40,), generator=g)  # the last target has no edges
        # a duplicate edge and a self-loop
        edges = torch.stack([torch.cat([src, src[:1], torch.tensor([2])]), torch.cat([dst, dst[:1], torch.tensor([2])])])
    qshape = (n_dst, heads) if score == "gat" else (n_dst, heads, d)
    kshape = (n_src, heads) if score == "gat" else (n_src, heads, d)
    q = (logit_scale * torch.randn(qshape, generator=g, dtype=torch.float64)).to(dtype)
    k = (logit_scale * torch.randn(kshape, generator=g, dtype=torch.float64)).to(dtype)
    v = torch.randn(n_src, heads, dv, generator=g, dtype=torch.float64).to(dtype)
    att = torch.randn(heads, d, generator=g, dtype=torch.float64).to(dtype) if score == "gatv2" else None
    e = edges.shape[1]
    b = {None: None, "eh": torch.randn(e, heads, generator=g, dtype=torch.float64),
         "e": torch.randn(e, generator=g, dtype=torch.float64)}[bias]
    b = None if b is None else b.to(dtype)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(q), to(k), to(v), to(att), to(b), to(edges)


def run(backend, q, k, v, att, b, ei, *, score, p, slope=0.2, seed=7, grads=True, alpha_grad=True):
    """out, lse, alpha and the gradients of a fixed random loss over out, lse and alpha."""
    leaves = [None if t is None else leaf(t) for t in (q, k, v, att, b)]
    torch.manual_seed(seed)
    out, lse, alpha = graphattn.attention(
        leaves[0], leaves[1], leaves[2], ei, bias=leaves[4], score=score, att=leaves[3], negative_slope=slope,
        dropout_p=p, return_lse=True, return_attention=True, backend=backend)
    if not grads:
        return out, lse, alpha, []
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    w_alpha = torch.randn(alpha.shape, generator=g, dtype=torch.float64).to(out.device)
    w_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(out.device)
    loss = (out.double() * w_out).sum() + (torch.where(torch.isinf(lse), 0, lse).double() * w_lse).sum()
    if alpha_grad:
        loss = loss + (alpha.double() * w_alpha).sum()
    loss.backward()
    return out, lse, alpha, [None if t is None else t.grad for t in leaves]


def check(backend, score, *, p=0.0, bias=None, dtype=torch.float32, slope=0.2, alpha_grad=True, **kw):
    q, k, v, att, b, ei = make_inputs(score, dtype=dtype, bias=bias, **kw)
    got = run(backend, q, k, v, att, b, ei, score=score, p=p, slope=slope, alpha_grad=alpha_grad)
    up = lambda t: None if t is None else t.double()  # noqa: E731
    want = run("reference", up(q), up(k), up(v), up(att), up(b), ei, score=score, p=p, slope=slope,
               alpha_grad=alpha_grad)
    # dtype tolerance; float32 accumulation errors are measured against float64
    tol = torch.float32 if dtype == torch.float64 and backend != "cpu" else dtype
    for name, a, r in zip(("out", "lse", "alpha"), got[:3], want[:3]):
        assert_matches(a, r, tol, name)
    for name, a, r in zip(("q", "k", "v", "att", "bias"), got[3], want[3]):
        if r is None:
            continue
        assert a is not None, f"no gradient for {name}"
        assert_matches(a, r, tol, f"grad {name}", floor=4e-5 if tol == torch.float32 else 0.0)


BACKENDS = scored_backends()
needs_backends = pytest.mark.skipif(not BACKENDS, reason="no kernel backend serves the extras on this device")


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("p", [0.0, 0.35])
@pytest.mark.parametrize("bias", [None, "eh"])
def test_against_reference(backend, score, p, bias):
    check(backend, score, p=p, bias=bias)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["gat", "gatv2"])
def test_bias_per_edge_slope_and_odd_dims(backend, score):
    check(backend, score, bias="e", slope=0.01, d=7, dv=1, heads=3)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64(backend):
    if backend != "cpu":
        pytest.skip(f"{backend} does not take float64")
    for score in SCORES:
        check(backend, score, p=0.25, bias="eh", dtype=torch.float64)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend, dtype):
    check(backend, "gatv2", p=0.2, bias="eh", dtype=dtype, alpha_grad=False)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["gat", "gatv2"])
def test_hub_and_large_logits(backend, score):
    """One target with a degree far above any block size (the Triton hub split), large logits."""
    n = 30
    g = torch.Generator().manual_seed(3)
    hub = torch.stack([torch.randint(0, n, (700,), generator=g), torch.full((700,), 4)])
    rest = torch.stack([torch.randint(0, n, (60,), generator=g), torch.randint(0, n, (60,), generator=g)])
    ei = torch.cat([hub, rest], 1)[:, torch.randperm(760, generator=g)]
    check(backend, score, p=0.3, bias="eh", edges=ei, n_src=n, n_dst=n, heads=2, d=4, dv=3, logit_scale=20.0)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_edges(backend):
    ei = torch.zeros(2, 0, dtype=torch.long)
    q, k, v, att, b, ei = make_inputs("gatv2", edges=ei)
    out, lse, alpha, grads = run(backend, q, k, v, att, b, ei, score="gatv2", p=0.5)
    assert alpha.shape == (0, 2) and torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    assert all(torch.equal(t, torch.zeros_like(t)) for t in grads if t is not None)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_unsorted_noncontiguous(backend):
    q, k, v, att, b, ei = make_inputs("gatv2", bias="eh", heads=3, d=4)
    ei32 = ei.flip(1).to(torch.int32)
    qn = torch.randn(q.shape[0], q.shape[1], 2 * q.shape[2], device=q.device)[..., ::2]  # strided last dim
    qn.copy_(q)
    vn = v.transpose(0, 1).contiguous().transpose(0, 1)  # other row/head strides
    a = run(backend, qn, k, vn, att, b.flip(0), ei32, score="gatv2", p=0.3)
    # the same columns (the dropout mask is keyed by column) as int64
    r = run("reference", q.double(), k.double(), v.double(), att.double(), b.flip(0).double(), ei.flip(1),
            score="gatv2", p=0.3)
    for name, x, y in zip(("out", "lse", "alpha"), a[:3], r[:3]):
        assert_matches(x, y, torch.float32, name)
    for name, x, y in zip(("q", "k", "v", "att", "bias"), a[3], r[3]):
        assert_matches(x, y, torch.float32, f"grad {name}", floor=4e-5)


@needs_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_mask_as_reference_and_deterministic(backend):
    q, k, v, att, b, ei = make_inputs("gat", n_src=40, n_dst=40, heads=4)
    _, _, alpha1, _ = run(backend, q, k, v, att, b, ei, score="gat", p=0.5, grads=False)
    _, _, alpha2, _ = run(backend, q, k, v, att, b, ei, score="gat", p=0.5, grads=False)
    _, _, ref, _ = run("reference", q, k, v, att, b, ei, score="gat", p=0.5, grads=False)
    assert torch.equal(alpha1, alpha2)
    assert torch.equal(alpha1 == 0, ref == 0)
    g1 = run(backend, q, k, v, att, b, ei, score="gat", p=0.5)[3]
    g2 = run(backend, q, k, v, att, b, ei, score="gat", p=0.5)[3]
    assert all(torch.equal(x, y) for x, y in zip(g1, g2) if x is not None)
