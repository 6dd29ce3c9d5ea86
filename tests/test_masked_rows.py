"""Edges masked by a -inf bias (shared/API.md): a masked edge gets weight 0 and no
gradient; a target whose every edge is masked is a target without edges (out 0,
lse -inf, zero and finite gradients, never NaN), per head; a partly masked target
attends to the rest exactly.

The oracle is independent of how any backend handles -inf: for each head, the
float64 reference runs on the unmasked edges only."""
import math

import pytest
import torch

import graphattn
from conftest import DEVICE, assert_matches, leaf, random_rows, sparse_backends

BACKENDS = sparse_backends()
HUB_DEGREE = 300  # above the Triton hub threshold (256) and several CPU chunks (64)


def masked_graph(shared_bias: bool):
    """Targets: 0 fully masked, 1 masked on head 0 only (or fully, with a shared bias),
    2 partly masked, 3 without edges, 4 a hub with a third of its edges masked, 5 a fully
    masked hub, 6 unmasked. Sources 0..7. Returns (edge_index, bias)."""
    g = torch.Generator().manual_seed(7)
    dst = torch.cat([torch.full((n,), t) for t, n in ((0, 4), (1, 3), (2, 5), (4, HUB_DEGREE), (5, HUB_DEGREE),
                                                      (6, 4))])
    src = torch.randint(0, 8, (dst.numel(),), generator=g)
    perm = torch.randperm(dst.numel(), generator=g)  # unsorted columns
    edge_index = torch.stack([src, dst])[:, perm]
    heads = 1 if shared_bias else 2
    bias = torch.randn(dst.numel(), heads, generator=g, dtype=torch.float64)
    masked = torch.zeros(dst.numel(), heads, dtype=torch.bool)
    masked[dst == 0] = True
    masked[dst == 1, 0] = True
    masked[(dst == 2) & (torch.arange(dst.numel()) % 2 == 0)] = True
    masked[(dst == 4) & (torch.arange(dst.numel()) % 3 == 0)] = True
    masked[dst == 5] = True
    bias = bias.masked_fill(masked, -math.inf)[perm]
    return edge_index, bias[:, 0] if shared_bias else bias


def expected(q, k, v, edge_index, bias, g_out, g_lse):
    """Per head, the float64 reference on the unmasked edges: (out, lse, dq, dk, dv, dbias)."""
    heads = q.shape[1]
    bias_h = bias[:, None].expand(-1, heads) if bias.dim() == 1 else bias
    out, lse = [], []
    grads = [torch.zeros(t.shape, dtype=torch.float64) for t in (q, k, v)] + [torch.zeros(bias_h.shape,
                                                                                         dtype=torch.float64)]
    for h in range(heads):
        keep = torch.isfinite(bias_h[:, h])
        qh, kh, vh = (leaf(t[:, h:h + 1].double().cpu()) for t in (q, k, v))
        bh = leaf(bias_h[keep, h:h + 1].double().cpu())
        ei = edge_index[:, keep].cpu().long()
        o, l = graphattn.reference.sparse_attention(qh, kh, vh, ei[0], ei[1], bh, None)
        gl = g_lse[:, h:h + 1].cpu().clone()
        gl[~torch.isfinite(l)] = 0  # a target without edges has no lse gradient to pass on
        dq, dk, dv, db = torch.autograd.grad((o, l), (qh, kh, vh, bh), (g_out[:, h:h + 1].cpu(), gl),
                                             allow_unused=True)
        out.append(o)
        lse.append(l)
        for acc, d in zip(grads[:3], (dq, dk, dv)):
            acc[:, h:h + 1] = d
        grads[3][keep, h] = db[:, 0]
    if bias.dim() == 1:
        grads[3] = grads[3].sum(1)
    return (torch.cat(out, 1), torch.cat(lse, 1), *grads)


