"""Segment attention (a batch of complete graphs) by torch's SDPA over padded blocks.

The segments are grouped into buckets of similar size; each bucket is one
`F.scaled_dot_product_attention` call on `[B, H, L, D]` blocks, with a key-padding mask
where a segment is shorter than its bucket's length L. Rows are copied once into a
zero-padded buffer holding every bucket (one `index_copy` per input) and the outputs
copied back (one `index_select`); a batch whose non-empty segments all have one size
needs no copy and no mask at all (the blocks are views of q, k, v). Forward and backward
are torch's (SDPA's CPU flash kernel and its backward), differentiated by autograd.

Why: graphattn's segment kernel on CPU computes one score at a time; for segments of a few
dozen nodes and more, SDPA's tiled kernel is faster even counting the padding. `auto`
chooses between them by a measured crossover (graphattn/dispatch.py,
graphattn/segment_crossover.py).

Exact semantics: padded key slots are masked (weight 0, no gradient); padded query slots
are zero rows whose outputs are dropped and get no gradient, so a NaN or an infinity stays
in its segment (a padded slot only ever meets rows of its own bucket block, i.e. its own
segment). A query row holding NaN gets a NaN output row, as from the segment kernel (SDPA's
CPU kernel alone gives it a finite one). Empty segments own no rows; N = 0 keeps autograd's path to q, k, v (through the
reference's empty computation).

lse: SDPA does not return a differentiable lse, so with `return_lse=True` it is computed
beside SDPA from the same padded blocks (scores in float32 / float64, masked, logsumexp;
differentiable by autograd), in chunks of segments that bound the score memory. `auto`
sends calls that ask for lse to the segment kernel (the crossover is measured without it);
forcing `backend="sdpa"` serves them this way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import reference
from .base import stats_dtype

# A bucket of length L takes the segments of sizes down to _FILL * L: padding adds at most
# 1 / _FILL**2 - 1 (about 31%) to a bucket's score area, and sizes spanning a factor r need
# about log(r) / log(1 / _FILL) buckets (SDPA calls).
_FILL = 7 / 8
# lse: at most this many float32 scores held at once (chunks of segments of one bucket).
_LSE_CHUNK_SCORES = 1 << 24
PLAN_KEY = "sdpa_segment_plan"


@dataclass(frozen=True)
class SegmentPlan:
    """Where each row goes in the padded buffer; built once per Graph and cached on it."""

    num_nodes: int
    buckets: tuple  # ((length L, segments B), ...) in the padded buffer's order
    padded_rows: int  # sum of B * L
    pos: Optional[torch.Tensor]  # [N] int64: row -> its slot in the buffer; None: the rows are the buffer
    masks: tuple  # per bucket: bool [B, 1, 1, L] (True = a real key), or None when every segment fills L


def build_plan(ptr: torch.Tensor) -> SegmentPlan:
    device = ptr.device
    ptr = ptr.detach().to("cpu", torch.int64)
    n = int(ptr[-1]) if ptr.numel() else 0
    sizes = ptr[1:] - ptr[:-1]
    keep = sizes > 0
    seg_sizes, seg_starts = sizes[keep], ptr[:-1][keep]
    if n == 0:
        return SegmentPlan(0, (), 0, None, ())
    if int(seg_sizes.min()) == int(seg_sizes.max()):
        # One size: the rows, in order, are [B, L] blocks already (empty segments own no rows).
        length = int(seg_sizes[0])
        return SegmentPlan(n, ((length, n // length),), n, None, (None,))
    # Buckets, largest segments first: a bucket is as long as its largest segment and takes the
    # following sizes down to _FILL of that.
    order = torch.argsort(seg_sizes, descending=True, stable=True)
    sorted_sizes = seg_sizes[order]
    distinct, counts = torch.unique_consecutive(sorted_sizes, return_counts=True)
    buckets, first = [], 0  # (length, number of segments), over `order`
    length, taken = None, 0
    for size, count in zip(distinct.tolist(), counts.tolist()):
        if length is None or size < _FILL * length:
            if length is not None:
                buckets.append((length, taken))
            length, taken = size, 0
        taken += count
    buckets.append((length, taken))
    bucket_len = torch.repeat_interleave(torch.tensor([b[0] for b in buckets]), torch.tensor([b[1] for b in buckets]))
    bucket_first_seg = torch.tensor([0] + [b[1] for b in buckets]).cumsum(0)[:-1]
    bucket_offset = torch.tensor([0] + [b[0] * b[1] for b in buckets]).cumsum(0)
    bucket_of = torch.repeat_interleave(torch.arange(len(buckets)), torch.tensor([b[1] for b in buckets]))
    slot = torch.arange(order.numel()) - bucket_first_seg[bucket_of]
    base_sorted = bucket_offset[:-1][bucket_of] + slot * bucket_len  # buffer slot of each sorted segment's row 0
    base = torch.empty_like(base_sorted)
    base[order] = base_sorted
    seg_of_row = torch.repeat_interleave(torch.arange(seg_sizes.numel()), seg_sizes, output_size=n)
    pos = base[seg_of_row] + torch.arange(n) - seg_starts[seg_of_row]
    masks, start = [], 0
    for length, count in buckets:
        lens = sorted_sizes[start:start + count]
        start += count
        if bool((lens == length).all()):
            masks.append(None)
        else:
            masks.append((torch.arange(length)[None, :] < lens[:, None])[:, None, None, :].to(device))
    return SegmentPlan(n, tuple(buckets), int(bucket_offset[-1]), pos.to(device), tuple(masks))


def plan_for(graph) -> SegmentPlan:
    return graph.cached(PLAN_KEY, lambda: build_plan(graph.ptr))


def _bucket_lse(qb, kb, mask, scale):
    """lse of one bucket's blocks qb [B, H, L, D], kb [B, H, L, D] -> [B * L, H] (float32 / float64)."""
    acc = stats_dtype(qb.dtype)
    count, heads, length = qb.shape[0], qb.shape[1], qb.shape[2]
    step = max(1, _LSE_CHUNK_SCORES // max(1, heads * length * length))
    parts = []
    for s in range(0, count, step):
        scores = scale * (qb[s:s + step].to(acc) @ kb[s:s + step].to(acc).transpose(-1, -2))
        if mask is not None:
            scores = scores.masked_fill(~mask[s:s + step], -math.inf)
        parts.append(torch.logsumexp(scores, dim=-1))  # [b, H, L]
    lse = parts[0] if len(parts) == 1 else torch.cat(parts)
    return lse.transpose(1, 2).reshape(count * length, heads)


def segment_attention(q, k, v, graph, scale: float, want_lse: bool):
    """q, k [N, H, D], v [N, H, Dv] over the Graph's segments -> (out [N, H, Dv], lse [N, H] or None)."""
    plan = plan_for(graph)
    if plan.num_nodes == 0:
        # Nothing to attend to; the reference's empty computation keeps autograd's path to q, k, v.
        out, lse = reference.dense_attention(q, k, v, scale)
        return out, (lse.to(stats_dtype(q.dtype)) if want_lse else None)
    rows = plan.padded_rows

    def padded(x):  # [N, H, *] -> [rows, H, *]
        if plan.pos is None:
            return x
        return x.new_zeros((rows,) + tuple(x.shape[1:])).index_copy(0, plan.pos, x)

    # split (not slicing per bucket): its backward is one cat of the buckets' gradients, where
    # slices would each add a zero-filled gradient of the whole buffer
    rows_per_bucket = [count * length for length, count in plan.buckets]
    qs, ks, vs = (padded(x).split(rows_per_bucket) for x in (q, k, v))
    heads, dv = v.shape[1], v.shape[2]
    outs, lses = [], []
    for (length, count), mask, qb, kb, vb in zip(plan.buckets, plan.masks, qs, ks, vs):
        qb, kb, vb = (x.unflatten(0, (count, length)).transpose(1, 2) for x in (qb, kb, vb))  # [B, H, L, *]
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)  # [B, H, L, Dv]
        outs.append(out.transpose(1, 2).reshape(count * length, heads, dv))
        if want_lse:
            lses.append(_bucket_lse(qb, kb, mask, scale))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    lse = (lses[0] if len(lses) == 1 else torch.cat(lses)) if want_lse else None
    if plan.pos is not None:
        out = out.index_select(0, plan.pos)
        lse = None if lse is None else lse.index_select(0, plan.pos)
    # SDPA's CPU flash kernel gives a finite row for a query row holding NaN (torch 2.13: its row
    # maximum skips the NaN); the contract, and the segment kernel, give NaN there.
    nan_rows = torch.isnan(q).any(-1)
    if bool(nan_rows.any()):
        out = out.masked_fill(nan_rows[..., None], math.nan)
    return out, lse
