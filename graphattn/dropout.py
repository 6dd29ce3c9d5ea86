"""Attention dropout's keep mask, the same on every backend.

The mask of edge e (its edge_index column) and head h is a pure function of a
seed [2] drawn from torch's generator: a counter-based hash, so a kernel
regenerates it in its forward and again in its backward without storing
anything of size [E, H], and the C++ (csrc/dropout_hash.h), Triton
(kernels/dropout_hash.py) and this PyTorch version give the same bits. Drawing
the seed from torch's generator makes the mask reproducible under
torch.manual_seed (or a `generator=`), and independent of the backend and of
the Graph's internal edge order.

    x = mix32(e ^ seed0);  x = mix32(x ^ (h * 0x9E3779B9 + seed1))   (all mod 2^32)
    keep = (x >> 8) >= ceil(p * 2^24)

mix32 is the "lowbias32" integer finaliser (two multiply-xorshift rounds).
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
HEAD_MUL = 0x9E3779B9
UNIFORM_BITS = 24


def threshold(p: float) -> int:
    """Keep an entry when its 24-bit draw is >= this: P(keep) = 1 - p up to 2^-24."""
    return int(math.ceil(p * (1 << UNIFORM_BITS)))


def keep_scale(p: float) -> float:
    """The factor kept weights are multiplied by: 1 / (1 - p), and 0 when everything is dropped."""
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def draw_seed(generator=None, device=None) -> torch.Tensor:
    """Two 32-bit words from torch's generator (of `device` unless `generator` is given), as int64 [2]."""
    if generator is not None:
        device = generator.device
    return torch.randint(0, 1 << 32, (2,), generator=generator, device=device, dtype=torch.int64)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for int64 x in [0, 2^32), without int64 overflow (split x into 16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (((hi * c) & 0xFFFF) << 16) + lo * c & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL_2)
    return x ^ (x >> 16)


def keep_mask(seed: torch.Tensor, num_edges: int, num_heads: int, p: float) -> torch.Tensor:
    """bool [num_edges, num_heads], True = kept, for edges in edge_index column order."""
    seed = seed.to(torch.int64)
    e = torch.arange(num_edges, device=seed.device, dtype=torch.int64)[:, None] & MASK32
    h = torch.arange(num_heads, device=seed.device, dtype=torch.int64)[None, :]
    x = _mix32(e ^ seed[0])
    x = _mix32(x ^ ((_mul32(h, HEAD_MUL) + seed[1]) & MASK32))
    return (x >> (32 - UNIFORM_BITS)) >= threshold(p)
