"""Pure-PyTorch oracle for every pattern of the contract.

Tests and benchmarks compare every kernel against these functions. They favour
clarity over speed and memory: the sparse one materialises `[E, H]` scores and
`[E, H, Dv]` messages, the dense one the full `[Lq, Lk]` score matrix (one
segment's square at a time for segments). Each computes in the dtype it is
given; callers pass float64 copies when they want an exact answer.

All are max-subtracted (no overflow for large logits) and give `out = 0`,
`lse = -inf` and zero gradients for a target without edges, never NaN; a
target whose every edge is masked (score -inf) is such a target.
Gradients come from autograd.
"""
from __future__ import annotations

import math

import torch


SCORES = ("dot", "gat", "gatv2")


def edge_scores(q, k, src, dst, bias=None, scale=None, *, score="dot", negative_slope=0.2, att=None):
    """Per-edge scores `s [E, H]` of the three score kinds (see shared/API.md).

    dot:   q [N_dst, H, D], k [N_src, H, D]; s = scale * <q_i, k_j> + bias.
    gat:   q [N_dst, H],    k [N_src, H];    s = LeakyReLU(q_i + k_j) + bias.
    gatv2: q [N_dst, H, D], k [N_src, H, D], att [H, D]; s = sum_d att * LeakyReLU(q_i + k_j) + bias.
    """
    if score == "dot":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = scale * (q[dst] * k[src]).sum(-1)
    elif score == "gat":
        scores = torch.nn.functional.leaky_relu(q[dst] + k[src], negative_slope)
    elif score == "gatv2":
        # Materialises [E, H, D]: the oracle favours clarity over memory.
        scores = (torch.nn.functional.leaky_relu(q[dst] + k[src], negative_slope) * att).sum(-1)
    else:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if bias is not None:
        scores = scores + (bias[:, None] if bias.dim() == 1 else bias)
    return scores


def sparse_attention(q, k, v, src, dst, bias=None, scale=None, *, score="dot", negative_slope=0.2, att=None,
                     dropout_p=0.0, generator=None, dropout_mask=None, return_attention=False):
    """Edge-softmax attention over explicit edges `src[e] -> dst[e]`.

    q [N_dst, H, D], k [N_src, H, D], v [N_src, H, Dv], src/dst [E] integer,
    bias None, [E] or [E, H]. Returns (out [N_dst, H, Dv], lse [N_dst, H]), and
    alpha [E, H] (after dropout) as a third item with return_attention=True.

    `score` picks the score kind ("dot", "gat": q [N_dst, H], k [N_src, H],
    "gatv2": needs `att [H, D]`). Dropout on the weights: `dropout_mask` (bool
    [E, H], True = keep) if given, else one drawn from `generator` when
    dropout_p > 0; kept weights are scaled by 1 / (1 - dropout_p). lse is
    that of the scores, before dropout.
    """
    n_dst, heads = q.shape[0], q.shape[1]
    src, dst = src.long(), dst.long()
    scores = edge_scores(q, k, src, dst, bias, scale, score=score, negative_slope=negative_slope, att=att)
    # Softmax is shift-invariant, so the per-target max can be detached: it
    # only keeps exp() in range and never changes the value or the gradient.
    # A row whose every score is -inf (no edges, or every edge masked by a -inf bias) has max
    # -inf; 0 stands in for it so that exp(-inf - 0) = 0 rather than exp(-inf + inf) = NaN.
    with torch.no_grad():
        row_max = scores.new_full((n_dst, heads), -math.inf)
        row_max.scatter_reduce_(0, dst[:, None].expand_as(scores), scores, "amax")
        row_max = row_max.nan_to_num(neginf=0.0)
    weights = torch.exp(scores - row_max[dst])
    denom = scores.new_zeros((n_dst, heads)).index_add(0, dst, weights)
    # Such a row has denom 0: lse -inf, weights 0. torch.where (not a division by 0 or log(0))
    # keeps its gradients 0 instead of inf * 0 = NaN.
    has_weight = denom != 0  # not > 0: a NaN sum (a NaN score) keeps its NaN lse
    safe_denom = torch.where(has_weight, denom, torch.ones_like(denom))
    lse = torch.where(has_weight, row_max + torch.log(safe_denom), torch.full_like(denom, -math.inf))
    alpha = weights / safe_denom[dst]
    if dropout_mask is None and dropout_p > 0:
        dropout_mask = torch.rand(alpha.shape, generator=generator, device=alpha.device) >= dropout_p
    if dropout_mask is not None:
        if dropout_p >= 1:
            alpha = alpha * 0.0
        else:
            alpha = torch.where(dropout_mask, alpha * (1.0 / (1.0 - dropout_p)), alpha.new_zeros(()))
    out = v.new_zeros((n_dst, heads, v.shape[-1])).index_add(0, dst, alpha[..., None] * v[src])
    if return_attention:
        return out, lse, alpha
    return out, lse


def dense_attention(q, k, v, scale=None, causal=False):
    """Full attention, `q [*B, Lq, H, D]`, `k [*B, Lk, H, D]`, `v [*B, Lk, H, Dv]`.

    Same as `scaled_dot_product_attention` after moving the head axis; `causal`
    is top-left aligned like SDPA's `is_causal`. Returns (out [*B, Lq, H, Dv],
    lse [*B, Lq, H]).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qh, kh, vh = (t.transpose(-3, -2) for t in (q, k, v))  # [*B, H, L, D]
    scores = scale * (qh @ kh.transpose(-1, -2))  # [*B, H, Lq, Lk]
    if k.shape[-3] == 0:
        # Nothing to attend to: out 0 and lse -inf, like a target without edges. Computed from the
        # empty products rather than made as constants, so that autograd still reaches q, k and v
        # (with zero gradients).
        out, lse = scores @ vh, torch.logsumexp(scores, dim=-1)
        return out.transpose(-3, -2), lse.transpose(-2, -1)
    if causal:
        lq, lk = scores.shape[-2:]
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, -math.inf)
    with torch.no_grad():
        row_max = scores.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(-1, keepdim=True)
    lse = (row_max + torch.log(denom)).squeeze(-1)
    # A row with no allowed key (Lk = 0) has denom 0: give it 0, not NaN.
    out = (weights / denom.clamp_min(torch.finfo(denom.dtype).tiny)) @ vh
    return out.transpose(-3, -2), lse.transpose(-2, -1)


def segment_attention(q, k, v, ptr, scale=None):
    """Each node attends to every node of its own segment `[ptr[s], ptr[s+1])`.

    q, k [N, H, D], v [N, H, Dv]. One segment's square at a time.
    Returns (out [N, H, Dv], lse [N, H]).
    """
    outs, lses = [], []
    bounds = ptr.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        o, l = dense_attention(q[start:end], k[start:end], v[start:end], scale=scale)
        outs.append(o)
        lses.append(l)
    if not outs:  # no nodes at all: the empty dense call keeps autograd's path to q, k and v
        return dense_attention(q, k, v, scale=scale)
    return torch.cat(outs), torch.cat(lses)
