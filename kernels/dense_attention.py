"""Triton kernels for dense (flash-style) attention and block-diagonal segments.

Two patterns share one set of kernels (``IS_SEGMENT`` is a compile-time switch):

* dense: ``q [B, Lq, H, D]``, ``k [B, Lk, H, D]``, ``v [B, Lk, H, Dv]``, optional
  top-left aligned causal mask (SDPA's ``is_causal``: query ``r`` sees keys ``c <= r``).
* segments (a batch of complete graphs): ``q, k [N, H, D]``, ``v [N, H, Dv]`` and
  ``ptr [S + 1]``; node ``i`` of segment ``s`` attends to every node of
  ``[ptr[s], ptr[s + 1])``. Query tiles are scheduled per segment from a small host
  table (see :func:`build_segment_plan`), and a tile only visits the key tiles of
  its own segment: no padding to the largest segment, no tile outside a segment.

Algorithm (FlashAttention-2, after Triton's tutorial ``06-fused-attention``):

* forward: one program per (query tile, head); online softmax in float32 with
  ``exp2`` and ``log2(e)`` folded into the scale; key tiles that need no mask run in
  an unmasked stage, the diagonal / ragged-tail tiles in a masked stage. Saves
  ``out`` and ``lse`` (float32 natural log) only.
* backward: ``Delta = rowsum(dO * O) - grad_lse`` pre-pass, then a dK/dV kernel that
  owns key tiles and loops over query tiles, and a dQ kernel that owns query tiles
  and loops over key tiles. No atomics: deterministic.

Numerics: scores, softmax statistics and all accumulators are float32. ``P`` and
``dS`` are rounded to the input dtype before their ``tl.dot`` (as in FlashAttention).
For float32 inputs every ``tl.dot`` uses ``input_precision="ieee"`` (true fp32 FMA,
no TF32): a deliberate correctness-over-speed choice so float32 results match a
float32 reference to ~1e-6; it runs on CUDA cores, several times slower than TF32
tensor cores. float16 / bfloat16 use the tensor cores (fp32 accumulation).

Head dims ``D`` and ``Dv`` may be any size 1..256 and may differ: tiles are padded
to a power of two >= 16 and masked. All strides are passed to the kernels (inputs
are never copied) except that the last dim must have stride 1 (a tensor that does
not is made contiguous). Pointer offsets that can exceed 2**31 are computed in
int64: every tile's base offset (batch, head, first row, segment start); offsets
inside a tile stay int32, which the launchers guarantee (``_kernel_layout``).

A row whose lse is -inf is a row without any key (the convention of every pattern;
a zero-length key sequence is answered by the launchers without a kernel): the
backward gives it P = 0, never NaN. The forward
never meets a row whose every score is masked: the first key tile it visits holds key
0, which every row may see (causal included), so the running max is finite after it.

This module imports only torch and triton (it is installed as ``graphattn.kernels``).
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

# Imported for its effect: fixes Triton's CPU interpreter when TRITON_INTERPRET=1.
from . import interpreter_compat  # noqa: F401,E402

__all__ = [
    "dense_attention_forward",
    "dense_attention_backward",
    "segment_attention_forward",
    "segment_attention_backward",
    "build_segment_plan",
    "SEGMENT_BLOCK_M",
    "MAX_HEAD_DIM",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
MAX_HEAD_DIM = 256

# Rows per segment tile (query tiles in the forward and dQ kernels, key tiles in the
# dK/dV kernel). A plan built by build_segment_plan(ptr, BLOCK_M) must be used with
# the same block_m. 64 balances waste on small graphs (a 20-node graph uses 20/64 of
# its tile) against tensor-core efficiency on large ones.
SEGMENT_BLOCK_M = 16 if _INTERPRET else 64


# --------------------------------------------------------------------------------------
# Autotuning configurations
# --------------------------------------------------------------------------------------
# Candidates per (input precision, head-dim bucket), bucket = max(BLOCK_D, BLOCK_DV)
# in {64 (also <= 32), 128, 256}. Entries are (BLOCK_M, BLOCK_N, num_warps, num_stages).
# A segment kernel's owned block (BLOCK_M for the forward and dQ, BLOCK_N for dK/dV) is a
# sub-tile of the plan's block_m rows (64 by default; _seg_grid launches block_m // owned
# programs per plan tile), so the register tile does not have to be the plan tile: fp32
# and D = 256 need smaller tiles than a plan tile of 64 rows. Every entry was compiled for
# sm_90 with ptxas (triton 3.6, no GPU at hand; benchmarks/kernel_resources.py) and only
# configurations without register spills are kept; the timing choice among them is left
# to the autotuner on the device. Causal dK/dV needs BLOCK_N % BLOCK_M == 0 (the
# diagonal stage steps through the key tile's own rows in BLOCK_M sub-tiles): every
# dK/dV entry keeps it. float32 uses exact fp32 dots (FMA units), whose tiles must
# be much smaller.
# Under TRITON_INTERPRET=1 each kernel gets one small fixed config (the autotuner
# does not benchmark a single config), so CPU tests stay fast.

_TABLES = {
    "fwd": {
        ("lp", 64): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4),
                     (64, 32, 4, 3), (32, 32, 4, 2)],
        ("lp", 128): [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 8, 3), (64, 32, 4, 4),
                      (32, 32, 4, 2)],
        ("lp", 256): [(64, 16, 8, 2), (32, 32, 8, 2), (32, 32, 4, 1), (32, 16, 4, 2), (16, 16, 4, 2)],
        ("f32", 64): [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
        ("f32", 128): [(32, 16, 8, 2), (16, 16, 8, 2)],  # (16, 16, 4, 2) spills 4 B
        ("f32", 256): [(16, 16, 4, 2), (16, 16, 8, 2)],
    },
    "fwd_seg": {  # (BLOCK_M: a sub-tile of the plan tile, BLOCK_N, warps, stages)
        ("lp", 64): [(64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 3), (64, 32, 4, 2)],
        ("lp", 128): [(64, 32, 4, 2), (64, 64, 8, 3), (64, 16, 4, 3), (64, 32, 8, 3), (64, 32, 8, 2)],
        ("lp", 256): [(64, 16, 8, 2), (64, 32, 8, 2), (32, 16, 4, 2)],
        # fp32 FMA dots hold their operands replicated across threads: at 64 rows x D = 128
        # (or 32 rows on 4 warps) they spill 0.6 KB, at 64 x 256 20 KB; 64 x 64 on 4 warps 8 B
        ("f32", 64): [(64, 32, 8, 2), (32, 16, 4, 2), (32, 32, 4, 2)],
        ("f32", 128): [(32, 16, 8, 2), (16, 16, 4, 2)],
        ("f32", 256): [(32, 16, 8, 2), (16, 16, 4, 2), (16, 16, 8, 2)],
    },
    "dkdv": {
        ("lp", 64): [(32, 128, 8, 3), (32, 64, 4, 3), (32, 64, 8, 3), (16, 64, 4, 4), (16, 32, 4, 2)],
        ("lp", 128): [(16, 64, 8, 3), (16, 32, 8, 3), (16, 32, 4, 2)],
        ("lp", 256): [(16, 32, 8, 2), (16, 16, 4, 2)],
        ("f32", 64): [(16, 64, 8, 2), (16, 16, 4, 2)],
        ("f32", 128): [(16, 32, 8, 2), (16, 16, 4, 2)],
        ("f32", 256): [(16, 16, 4, 2), (16, 16, 8, 2)],
    },
    "dkdv_seg": {  # (BLOCK_M, BLOCK_N: a sub-tile of the plan tile, warps, stages)
        ("lp", 64): [(32, 64, 4, 3), (16, 64, 4, 3), (32, 64, 8, 3)],
        ("lp", 128): [(16, 64, 8, 2), (32, 64, 8, 3)],
        # 64 keys x D = 256 (dK and dV accumulators, K and V tiles) spill 20-150 B
        ("lp", 256): [(16, 32, 8, 2), (16, 16, 4, 2), (32, 32, 8, 2)],
        # fp32: 64 keys spill from D = 64 on (8 B; 0.7 KB at 128, 4 KB at 256), 32 keys on 4 warps at 128
        ("f32", 64): [(16, 32, 8, 2), (16, 16, 4, 2)],
        ("f32", 128): [(16, 32, 8, 2), (16, 16, 4, 2)],
        ("f32", 256): [(16, 16, 4, 2), (16, 16, 8, 2)],
    },
    "dq": {
        ("lp", 64): [(128, 32, 8, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3),
                     (32, 32, 4, 2)],
        ("lp", 128): [(128, 32, 8, 3), (128, 16, 8, 3), (64, 32, 8, 3), (64, 16, 4, 3), (32, 32, 4, 2)],
        ("lp", 256): [(32, 16, 4, 2), (32, 32, 8, 2)],
        ("f32", 64): [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
        ("f32", 128): [(64, 16, 8, 2), (32, 16, 4, 2), (16, 16, 4, 2)],
        ("f32", 256): [(16, 16, 4, 2), (32, 16, 8, 2)],
    },
    "dq_seg": {  # (BLOCK_M: a sub-tile of the plan tile, BLOCK_N, warps, stages)
        ("lp", 64): [(64, 32, 4, 3), (64, 64, 4, 3), (64, 16, 4, 3), (64, 32, 8, 2)],
        ("lp", 128): [(64, 16, 4, 3), (64, 32, 8, 2), (64, 16, 8, 3), (64, 32, 8, 3)],
        ("lp", 256): [(64, 16, 8, 2), (32, 16, 4, 2), (32, 32, 8, 2)],  # (64, 16, 4, 3) spills 128 B
        ("f32", 64): [(64, 32, 8, 2), (64, 16, 4, 2), (32, 16, 4, 2)],
        ("f32", 128): [(32, 16, 8, 2), (16, 16, 4, 2)],  # 64 rows on 8 warps / 32 on 4 spill 20-30 B
        ("f32", 256): [(16, 16, 4, 2), (32, 16, 8, 2), (16, 16, 8, 2)],  # 64 rows spilled 1.5 KB
    },
}
# the block a segment kernel owns: a sub-tile of the plan's block_m rows (_seg_grid)
_SEG_OWNED = {"fwd_seg": "BLOCK_M", "dkdv_seg": "BLOCK_N", "dq_seg": "BLOCK_M"}


def _entry_meta(kind, entry):
    return {"BLOCK_M": entry[0], "BLOCK_N": entry[1]}, entry[2], entry[3]


def _configs(kind):
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    seen, out = set(), []
    for entries in _TABLES[kind].values():
        for e in entries:
            meta, w, st = _entry_meta(kind, e)
            key = (tuple(sorted(meta.items())), w, st)
            if key not in seen:
                seen.add(key)
                out.append(triton.Config(meta, num_warps=w, num_stages=st))
    return out


def _arg(named_args, kwargs, name):
    return kwargs[name] if name in kwargs else named_args[name]


def _pruner(kind):
    """early_config_prune: keep the table's entries for this precision and head-dim
    bucket, without tiles far taller than the sequences (at least one survives)."""

    def prune(configs, named_args, **kwargs):
        prec = "f32" if _arg(named_args, kwargs, "DOT_PREC") == "ieee" else "lp"
        dmax = max(_arg(named_args, kwargs, "BLOCK_D"), _arg(named_args, kwargs, "BLOCK_DV"))
        bucket = 64 if dmax <= 64 else (128 if dmax <= 128 else 256)
        wanted = set()
        for e in _TABLES[kind][(prec, bucket)]:
            meta, w, st = _entry_meta(kind, e)
            wanted.add((tuple(sorted(meta.items())), w, st))
        keep = [c for c in configs if (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) in wanted]
        if kind in _SEG_OWNED:
            # the owned block must divide the plan tile (a power of two >= 16); a plan tile smaller
            # than a table entry's gets the entry with its owned block cut to the plan tile (fewer rows:
            # fewer registers, so it still fits)
            seg, owned = _arg(named_args, kwargs, "BLOCK_SEG"), _SEG_OWNED[kind]
            fit, seen = [], set()
            for c in keep:
                meta = dict(c.kwargs)
                meta[owned] = min(meta[owned], seg)
                key = (tuple(sorted(meta.items())), c.num_warps, c.num_stages)
                if key not in seen:
                    seen.add(key)
                    fit.append(c if meta == c.kwargs else
                               triton.Config(meta, num_warps=c.num_warps, num_stages=c.num_stages))
            keep = fit
        else:  # short sequences: drop tiles > 2x the length class
            lq, lk = _arg(named_args, kwargs, "LQ_CLASS"), _arg(named_args, kwargs, "LK_CLASS")
            owned, other = ("BLOCK_N", "BLOCK_M") if kind == "dkdv" else ("BLOCK_M", "BLOCK_N")
            l_own, l_other = (lk, lq) if kind == "dkdv" else (lq, lk)
            short = [c for c in keep if c.kwargs[owned] <= 2 * l_own and c.kwargs[other] <= 2 * l_other]
            keep = short or sorted(keep, key=lambda c: c.kwargs[owned] * c.kwargs[other])[:1]
        return keep or configs[-1:]

    return prune


_KEY = ["BLOCK_D", "BLOCK_DV", "LQ_CLASS", "LK_CLASS", "CAUSAL", "DOT_PREC"]
_SEG_KEY = ["BLOCK_D", "BLOCK_DV", "BLOCK_SEG", "DOT_PREC"]


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q,
    k_base, v_base, skn, svn,
    rows, offs_n, offs_d, offs_dv,
    lo, hi, len_k, qk_scale, D: tl.constexpr, DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, SCALE_NONNEG: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Key tiles [lo, hi) of one query tile; MASKED adds key-bounds and causal masks."""
    k_offs = offs_n[:, None] * skn + offs_d[None, :]
    v_offs = offs_n[:, None] * svn + offs_dv[None, :]
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    for start_n in range(lo, hi, BLOCK_N):
        start64 = tl.cast(start_n, tl.int64)
        cols = start_n + offs_n
        # -- S = Q K^T -------------------------------------------------------------
        if MASKED:
            col_ok = cols < len_k
            k = tl.load(k_base + start64 * skn + k_offs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        else:
            if EVEN_D:
                k = tl.load(k_base + start64 * skn + k_offs)
            else:
                k = tl.load(k_base + start64 * skn + k_offs, mask=d_ok[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        # -- online softmax (log2 domain) ------------------------------------------
        if MASKED:
            valid = col_ok[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            qk = tl.where(valid, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            if SCALE_NONNEG:
                # max commutes with a non-negative scale: one FMA per score
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                qk = qk * qk_scale - m_new[:, None]
            else:
                qk = qk * qk_scale
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                qk = qk - m_new[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        # -- O += P V --------------------------------------------------------------
        if MASKED:
            v = tl.load(v_base + start64 * svn + v_offs, mask=col_ok[:, None] & dv_ok[None, :], other=0.0)
        else:
            if EVEN_DV:
                v = tl.load(v_base + start64 * svn + v_offs)
            else:
                v = tl.load(v_base + start64 * svn + v_offs, mask=dv_ok[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, PTR, PLAN,
    sqb, sqm, sqh, skb, skn, skh, svb, svn, svh,
    sob, som, soh, slb, slm, slh,
    H, Lq, Lk, qk_scale,
    LQ_CLASS, LK_CLASS,
    CAUSAL: tl.constexpr, IS_SEGMENT: tl.constexpr, SCALE_NONNEG: tl.constexpr,
    BLOCK_SEG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    # -- which tile: base offsets (int64), local query start, lengths -----------------
    if IS_SEGMENT:
        # BLOCK_SEG // BLOCK_M programs share one plan tile (see _seg_grid)
        sub = pid % (BLOCK_SEG // BLOCK_M)
        tile = pid // (BLOCK_SEG // BLOCK_M) // H
        h = pid // (BLOCK_SEG // BLOCK_M) % H
        seg = tl.load(PLAN + 2 * tile)
        row0 = tl.load(PLAN + 2 * tile + 1).to(tl.int64)
        seg_lo = tl.load(PTR + seg)
        len_q = (tl.load(PTR + seg + 1) - seg_lo).to(tl.int32)
        len_k = len_q
        start_m = (row0 - seg_lo).to(tl.int32) + sub * BLOCK_M
        q_base = Q + seg_lo * sqm
        k_base = K + seg_lo * skn
        v_base = V + seg_lo * svn
        o_base = O + seg_lo * som
        l_base = LSE + seg_lo * slm
    else:
        n_m = tl.cdiv(Lq, BLOCK_M)
        pid_m = pid % n_m
        bh = pid // n_m
        if CAUSAL:  # heaviest (longest-row) tiles of each head first
            pid_m = n_m - 1 - pid_m
        b = (bh // H).to(tl.int64)
        h = bh % H
        len_q = Lq
        len_k = Lk
        start_m = pid_m * BLOCK_M
        q_base = Q + b * sqb
        k_base = K + b * skb
        v_base = V + b * svb
        o_base = O + b * sob
        l_base = LSE + b * slb
    h64 = h.to(tl.int64)
    m64 = start_m.to(tl.int64)
    q_base = q_base + h64 * sqh + m64 * sqm
    k_base = k_base + h64 * skh
    v_base = v_base + h64 * svh
    o_base = o_base + h64 * soh + m64 * som
    l_base = l_base + h64 * slh + m64 * slm

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = start_m + offs_m
    row_ok = rows < len_q

    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    # Key tiles [0, full_hi) need no mask; [full_hi, hi) hold the causal diagonal
    # and the ragged tail. The first tile visited always holds key 0, which every
    # row may see, so m_i is finite after it (no -inf - -inf).
    if CAUSAL:
        hi = tl.minimum(len_k, start_m + BLOCK_M)
        full_hi = (tl.minimum(start_m, len_k) // BLOCK_N) * BLOCK_N
    else:
        # a sub-tile past its segment's end (IS_SEGMENT) visits no key and stores nothing
        hi = tl.where(start_m < len_q, len_k, 0)
        full_hi = (hi // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, skn, svn, rows, offs_n, offs_d, offs_dv,
        0, full_hi, len_k, qk_scale, D, DV,
        BLOCK_N, False, CAUSAL, SCALE_NONNEG, EVEN_D, EVEN_DV, DOT_PREC)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, skn, svn, rows, offs_n, offs_d, offs_dv,
        full_hi, hi, len_k, qk_scale, D, DV,
        BLOCK_N, True, CAUSAL, SCALE_NONNEG, EVEN_D, EVEN_DV, DOT_PREC)

    # -- epilogue: a row that saw no key (l_i = 0) gets out 0 and lse -inf ------------
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    tl.store(o_base + offs_m[:, None] * som + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv < DV)[None, :])
    tl.store(l_base + offs_m * slm, lse, mask=row_ok)


_fwd_dense = triton.autotune(configs=_configs("fwd"), key=_KEY,
                             prune_configs_by={"early_config_prune": _pruner("fwd")})(_fwd_kernel)
_fwd_segment = triton.autotune(configs=_configs("fwd_seg"), key=_SEG_KEY,
                               prune_configs_by={"early_config_prune": _pruner("fwd_seg")})(_fwd_kernel)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess(
    O, DO, GLSE, DELTA,
    sob, som, soh, sdob, sdom, sdoh, sgb, sgm, sgh, sdb, sdm, sdh,
    H, L, DV: tl.constexpr,
    HAS_GLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Delta = rowsum(dO * O) - grad_lse, float32, one program per (row tile, head)."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(L, BLOCK_M)
    pid_m = pid % n_m
    bh = pid // n_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < L
    mask = row_ok[:, None] & (offs_dv < DV)[None, :]
    o = tl.load(O + b * sob + h * soh + rows[:, None] * som + offs_dv[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + rows[:, None] * sdom + offs_dv[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    if HAS_GLSE:
        delta -= tl.load(GLSE + b * sgb + h * sgh + rows * sgm, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(DELTA + b * sdb + h * sdh + rows * sdm, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v,
    q_base, do_base, l_base, dl_base, sqm, sdom, slm, sdlm,
    cols, offs_m, offs_d, offs_dv,
    lo, hi, len_q, qk_scale, D: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Query tiles [lo, hi) against one key tile; accumulates dK (unscaled) and dV.

    Works on the transposed tile (keys x queries) so the key tile stays the M side
    of every tl.dot. A query row outside [0, len_q) loads lse = +inf, so its P is 0.
    """
    q_offs = offs_m[:, None] * sqm + offs_d[None, :]
    do_offs = offs_m[:, None] * sdom + offs_dv[None, :]
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    for start_m in range(lo, hi, BLOCK_M):
        start64 = tl.cast(start_m, tl.int64)
        rows = start_m + offs_m
        if MASKED:
            row_ok = rows < len_q
            q = tl.load(q_base + start64 * sqm + q_offs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(do_base + start64 * sdom + do_offs, mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
            lse = tl.load(l_base + (start64 + offs_m) * slm, mask=row_ok, other=float("inf"))
            delta = tl.load(dl_base + (start64 + offs_m) * sdlm, mask=row_ok, other=0.0)
        else:
            if EVEN_D:
                q = tl.load(q_base + start64 * sqm + q_offs)
            else:
                q = tl.load(q_base + start64 * sqm + q_offs, mask=d_ok[None, :], other=0.0)
            if EVEN_DV:
                do = tl.load(do_base + start64 * sdom + do_offs)
            else:
                do = tl.load(do_base + start64 * sdom + do_offs, mask=dv_ok[None, :], other=0.0)
            lse = tl.load(l_base + (start64 + offs_m) * slm)
            delta = tl.load(dl_base + (start64 + offs_m) * sdlm)
        # A row without any key has lse -inf (exp(s - lse) would be inf, then NaN): +inf stands
        # in for it as for the padded rows, so its P is 0. One select per query row and tile.
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        # P^T = exp(S^T - lse), recomputed in the log2 domain
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
        sT = qkT * qk_scale - (lse * 1.4426950408889634)[None, :]
        if MASKED:
            if CAUSAL:  # mask before exp2: no inf from scores above a row's lse
                sT = tl.where(rows[None, :] >= cols[:, None], sT, float("-inf"))
        pT = tl.math.exp2(sT)
        # dV += P^T dO
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        # dS^T = P^T * (dP^T - Delta), dP^T = V dO^T
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])
        # dK += dS^T Q   (times scale, applied once at the end)
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_OUT, PTR, PLAN,
    sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, sdob, sdom, sdoh,
    slb, slm, slh, sdlb, sdlm, sdlh,
    sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
    H, Lq, Lk, qk_scale, scale,
    LQ_CLASS, LK_CLASS,
    CAUSAL: tl.constexpr, IS_SEGMENT: tl.constexpr, BLOCK_SEG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """One program owns one key tile of one head and loops over the query tiles."""
    pid = tl.program_id(0)
    if IS_SEGMENT:
        # BLOCK_SEG // BLOCK_N programs share one plan tile (see _seg_grid)
        sub = pid % (BLOCK_SEG // BLOCK_N)
        tile = pid // (BLOCK_SEG // BLOCK_N) // H
        h = pid // (BLOCK_SEG // BLOCK_N) % H
        seg = tl.load(PLAN + 2 * tile)
        row0 = tl.load(PLAN + 2 * tile + 1).to(tl.int64)
        seg_lo = tl.load(PTR + seg)
        len_q = (tl.load(PTR + seg + 1) - seg_lo).to(tl.int32)
        len_k = len_q
        start_n = (row0 - seg_lo).to(tl.int32) + sub * BLOCK_N
        q_base = Q + seg_lo * sqm
        k_base = K + seg_lo * skn
        v_base = V + seg_lo * svn
        do_base = DO + seg_lo * sdom
        l_base = LSE + seg_lo * slm
        dl_base = DELTA + seg_lo * sdlm
        dk_base = DK + seg_lo * sdkn
        dv_base = DV_OUT + seg_lo * sdvn
    else:
        n_n = tl.cdiv(Lk, BLOCK_N)
        pid_n = pid % n_n
        bh = pid // n_n
        b = (bh // H).to(tl.int64)
        h = bh % H
        len_q = Lq
        len_k = Lk
        start_n = pid_n * BLOCK_N
        q_base = Q + b * sqb
        k_base = K + b * skb
        v_base = V + b * svb
        do_base = DO + b * sdob
        l_base = LSE + b * slb
        dl_base = DELTA + b * sdlb
        dk_base = DK + b * sdkb
        dv_base = DV_OUT + b * sdvb
    h64 = h.to(tl.int64)
    n64 = start_n.to(tl.int64)
    q_base = q_base + h64 * sqh
    do_base = do_base + h64 * sdoh
    l_base = l_base + h64 * slh
    dl_base = dl_base + h64 * sdlh
    k_base = k_base + h64 * skh + n64 * skn
    v_base = v_base + h64 * svh + n64 * svn
    dk_base = dk_base + h64 * sdkh + n64 * sdkn
    dv_base = dv_base + h64 * sdvh + n64 * sdvn

    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    cols = start_n + offs_n
    col_ok = cols < len_k
    k_mask = col_ok[:, None] & (offs_d < D)[None, :]
    v_mask = col_ok[:, None] & (offs_dv < DV)[None, :]
    # Key rows past len_k load as 0. They need no mask in the loop: each dK/dV row
    # depends only on its own key row, and those rows are never stored.
    k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=k_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :], mask=v_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    if CAUSAL:
        # Queries r < start_n see none of these keys. The diagonal rows
        # [start_n, start_n + BLOCK_N) run masked, in BLOCK_M steps
        # (BLOCK_N % BLOCK_M == 0, so the stage ends exactly at start_n + BLOCK_N).
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, l_base, dl_base, sqm, sdom, slm, sdlm,
            cols, offs_m, offs_d, offs_dv,
            start_n, tl.minimum(start_n + BLOCK_N, len_q), len_q, qk_scale, D, DV,
            BLOCK_M, True, True, EVEN_D, EVEN_DV, DOT_PREC)
        lo = start_n + BLOCK_N
    else:
        lo = 0
    # a key sub-tile past its segment's end (IS_SEGMENT) visits no query and stores nothing
    q_hi = tl.where(start_n < len_k, len_q, 0)
    n_full = (tl.maximum(q_hi - lo, 0) // BLOCK_M) * BLOCK_M
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, l_base, dl_base, sqm, sdom, slm, sdlm,
        cols, offs_m, offs_d, offs_dv,
        lo, lo + n_full, len_q, qk_scale, D, DV,
        BLOCK_M, False, False, EVEN_D, EVEN_DV, DOT_PREC)
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, l_base, dl_base, sqm, sdom, slm, sdlm,
        cols, offs_m, offs_d, offs_dv,
        lo + n_full, q_hi, len_q, qk_scale, D, DV,
        BLOCK_M, True, False, EVEN_D, EVEN_DV, DOT_PREC)

    dk = dk * scale
    tl.store(dk_base + offs_n[:, None] * sdkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=k_mask)
    tl.store(dv_base + offs_n[:, None] * sdvn + offs_dv[None, :], dv.to(DV_OUT.dtype.element_ty), mask=v_mask)


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse2, delta,
    k_base, v_base, skn, svn,
    rows, offs_n, offs_d, offs_dv,
    lo, hi, len_k, qk_scale, D: tl.constexpr, DV: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Key tiles [lo, hi) for one query tile; accumulates dQ (unscaled)."""
    k_offs = offs_n[:, None] * skn + offs_d[None, :]
    v_offs = offs_n[:, None] * svn + offs_dv[None, :]
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    for start_n in range(lo, hi, BLOCK_N):
        start64 = tl.cast(start_n, tl.int64)
        cols = start_n + offs_n
        if MASKED:
            col_ok = cols < len_k
            k = tl.load(k_base + start64 * skn + k_offs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(v_base + start64 * svn + v_offs, mask=col_ok[:, None] & dv_ok[None, :], other=0.0)
        else:
            if EVEN_D:
                k = tl.load(k_base + start64 * skn + k_offs)
            else:
                k = tl.load(k_base + start64 * skn + k_offs, mask=d_ok[None, :], other=0.0)
            if EVEN_DV:
                v = tl.load(v_base + start64 * svn + v_offs)
            else:
                v = tl.load(v_base + start64 * svn + v_offs, mask=dv_ok[None, :], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        s = qk * qk_scale - lse2[:, None]
        if MASKED:
            valid = col_ok[None, :]
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        p = tl.math.exp2(s)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, PTR, PLAN,
    sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, sdob, sdom, sdoh,
    slb, slm, slh, sdlb, sdlm, sdlh, sdqb, sdqm, sdqh,
    H, Lq, Lk, qk_scale, scale,
    LQ_CLASS, LK_CLASS,
    CAUSAL: tl.constexpr, IS_SEGMENT: tl.constexpr, BLOCK_SEG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """One program owns one query tile of one head and loops over the key tiles."""
    pid = tl.program_id(0)
    if IS_SEGMENT:
        # BLOCK_SEG // BLOCK_M programs share one plan tile (see _seg_grid)
        sub = pid % (BLOCK_SEG // BLOCK_M)
        tile = pid // (BLOCK_SEG // BLOCK_M) // H
        h = pid // (BLOCK_SEG // BLOCK_M) % H
        seg = tl.load(PLAN + 2 * tile)
        row0 = tl.load(PLAN + 2 * tile + 1).to(tl.int64)
        seg_lo = tl.load(PTR + seg)
        len_q = (tl.load(PTR + seg + 1) - seg_lo).to(tl.int32)
        len_k = len_q
        start_m = (row0 - seg_lo).to(tl.int32) + sub * BLOCK_M
        q_base = Q + seg_lo * sqm
        k_base = K + seg_lo * skn
        v_base = V + seg_lo * svn
        do_base = DO + seg_lo * sdom
        l_base = LSE + seg_lo * slm
        dl_base = DELTA + seg_lo * sdlm
        dq_base = DQ + seg_lo * sdqm
    else:
        n_m = tl.cdiv(Lq, BLOCK_M)
        pid_m = pid % n_m
        bh = pid // n_m
        if CAUSAL:
            pid_m = n_m - 1 - pid_m
        b = (bh // H).to(tl.int64)
        h = bh % H
        len_q = Lq
        len_k = Lk
        start_m = pid_m * BLOCK_M
        q_base = Q + b * sqb
        k_base = K + b * skb
        v_base = V + b * svb
        do_base = DO + b * sdob
        l_base = LSE + b * slb
        dl_base = DELTA + b * sdlb
        dq_base = DQ + b * sdqb
    h64 = h.to(tl.int64)
    m64 = start_m.to(tl.int64)
    q_base = q_base + h64 * sqh + m64 * sqm
    do_base = do_base + h64 * sdoh + m64 * sdom
    l_base = l_base + h64 * slh + m64 * slm
    dl_base = dl_base + h64 * sdlh + m64 * sdlm
    dq_base = dq_base + h64 * sdqh + m64 * sdqm
    k_base = k_base + h64 * skh
    v_base = v_base + h64 * svh

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = start_m + offs_m
    row_ok = rows < len_q
    q_mask = row_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * sdom + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
    # rows past len_q, and rows without any key (lse -inf): lse = +inf makes their P exactly 0
    lse = tl.load(l_base + offs_m * slm, mask=row_ok, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(dl_base + offs_m * sdlm, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        hi = tl.minimum(len_k, start_m + BLOCK_M)
        full_hi = (tl.minimum(start_m, len_k) // BLOCK_N) * BLOCK_N
    else:
        # a sub-tile past its segment's end (IS_SEGMENT) visits no key and stores nothing
        hi = tl.where(start_m < len_q, len_k, 0)
        full_hi = (hi // BLOCK_N) * BLOCK_N
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, k_base, v_base, skn, svn, rows, offs_n, offs_d, offs_dv,
        0, full_hi, len_k, qk_scale, D, DV,
        BLOCK_N, False, CAUSAL, EVEN_D, EVEN_DV, DOT_PREC)
    dq = _bwd_dq_inner(
        dq, q, do, lse2, delta, k_base, v_base, skn, svn, rows, offs_n, offs_d, offs_dv,
        full_hi, hi, len_k, qk_scale, D, DV,
        BLOCK_N, True, CAUSAL, EVEN_D, EVEN_DV, DOT_PREC)
    dq = dq * scale
    tl.store(dq_base + offs_m[:, None] * sdqm + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)


_dkdv_dense = triton.autotune(configs=_configs("dkdv"), key=_KEY,
                              prune_configs_by={"early_config_prune": _pruner("dkdv")})(_bwd_dkdv_kernel)
_dkdv_segment = triton.autotune(configs=_configs("dkdv_seg"), key=_SEG_KEY,
                                prune_configs_by={"early_config_prune": _pruner("dkdv_seg")})(_bwd_dkdv_kernel)
_dq_dense = triton.autotune(configs=_configs("dq"), key=_KEY,
                            prune_configs_by={"early_config_prune": _pruner("dq")})(_bwd_dq_kernel)
_dq_segment = triton.autotune(configs=_configs("dq_seg"), key=_SEG_KEY,
                              prune_configs_by={"early_config_prune": _pruner("dq_seg")})(_bwd_dq_kernel)


# --------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _pad_dim(d):
    return max(16, triton.next_power_of_2(d))


def _len_class(n):
    """Autotuning bucket for a sequence length (power of two, 16..8192)."""
    return min(max(16, triton.next_power_of_2(max(int(n), 1))), 8192)


def _dot_precision(dtype):
    # float32: exact fp32 products ("ieee"), not TF32 -- correctness over speed.
    return "ieee" if dtype == torch.float32 else "tf32"


# The largest tile, in rows of the sequence (node) dim: dense BLOCK_M / BLOCK_N <= 128,
# segment block_m <= 256.
_MAX_TILE_ROWS = 256
_INT32_LIMIT = 2**31
# The largest H * max(D, Dv) the kernels take: a tile's int32 element offsets reach
# _MAX_TILE_ROWS contiguous rows of it (see _kernel_layout).
MAX_ROW_ELEMENTS = (_INT32_LIMIT - MAX_HEAD_DIM) // _MAX_TILE_ROWS - 1


def _kernel_layout(t, row_dim=-3):
    """``t`` as the kernels address it; copied only when it is not already so.

    * q, k, v, out, grad_out (``row_dim=-3``): stride 1 on the last dim.
    * 64-bit offsets: a tile's base (batch, head, first row: ``b * sb + h * sh + m * sm``) is
      computed in int64, the offsets of its elements (``r * sm + d`` for r < the tile's rows)
      in int32 (one register each, as the dots and loads of the hot loops want them). Those
      must fit: ``_MAX_TILE_ROWS * stride(row_dim)`` < 2^31. A view with a huge row stride
      (e.g. sequence-first [L, B, H, D] permuted to [B, L, H, D] with B * H * D > 2^23) is
      copied to a contiguous tensor, whose row stride H * D fits (_check_qkv).
    """
    bad_last = row_dim == -3 and t.shape[-1] > 1 and t.stride(-1) != 1
    row_stride = abs(t.stride(row_dim)) if t.shape[row_dim] > 1 else 0
    if bad_last or _MAX_TILE_ROWS * row_stride + MAX_HEAD_DIM >= _INT32_LIMIT:
        return t.contiguous()
    return t


def _check_qkv(q, k, v, rank, what):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{what}: {name} must have {rank} dims, got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{what}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{what}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{what}: q, k, v must be on one device")
    d, dv = q.shape[-1], v.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"{what}: k head dim {k.shape[-1]} != q head dim {d}")
    if not (1 <= d <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
        raise ValueError(f"{what}: head dims must be in 1..{MAX_HEAD_DIM}, got D={d}, Dv={dv}")
    heads = q.shape[-2]
    if heads * max(d, dv) > MAX_ROW_ELEMENTS:  # see _kernel_layout
        raise ValueError(f"{what}: H * head dim = {heads} * {max(d, dv)} is too large for the Triton kernels "
                         f"(at most {MAX_ROW_ELEMENTS})")


def _scale_of(scale, d):
    return 1.0 / math.sqrt(d) if scale is None else float(scale)


def _common_meta(q, v, scale):
    d, dv = q.shape[-1], v.shape[-1]
    bd, bdv = _pad_dim(d), _pad_dim(dv)
    # D and Dv are compile-time constants: a model has few head dims, and a constant
    # bound lets the compiler vectorise the masked loads of a padded (non power of
    # two) head dim.
    return dict(D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, EVEN_D=(bd == d), EVEN_DV=(bdv == dv),
                DOT_PREC=_dot_precision(q.dtype))


def _glse_or_none(grad_lse, lse):
    if grad_lse is None:
        return None
    if grad_lse.shape != lse.shape:
        raise ValueError(f"grad_lse must have the shape of lse {tuple(lse.shape)}, got {tuple(grad_lse.shape)}")
    return grad_lse.float()


def _delta(out, grad_out, grad_lse, B, L, H):
    """Delta [B, L, H] float32; out/grad_out viewed as [B, L, H, Dv]."""
    dv = out.shape[-1]
    delta = torch.empty((B, L, H), device=out.device, dtype=torch.float32)
    if delta.numel() == 0:
        return delta
    block_m = 16 if _INTERPRET else 64
    g = grad_lse if grad_lse is not None else delta  # dummy pointer when absent
    _bwd_preprocess[(triton.cdiv(L, block_m) * B * H,)](
        out, grad_out, g, delta,
        out.stride(0), out.stride(1), out.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        g.stride(0), g.stride(1), g.stride(2),
        delta.stride(0), delta.stride(1), delta.stride(2),
        H, L, dv,
        HAS_GLSE=grad_lse is not None, BLOCK_M=block_m, BLOCK_DV=_pad_dim(dv),
        num_warps=4,
    )
    return delta


def _on_tensor_device(fn):
    """Launch on the device of the first CUDA tensor argument (Triton launches on the
    current device and its current stream)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_cuda:
                with torch.cuda.device(a.device):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------
# Dense launchers
# --------------------------------------------------------------------------------------


@_on_tensor_device
def dense_attention_forward(q, k, v, scale, causal):
    """Flash attention forward. q [B, Lq, H, D], k [B, Lk, H, D], v [B, Lk, H, Dv].

    Returns ``(out [B, Lq, H, Dv] in q.dtype, contiguous; lse [B, Lq, H] float32)``.
    ``causal`` is top-left aligned (query r sees keys c <= r), as SDPA's is_causal.
    """
    _check_qkv(q, k, v, 4, "dense_attention_forward")
    B, Lq, H, D = q.shape
    Lk, Dv = k.shape[1], v.shape[-1]
    if k.shape[:3] != (B, Lk, H) or v.shape[:3] != (B, Lk, H):
        raise ValueError(f"dense_attention_forward: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not match [B, Lq, H, D], [B, Lk, H, D], [B, Lk, H, Dv]")
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    scale = _scale_of(scale, D)
    out = torch.empty((B, Lq, H, Dv), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, Lq, H), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if Lk == 0:  # nothing to attend to
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]) * B * H,)  # noqa: E731
    _fwd_dense[grid](
        q, k, v, out, lse, lse, lse,  # PTR/PLAN unused in dense mode
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
        H, Lq, Lk, scale * LOG2E,
        _len_class(Lq), _len_class(Lk),
        CAUSAL=bool(causal), IS_SEGMENT=False, SCALE_NONNEG=scale >= 0, BLOCK_SEG=0,
        **_common_meta(q, v, scale),
    )
    return out, lse


@_on_tensor_device
def dense_attention_backward(grad_out, grad_lse, q, k, v, out, lse, scale, causal):
    """Gradients of :func:`dense_attention_forward`. Returns ``(dq, dk, dv)``.

    ``grad_lse`` is None or float32 [B, Lq, H] (the gradient flowing into lse).
    Deterministic: dK/dV and dQ come from separate kernels, no atomics.
    """
    _check_qkv(q, k, v, 4, "dense_attention_backward")
    B, Lq, H, D = q.shape
    Lk, Dv = k.shape[1], v.shape[-1]
    if grad_out.shape != (B, Lq, H, Dv) or out.shape != (B, Lq, H, Dv):
        raise ValueError("dense_attention_backward: grad_out and out must have shape "
                         f"{(B, Lq, H, Dv)}, got {tuple(grad_out.shape)} and {tuple(out.shape)}")
    if lse.shape != (B, Lq, H):
        raise ValueError(f"dense_attention_backward: lse must have shape {(B, Lq, H)}, got {tuple(lse.shape)}")
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    out, grad_out = _kernel_layout(out), _kernel_layout(grad_out.to(q.dtype))
    lse = _kernel_layout(lse, row_dim=-2)
    grad_lse = _glse_or_none(grad_lse, lse)
    scale = _scale_of(scale, D)
    dq = torch.empty((B, Lq, H, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, Lk, H, D), device=q.device, dtype=q.dtype)
    dv = torch.empty((B, Lk, H, Dv), device=q.device, dtype=q.dtype)
    if B * H == 0:
        return dq, dk, dv
    if Lq == 0 or Lk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = _delta(out, grad_out, grad_lse, B, Lq, H)
    meta = _common_meta(q, v, scale)
    common = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
    )
    sizes = (H, Lq, Lk, scale * LOG2E, scale, _len_class(Lq), _len_class(Lk))
    grid_kv = lambda m: (triton.cdiv(Lk, m["BLOCK_N"]) * B * H,)  # noqa: E731
    _dkdv_dense[grid_kv](
        q, k, v, grad_out, lse, delta, dk, dv, lse, lse,
        *common,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        *sizes,
        CAUSAL=bool(causal), IS_SEGMENT=False, BLOCK_SEG=0, **meta,
    )
    grid_q = lambda m: (triton.cdiv(Lq, m["BLOCK_M"]) * B * H,)  # noqa: E731
    _dq_dense[grid_q](
        q, k, v, grad_out, lse, delta, dq, lse, lse,
        *common,
        dq.stride(0), dq.stride(1), dq.stride(2),
        *sizes,
        CAUSAL=bool(causal), IS_SEGMENT=False, BLOCK_SEG=0, **meta,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------
# Segment (block-diagonal) launchers
# --------------------------------------------------------------------------------------


def build_segment_plan(ptr, BLOCK_M=SEGMENT_BLOCK_M, *, num_nodes=None):
    """Tile schedule for segment attention: int32 tensor ``[T, 2]`` on ptr's device (int64
    when there are 2^31 nodes or more).

    Row ``t`` is ``(segment s, first node of the tile)``; the tile covers nodes
    ``[start, min(start + BLOCK_M, ptr[s + 1]))``. Every non-empty segment gets
    ``ceil(size / BLOCK_M)`` tiles, empty segments none. Tiles are ordered by segment
    size, largest first, so the longest programs start first (better tail balance on
    ragged batches). Host-side planning (one device->host copy of ``ptr``); cache the
    result and pass it as ``plan=`` together with the same ``block_m`` to the
    segment launchers. ``num_nodes``, when given, must equal ``ptr[-1]``.
    """
    if not isinstance(ptr, torch.Tensor) or ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError("ptr must be a 1-D integer tensor [S + 1] of segment offsets")
    if ptr.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ptr must be int64 or int32, got {ptr.dtype}")
    BLOCK_M = int(BLOCK_M)
    if BLOCK_M < 16 or BLOCK_M & (BLOCK_M - 1):
        raise ValueError(f"BLOCK_M must be a power of two >= 16, got {BLOCK_M}")
    p = ptr.detach().to("cpu", torch.int64)
    sizes = p[1:] - p[:-1]
    if int(p[0]) != 0 or (sizes < 0).any():
        raise ValueError("ptr must start at 0 and be non-decreasing")
    if num_nodes is not None and int(p[-1]) != int(num_nodes):
        raise ValueError(f"ptr[-1] = {int(p[-1])} must equal the number of nodes {int(num_nodes)}")
    nblk = (sizes + BLOCK_M - 1) // BLOCK_M
    total = int(nblk.sum())
    seg = torch.repeat_interleave(torch.arange(sizes.numel(), dtype=torch.int64), nblk, output_size=total)
    first = torch.cumsum(nblk, 0) - nblk
    start = p[seg] + (torch.arange(total, dtype=torch.int64) - first[seg]) * BLOCK_M
    order = torch.sort(sizes[seg], descending=True, stable=True).indices
    # int32 halves the table; node numbers from 2^31 on need int64 (the kernels read either).
    index_dtype = torch.int32 if int(p[-1]) < _INT32_LIMIT else torch.int64
    plan = torch.stack([seg[order], start[order]], dim=1).to(index_dtype)
    return plan.to(ptr.device)


def _seg_prepare(q, k, v, ptr, plan, block_m, what):
    _check_qkv(q, k, v, 3, what)
    N, H, D = q.shape
    if k.shape[:2] != (N, H) or v.shape[:2] != (N, H):
        raise ValueError(f"{what}: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "do not match [N, H, D], [N, H, D], [N, H, Dv]")
    if not isinstance(ptr, torch.Tensor) or ptr.dim() != 1 or ptr.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: ptr must be a 1-D int64 tensor of segment offsets")
    block_m = SEGMENT_BLOCK_M if block_m is None else int(block_m)
    if block_m < 16 or block_m > 256 or block_m & (block_m - 1):
        raise ValueError(f"{what}: block_m must be a power of two in 16..256, got {block_m}")
    if plan is None:
        plan = build_segment_plan(ptr, block_m, num_nodes=N)
    if plan.dtype not in (torch.int32, torch.int64) or plan.dim() != 2 or plan.shape[1] != 2:
        raise ValueError(f"{what}: plan must be the int32 (int64) [T, 2] tensor from build_segment_plan")
    ptr = ptr.to(device=q.device, dtype=torch.int64)
    plan = plan.to(q.device)
    return ptr, plan, block_m


def _seg_grid(T, H, block_m, owned):
    """Grid of a segment kernel: each plan tile of block_m rows is split into block_m // meta[owned]
    sub-tiles, one program each (the register tile is the autotuned block, not the plan's)."""
    return lambda meta: (T * H * (block_m // meta[owned]),)


@_on_tensor_device
def segment_attention_forward(q, k, v, ptr, scale, *, plan=None, block_m=None):
    """Block-diagonal attention: q, k [N, H, D], v [N, H, Dv], ptr int64 [S + 1].

    Node i of segment s attends to every node of [ptr[s], ptr[s + 1]).
    Returns ``(out [N, H, Dv], lse [N, H] float32)``. ``plan`` is an optional cached
    :func:`build_segment_plan` (ptr, block_m) result; ``block_m`` defaults to
    ``SEGMENT_BLOCK_M`` and must equal the BLOCK_M the plan was built with (not
    checked). ``ptr[-1]`` must equal N; it is checked only when the plan is built
    here (a cached plan costs no device->host sync).
    """
    what = "segment_attention_forward"
    ptr, plan, block_m = _seg_prepare(q, k, v, ptr, plan, block_m, what)
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    N, H, D = q.shape
    Dv = v.shape[-1]
    scale = _scale_of(scale, D)
    out = torch.empty((N, H, Dv), device=q.device, dtype=q.dtype)
    lse = torch.empty((N, H), device=q.device, dtype=torch.float32)
    T = plan.shape[0]
    if T == 0 or H == 0:
        return out, lse
    _fwd_segment[_seg_grid(T, H, block_m, "BLOCK_M")](
        q, k, v, out, lse, ptr, plan,
        0, q.stride(0), q.stride(1), 0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1),
        0, out.stride(0), out.stride(1), 0, lse.stride(0), lse.stride(1),
        H, N, N, scale * LOG2E,
        _len_class(block_m), _len_class(block_m),
        CAUSAL=False, IS_SEGMENT=True, SCALE_NONNEG=scale >= 0, BLOCK_SEG=block_m,
        **_common_meta(q, v, scale),
    )
    return out, lse


@_on_tensor_device
def segment_attention_backward(grad_out, grad_lse, q, k, v, out, lse, ptr, scale, *, plan=None, block_m=None):
    """Gradients of :func:`segment_attention_forward`. Returns ``(dq, dk, dv)``."""
    what = "segment_attention_backward"
    ptr, plan, block_m = _seg_prepare(q, k, v, ptr, plan, block_m, what)
    N, H, D = q.shape
    Dv = v.shape[-1]
    if grad_out.shape != (N, H, Dv) or out.shape != (N, H, Dv):
        raise ValueError(f"{what}: grad_out and out must have shape {(N, H, Dv)}, "
                         f"got {tuple(grad_out.shape)} and {tuple(out.shape)}")
    if lse.shape != (N, H):
        raise ValueError(f"{what}: lse must have shape {(N, H)}, got {tuple(lse.shape)}")
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    out, grad_out = _kernel_layout(out), _kernel_layout(grad_out.to(q.dtype))
    lse = _kernel_layout(lse, row_dim=-2)
    grad_lse = _glse_or_none(grad_lse, lse)
    scale = _scale_of(scale, D)
    dq = torch.empty((N, H, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((N, H, D), device=q.device, dtype=q.dtype)
    dv = torch.empty((N, H, Dv), device=q.device, dtype=q.dtype)
    T = plan.shape[0]
    if T == 0 or H == 0:
        return dq, dk, dv
    delta = _delta(out.unsqueeze(0), grad_out.unsqueeze(0),
                   None if grad_lse is None else grad_lse.unsqueeze(0), 1, N, H)[0]
    meta = _common_meta(q, v, scale)
    common = (
        0, q.stride(0), q.stride(1), 0, k.stride(0), k.stride(1), 0, v.stride(0), v.stride(1),
        0, grad_out.stride(0), grad_out.stride(1),
        0, lse.stride(0), lse.stride(1), 0, delta.stride(0), delta.stride(1),
    )
    sizes = (H, N, N, scale * LOG2E, scale, _len_class(block_m), _len_class(block_m))
    _dkdv_segment[_seg_grid(T, H, block_m, "BLOCK_N")](
        q, k, v, grad_out, lse, delta, dk, dv, ptr, plan,
        *common,
        0, dk.stride(0), dk.stride(1), 0, dv.stride(0), dv.stride(1),
        *sizes,
        CAUSAL=False, IS_SEGMENT=True, BLOCK_SEG=block_m, **meta,
    )
    _dq_segment[_seg_grid(T, H, block_m, "BLOCK_M")](
        q, k, v, grad_out, lse, delta, dq, ptr, plan,
        *common,
        0, dq.stride(0), dq.stride(1),
        *sizes,
        CAUSAL=False, IS_SEGMENT=True, BLOCK_SEG=block_m, **meta,
    )
    return dq, dk, dv