@pytest.mark.parametrize("shared_bias", [False, True], ids=["bias[E,H]", "bias[E]"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_edges_get_no_weight_and_fully_masked_targets_are_targets_without_edges(backend, dtype,
                                                                                        shared_bias):
    edge_index, bias64 = masked_graph(shared_bias)
    edge_index = edge_index.to(DEVICE)
    q, k, v = (random_rows(n, 2, d, dtype, seed=s) for n, d, s in ((7, 5, 1), (8, 5, 2), (8, 3, 3)))
    bias = bias64.to(device=DEVICE, dtype=dtype)
    qa, ka, va, ba = (leaf(t) for t in (q, k, v, bias))
    out, lse = graphattn.attention(qa, ka, va, edge_index, bias=ba, return_lse=True, backend=backend)
    gen = torch.Generator().manual_seed(3)
    g_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    g_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64)  # on every row, masked ones too
    grads = torch.autograd.grad((out, lse), (qa, ka, va, ba), (g_out.to(DEVICE, out.dtype), g_lse.to(DEVICE)))

    want = expected(q, k, v, edge_index, bias.double(), g_out, g_lse)
    assert torch.equal(out[0].cpu(), torch.zeros_like(out[0].cpu())), "a fully masked target must give 0"
    assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[5]).all()
    assert torch.isneginf(lse[1, 0]) and (shared_bias or torch.isfinite(lse[1, 1]))
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv", "dbias"), (out, lse, *grads), want):
        assert not torch.isnan(got).any(), f"{name} holds NaN"
        assert_matches(got.cpu(), ref, dtype, name)


def scored_inputs(score, dtype):
    edge_index, bias = masked_graph(shared_bias=False)
    heads = 2
    if score == "gat":
        q, k = (random_rows(n, heads, 1, dtype, seed=s)[..., 0] for n, s in ((7, 1), (8, 2)))
    else:
        q, k = (random_rows(n, heads, 4, dtype, seed=s) for n, s in ((7, 1), (8, 2)))
    v = random_rows(8, heads, 3, dtype, seed=3)
    att = random_rows(1, heads, 4, dtype, seed=4)[0] if score == "gatv2" else None
    return edge_index.to(DEVICE), q, k, v, bias.to(device=DEVICE, dtype=dtype), att


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("score", ["dot", "gat", "gatv2"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_fully_masked_targets_give_zero_weights_and_finite_gradients_with_score_kinds(backend, score, dropout_p):
    """The extras' op (score kinds, dropout, returned weights) against the reference backend, which the
    test above checks against the per-head oracle."""
    dtype = torch.float32
    edge_index, q, k, v, bias, att = scored_inputs(score, dtype)
    results = {}
    for name in (backend, "reference"):
        leaves = [leaf(t) for t in (q, k, v, bias) + ((att,) if att is not None else ())]
        gen = torch.Generator(device=DEVICE).manual_seed(5)
        out, lse, alpha = graphattn.attention(
            *leaves[:3], edge_index, bias=leaves[3], att=leaves[4] if att is not None else None, score=score,
            dropout_p=dropout_p, generator=gen, return_lse=True, return_attention=True, backend=name)
        g = torch.Generator().manual_seed(6)
        grad_outputs = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(DEVICE, t.dtype)
                        for t in (out, lse, alpha)]
        results[name] = (out, lse, alpha, *torch.autograd.grad((out, lse, alpha), leaves, grad_outputs))
    names = ["out", "lse", "alpha", "dq", "dk", "dv", "dbias", "datt"]
    masked_cols = (edge_index[1] == 0) | (edge_index[1] == 5)
    assert torch.equal(results[backend][2][masked_cols], torch.zeros_like(results[backend][2][masked_cols]))
    for name, got, ref in zip(names, results[backend], results["reference"]):
        assert not torch.isnan(got).any(), f"{name} holds NaN"
        assert_matches(got.cpu(), ref.cpu(), dtype, name)
