"""Dense attention by torch's own scaled_dot_product_attention (flash, cuDNN,
memory-efficient or math, as torch chooses). It is the contract's definition
of the dense path, so it serves every dense call on any device.

On CPU it also serves segments (a batch of complete graphs): SDPA over padded blocks
(graphattn/backends/sdpa_segments.py), which `auto` picks over the segment kernel where a
measured crossover says it is faster (graphattn/dispatch.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import sdpa_segments
from .base import Backend

# Query rows per block when lse is asked for: bounds the scores held at once
# to _LSE_BLOCK x Lk per head.
_LSE_BLOCK = 1024


def _dense_lse(q, k, scale, causal):
    """log-sum-exp of the scores, [*B, Lq, H] in float32 (float64 for float64), by query blocks."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh, kh = q.transpose(-3, -2).to(acc), k.transpose(-3, -2).to(acc)  # [*B, H, L, D]
    lq, lk = qh.shape[-2], kh.shape[-2]
    blocks = []
    for start in range(0, lq, _LSE_BLOCK):
        scores = scale * (qh[..., start:start + _LSE_BLOCK, :] @ kh.transpose(-1, -2))
        if causal:
            rows = torch.arange(start, start + scores.shape[-2], device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(lk, device=q.device) > rows, float("-inf"))
        blocks.append(torch.logsumexp(scores, dim=-1))
    lse = torch.cat(blocks, dim=-1) if blocks else qh.new_empty(qh.shape[:-1])
    return lse.transpose(-2, -1)


class SdpaBackend(Backend):
    name = "sdpa"
    devices = ("cpu", "cuda")
    patterns = ("dense", "segments")
    supports_bias = False
    # SDPA's CUDA backwards (flash / efficient) accumulate with atomics.
    deterministic_on = ("cpu",)
    autograd_by_ops = False  # differentiated by torch's autograd

    def not_supported_reasons(self, call):
        reasons = super().not_supported_reasons(call)
        if call.pattern == "segments" and call.device_type != "cpu":
            reasons.append(f"serves segments on cpu only (SDPA over padded blocks), not {call.device_type}")
        return reasons

    def attention(self, call, q, k, v, graph, bias, scale, causal):
        if call.pattern == "segments":
            return sdpa_segments.segment_attention(q, k, v, graph, scale, call.return_lse)
        if scale == 0.0:
            # torch's CPU flash SDPA returns NaN for scale=0 with is_causal (seen with torch 2.13); the
            # same all-zero scores come from q * 0 at scale 1, and q's gradient is 0 either way.
            q, scale = q * 0.0, 1.0
        out = F.scaled_dot_product_attention(
            q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2), is_causal=causal, scale=scale)
        lse = _dense_lse(q, k, scale, causal) if call.return_lse else None
        return out.transpose(-3, -2), lse
