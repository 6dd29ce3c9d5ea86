"""Triton kernels for edge-softmax attention over a target-sorted CSR.

Layout of this file: schedule (``build_csr_plan``) -> @triton.jit kernels ->
launch heuristics -> the public launchers ``csr_attention_forward`` /
``csr_attention_backward`` (dot-product score) and
``csr_scored_attention_forward`` / ``csr_scored_attention_backward`` (the
sparse-path extras below).

Semantics (see shared/API.md): for target ``i`` and its incoming edges
``p in [rowptr[i], rowptr[i+1])`` with source ``j = col[p]``,

    s_p,h   = scale * <q[i,h,:], k[j,h,:]> + bias[eid[p], h]
    out[i,h] = sum_p softmax_p(s)_h * v[j,h,:]
    lse[i,h] = log(sum_p exp(s_p,h))        (float32, natural log)

A target without edges gets ``out = 0`` and ``lse = -inf`` (never NaN).

The sparse-path extras (graphattn/scored_ops.py has the backward formulas)
reuse the same kernels behind constexpr switches, so the dot path compiles to
the code it always had:

* ``SCORE`` 1, the additive score of GAT / GATv2:
  ``s = sum_d att[h,d] * LeakyReLU(q[i,h,d] + k[j,h,d]) + bias`` (GAT passes
  D = 1 and att = 1). ``q_i + k_j`` is formed per edge block in registers,
  never stored; ``datt`` is summed per target row (and per hub chunk) into a
  float32 ``[N_dst + num_slots, H, D]`` buffer reduced by torch afterwards.
* ``DROPOUT``: the keep bit of (edge_index column, head) is the hash of
  kernels/dropout_hash.py, regenerated in the forward and in both backward
  passes; ``lse`` stays that of the scores before dropout.
* ``HAS_GRAD_ALPHA``: the gradient of the returned weights enters ``ds``.
  The weights themselves come from a separate pass over the same work items
  once the final ``lse`` is known (``_csr_alpha_kernel``).

Work decomposition
------------------
* One program handles one *work item* for one block of ``HB`` heads: an item
  is ``(row, edge_start, edge_end, slot)``. It loads the target's query once
  and streams the item's edges in blocks of ``BLOCK_E``, gathering the
  ``[BLOCK_E, HB, D]`` key/value rows of all its heads at once (contiguous
  ``H*D`` elements per neighbour when the head stride is ``D``), with the
  online softmax in float32 registers.
* Rows are bucketed by degree (``DEGREE_CLASSES``): every class is one launch
  whose ``BLOCK_E`` fits the class, and short-row programs handle several rows
  each (``ITEMS_PER_PROG``).
* Hub rows (degree above ``hub_chunk``) are split into chunks of
  ``hub_chunk`` edges; each chunk is one item with ``slot >= 0`` that writes a
  float32 partial result into row ``slot`` of a small scratch buffer
  ``[num_slots, H, *]`` (``num_slots <= E / hub_chunk + #hubs``). A merge
  kernel then combines the partials of each hub row in a fixed order: through
  their lse for the forward, by summation for dQ / dK / dV.
* Backward: a preprocessing kernel computes ``Delta = rowsum(dO * O) -
  grad_lse`` ([N_dst, H] float32); the dQ pass walks the target-sorted CSR
  (and writes dbias); the dK/dV pass walks the source-sorted (transposed) CSR.
  Every output row is written by exactly one program (or merged from its
  chunks in a fixed order): deterministic, no atomics.

No ``[E, H, D]`` tensor is ever allocated. The only ``[E, H]`` tensors are
``dbias`` and ``alpha`` themselves, when they are asked for.
"""
import contextlib

import torch
import triton
import triton.language as tl

from graphattn import dropout as _dropout

# Imported for its effect under TRITON_INTERPRET=1 only: lets the interpreter take `range()`
# bounds that are runtime values (the edge loops below); the compiled path never sees it.
from . import interpreter_compat  # noqa: F401
from .dropout_hash import dropout_keep

__all__ = [
    "build_csr_plan",
    "csr_attention_forward",
    "csr_attention_backward",
    "csr_scored_attention_forward",
    "csr_scored_attention_backward",
    "DEGREE_CLASSES",
    "HUB_CHUNK",
]

# Item-length upper bounds of the short-row classes; rows longer than the last
# bound form the "long" class (which also holds the hub chunks).
DEGREE_CLASSES = (4, 16)
# Rows with more edges than this are split into chunks of this many edges.
HUB_CHUNK = 256

_LONG_BLOCK_E = 32  # BLOCK_E cap of the long class
_ITEMS_PER_PROG = (4, 2, 1)  # rows per program for each class (short -> long)
# Register budget, from ptxas resource usage of sm_90 builds (cuobjdump): once a
# thread holds more than ~8 elements of a [BLOCK_E, HB, D] tile, or a program
# covers more than 512 head elements, the kernels climb to 200-255 registers and
# spill (dK/dV first). Hence: heads split across programs above 512 elements per
# row, tiles of at most 2048 elements, one warp per 256 tile elements.
_ROW_BUDGET = 512  # max HB * max(D_PAD, DV_PAD) handled by one program
_TILE_BUDGET = 2048  # max elements of one [BLOCK_E, HB, max(D_PAD, DV_PAD)] tile
_ELEMS_PER_THREAD = 8

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------
def _plan_one(ptr: torch.Tensor, hub_chunk: int, prefix: str) -> dict:
    """Work items of one CSR (``ptr`` = row offsets)."""
    ptr = ptr.to(torch.int64)
    device = ptr.device
    n = ptr.numel() - 1
    deg = ptr[1:] - ptr[:-1]
    rows = torch.arange(n, device=device, dtype=torch.int64)
    plan = {}

    def whole_rows(sel):
        r = rows[sel]
        return torch.stack([r, ptr[r], ptr[r + 1], torch.full_like(r, -1)], dim=1)

    lo = -1  # class 0 also holds the rows without edges (they write 0 / -inf)
    for c, hi in enumerate(DEGREE_CLASSES):
        plan[f"{prefix}items{c}"] = whole_rows((deg > lo) & (deg <= hi)).contiguous()
        lo = hi
    rest = deg > lo
    mid_items = whole_rows(rest & (deg <= hub_chunk))
    hubs = rows[rest & (deg > hub_chunk)]
    n_chunks = (deg[hubs] + hub_chunk - 1) // hub_chunk
    merge_ptr = torch.zeros(hubs.numel() + 1, dtype=torch.int64, device=device)
    torch.cumsum(n_chunks, 0, out=merge_ptr[1:])
    num_slots = int(merge_ptr[-1]) if hubs.numel() else 0
    slot_row = torch.repeat_interleave(hubs, n_chunks, output_size=num_slots)
    local = torch.arange(num_slots, device=device, dtype=torch.int64) - torch.repeat_interleave(
        merge_ptr[:-1], n_chunks, output_size=num_slots)
    c_start = ptr[slot_row] + local * hub_chunk
    c_end = torch.minimum(c_start + hub_chunk, ptr[slot_row + 1])
    chunk_items = torch.stack(
        [slot_row, c_start, c_end, torch.arange(num_slots, device=device, dtype=torch.int64)], dim=1)
    long_items = torch.cat([chunk_items, mid_items], dim=0)
    # Longest items first: the heavy programs start early (LPT-like balance).
    order = torch.argsort(long_items[:, 2] - long_items[:, 1], descending=True, stable=True)
    plan[f"{prefix}items{len(DEGREE_CLASSES)}"] = long_items[order].contiguous()
    plan[f"{prefix}merge_rows"] = hubs.contiguous()
    plan[f"{prefix}merge_ptr"] = merge_ptr
    plan[f"{prefix}slot_row"] = slot_row.contiguous()
    return plan


def build_csr_plan(rowptr: torch.Tensor, colptr: torch.Tensor = None, *, hub_chunk: int = HUB_CHUNK) -> dict:
    """The degree-bucketed, hub-splitting schedule of a CSR graph.

    Data-dependent (it synchronises with the device): build it once per graph
    and pass it as ``plan=`` to both launchers.

    ``rowptr`` [N_dst + 1] are the target-sorted row offsets; ``colptr``
    [N_src + 1] (optional) the source-sorted offsets used by the dK/dV pass.
    Returns a dict of int64 tensors on rowptr's device:

    * ``items{c}`` for ``c = 0 .. len(DEGREE_CLASSES)``: ``[W_c, 4]`` work
      items ``(row, edge_start, edge_end, slot)``. Class ``c <
      len(DEGREE_CLASSES)`` holds the whole rows whose degree is in
      ``(DEGREE_CLASSES[c-1], DEGREE_CLASSES[c]]`` (class 0 includes degree
      0), in row order, ``slot = -1``. The last class holds the longer rows
      (``slot = -1``) and the chunks of the hub rows (``slot >= 0``), longest
      first.
    * ``merge_rows`` ``[NH]``: the hub rows (degree > hub_chunk).
    * ``merge_ptr`` ``[NH + 1]``: hub ``r`` owns slots ``merge_ptr[r] ..
      merge_ptr[r+1]``, in edge order.
    * ``slot_row`` ``[S]``: the row of each slot (its length is the number of
      scratch rows the launchers allocate).

    With ``colptr`` the same keys prefixed ``t_`` describe the transposed CSR.
    Every row is covered by exactly one whole-row item or by its chunks.
    """
    if not isinstance(rowptr, torch.Tensor) or rowptr.dim() != 1 or rowptr.numel() < 1:
        raise ValueError("rowptr must be a 1-D offsets tensor [N_dst + 1]")
    if not isinstance(hub_chunk, int) or hub_chunk < 1:
        raise ValueError(f"hub_chunk must be a positive int, got {hub_chunk!r}")
    plan = _plan_one(rowptr, hub_chunk, "")
    if colptr is not None:
        if not isinstance(colptr, torch.Tensor) or colptr.dim() != 1 or colptr.numel() < 1:
            raise ValueError("colptr must be a 1-D offsets tensor [N_src + 1]")
        plan.update(_plan_one(colptr, hub_chunk, "t_"))
    return plan


def plan_keys(with_transposed: bool) -> list:
    """The keys of a plan from ``build_csr_plan``, in the fixed order of ``pack_plan``."""
    one = [f"items{c}" for c in range(len(DEGREE_CLASSES) + 1)] + ["merge_rows", "merge_ptr", "slot_row"]
    return one + ([f"t_{key}" for key in one] if with_transposed else [])


def pack_plan(plan: dict) -> list:
    """A plan as a flat tensor list (how graphattn's torch op carries it)."""
    return [plan[key] for key in plan_keys("t_slot_row" in plan)]


def unpack_plan(tensors) -> dict:
    """Inverse of ``pack_plan``; an empty list gives None (the launchers then build one)."""
    if not tensors:
        return None
    keys = plan_keys(len(tensors) > len(plan_keys(False)))
    if len(keys) != len(tensors):
        raise ValueError(f"a packed plan has {len(plan_keys(False))} or {len(plan_keys(True))} tensors, "
                         f"got {len(tensors)}")
    return dict(zip(keys, tensors))


def _has_plan(plan, prefix):
    return plan is not None and f"{prefix}items{len(DEGREE_CLASSES)}" in plan


def _plan_items(plan, prefix, n_rows, what):
    """Item tensors of one CSR plan, after a cheap shape-only consistency check."""
    items = [plan[f"{prefix}items{c}"] for c in range(len(DEGREE_CLASSES) + 1)]
    n_slots = plan[f"{prefix}slot_row"].shape[0]
    covered = sum(t.shape[0] for t in items) - n_slots + plan[f"{prefix}merge_rows"].shape[0]
    if covered != n_rows:
        raise ValueError(f"plan does not match {what}: it covers {covered} rows, expected {n_rows} "
                         f"(build it with build_csr_plan on the same graph)")
    return items


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
# Loops over a data-dependent edge range are plain `for e in range(begin, end, BLOCK_E)`
# (scf.for when compiled, which Triton's software pipeliner can overlap). Triton 3.6's
# interpreter cannot take such runtime bounds with numpy >= 2.4 (triton-lang/triton#9171);
# kernels/interpreter_compat.py patches the interpreter for that, not the kernels.
#
# Masked edges (score -inf, from a -inf bias) and rows whose every edge is masked follow
# the FlashAttention convention: the online softmax exponentiates against the row max with
# -inf replaced by 0 (one select per row and block, not per edge), a row whose denominator
# is 0 gets out 0 and lse -inf, and the passes that read lse (alpha, dQ, dK/dV) replace a
# -inf lse by 0, so exp(s - lse) is exp(-inf) = 0 for every edge of such a row, never NaN.
#
# 64-bit offsets: every offset scaled by a row, edge, item or slot number is int64 (those
# numbers are loaded from the int64 plan / index tensors, or cast). Offsets within one row
# ((h, d) of [*, H, D]) stay int32: the launchers guarantee they fit (_fit_int32_rows).
@triton.jit
def _scores(row, tile, att, slope, SCORE: tl.constexpr):
    """[BLOCK_E, HB] scores of one row [HB, D_PAD] against a gathered tile [BLOCK_E, HB, D_PAD].

    SCORE 0: <row, tile> (the caller has put the scale into one of them).
    SCORE 1: sum_d att * LeakyReLU(row + tile); symmetric in row and tile, so the
    dK/dV pass (row = k_j, tile = the q_i of its edges) uses it as it is. Padded
    d lanes carry att = 0, so they add nothing.
    """
    if SCORE == 0:
        s = tl.sum(tile * row[None, :, :], axis=2)
    else:
        x = tile + row[None, :, :]
        s = tl.sum(tl.where(x > 0, x, x * slope) * att[None, :, :], axis=2)
    return s


@triton.jit
def _load_att(att_ptr, offs_h, offs_d, D, mask_hd, HB: tl.constexpr, D_PAD: tl.constexpr, SCORE: tl.constexpr):
    """att [H, D] (float32, contiguous) of this program's heads; an unused placeholder for SCORE 0."""
    if SCORE == 1:
        att = tl.load(att_ptr + offs_h[:, None] * D + offs_d[None, :], mask=mask_hd, other=0.0)
    else:
        att = tl.zeros([HB, D_PAD], tl.float32)
    return att


@triton.jit
def _load_seed(seed_ptr, DROPOUT: tl.constexpr):
    """The two uint32 words of the dropout seed (int64 [2] in memory), loaded on the device so that
    launching never waits for the host; placeholders without dropout."""
    if DROPOUT:
        seed0 = tl.load(seed_ptr).to(tl.uint32)
        seed1 = tl.load(seed_ptr + 1).to(tl.uint32)
    else:
        seed0 = 0
        seed1 = 0
    return seed0, seed1


@triton.jit
def _fwd_edge_block(
    e, e_end, m_i, l_i, acc, q, att, k_ptr, v_ptr, bias_ptr, col_ptr, eid_ptr,
    offs_e, offs_h, k_off, v_off, mask_h, mask_hd, mask_hdv,
    stride_kn, stride_vn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold,
    HAS_BIAS: tl.constexpr, SCORE: tl.constexpr, DROPOUT: tl.constexpr,
):
    """One block of BLOCK_E edges of the online softmax (q already holds the scale)."""
    pe = e + offs_e
    me = pe < e_end
    j = tl.load(col_ptr + pe, mask=me, other=0)
    kt = tl.load(k_ptr + j[:, None, None] * stride_kn + k_off,
                 mask=me[:, None, None] & mask_hd[None, :, :], other=0.0).to(tl.float32)
    s = _scores(q, kt, att, slope, SCORE)  # [BLOCK_E, HB]
    if HAS_BIAS or DROPOUT:
        ei = tl.load(eid_ptr + pe, mask=me, other=0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ei[:, None] * stride_be + offs_h[None, :] * stride_bh,
                    mask=me[:, None] & mask_h[None, :], other=0.0)
        s += b.to(tl.float32)
    s = tl.where(me[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    # A head whose scores are all -inf so far: keep exp() away from (-inf) - (-inf).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[None, :])
    l_i = l_i * alpha + tl.sum(p, axis=0)  # the softmax denominator: before dropout
    if DROPOUT:  # dropped weights leave the numerator only; the 1/(1-p) factor is applied once at the end
        p = tl.where(dropout_keep(seed0, seed1, drop_threshold, ei[:, None], offs_h[None, :]), p, 0.0)
    vt = tl.load(v_ptr + j[:, None, None] * stride_vn + v_off,
                 mask=me[:, None, None] & mask_hdv[None, :, :], other=0.0).to(tl.float32)
    acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt, axis=0)
    return m_new, l_i, acc


@triton.jit
def _csr_fwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
    col_ptr, eid_ptr, items_ptr, n_items,
    H, D, DV,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_be, stride_bh,
    scale, att_ptr, seed_ptr, slope, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, HB: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr, ITEMS_PER_PROG: tl.constexpr,
    SCORE: tl.constexpr, DROPOUT: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_e = tl.arange(0, BLOCK_E)
    mask_h = offs_h < H
    mask_hd = mask_h[:, None] & (offs_d[None, :] < D)
    mask_hdv = mask_h[:, None] & (offs_dv[None, :] < DV)
    k_off = offs_h[None, :, None] * stride_kh + offs_d[None, None, :]
    v_off = offs_h[None, :, None] * stride_vh + offs_dv[None, None, :]
    o_off = offs_h[:, None] * DV + offs_dv[None, :]
    att = _load_att(att_ptr, offs_h, offs_d, D, mask_hd, HB, D_PAD, SCORE)
    seed0, seed1 = _load_seed(seed_ptr, DROPOUT)

    for it in range(ITEMS_PER_PROG):
        w = pid.to(tl.int64) * ITEMS_PER_PROG + it  # w * 4 may pass 2^31 (> 2^29 items)
        if w < n_items:
            row = tl.load(items_ptr + w * 4)
            e_begin = tl.load(items_ptr + w * 4 + 1)
            e_end = tl.load(items_ptr + w * 4 + 2)
            slot = tl.load(items_ptr + w * 4 + 3)
            q = tl.load(q_ptr + row * stride_qn + offs_h[:, None] * stride_qh + offs_d[None, :],
                        mask=mask_hd, other=0.0).to(tl.float32) * scale
            m_i = tl.full([HB], float("-inf"), tl.float32)
            l_i = tl.zeros([HB], tl.float32)
            acc = tl.zeros([HB, DV_PAD], tl.float32)
            for e in range(e_begin, e_end, BLOCK_E):
                m_i, l_i, acc = _fwd_edge_block(
                    e, e_end, m_i, l_i, acc, q, att, k_ptr, v_ptr, bias_ptr, col_ptr, eid_ptr,
                    offs_e, offs_h, k_off, v_off, mask_h, mask_hd, mask_hdv,
                    stride_kn, stride_vn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold,
                    HAS_BIAS, SCORE, DROPOUT)
            nonempty = l_i != 0.0  # not > 0: a NaN sum (a NaN score) keeps a NaN lse, not -inf
            l_safe = tl.where(nonempty, l_i, 1.0)
            if DROPOUT:
                o = acc * (keep_scale / l_safe)[:, None]
            else:
                o = acc / l_safe[:, None]
            lse = tl.where(nonempty, m_i + tl.log(l_safe), float("-inf"))
            if slot < 0:
                tl.store(out_ptr + row * (H * DV) + o_off, o.to(out_ptr.dtype.element_ty), mask=mask_hdv)
                tl.store(lse_ptr + row * H + offs_h, lse, mask=mask_h)
            else:
                # A hub chunk's partial, normalised by its own denominator (and already scaled
                # by 1/(1-p)): the lse merge below is linear in it, so dropout needs nothing more.
                tl.store(part_out_ptr + slot * (H * DV) + o_off, o, mask=mask_hdv)
                tl.store(part_lse_ptr + slot * H + offs_h, lse, mask=mask_h)


@triton.jit
def _alpha_edge_block(
    e, e_end, q, att, lse, k_ptr, bias_ptr, alpha_ptr, col_ptr, eid_ptr,
    offs_e, offs_h, k_off, mask_h, mask_hd,
    H, stride_kn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, SCORE: tl.constexpr, DROPOUT: tl.constexpr,
):
    """alpha[eid, h] = c * m * exp(s - lse) for one block of a target's edges."""
    pe = e + offs_e
    me = pe < e_end
    valid = me[:, None] & mask_h[None, :]
    j = tl.load(col_ptr + pe, mask=me, other=0)
    kt = tl.load(k_ptr + j[:, None, None] * stride_kn + k_off,
                 mask=me[:, None, None] & mask_hd[None, :, :], other=0.0).to(tl.float32)
    s = _scores(q, kt, att, slope, SCORE)
    ei = tl.load(eid_ptr + pe, mask=me, other=0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ei[:, None] * stride_be + offs_h[None, :] * stride_bh, mask=valid, other=0.0)
        s += b.to(tl.float32)
    p = tl.exp(tl.where(valid, s - lse[None, :], float("-inf")))
    if DROPOUT:
        p = tl.where(dropout_keep(seed0, seed1, drop_threshold, ei[:, None], offs_h[None, :]), p * keep_scale, 0.0)
    tl.store(alpha_ptr + ei[:, None] * H + offs_h[None, :], p.to(alpha_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _csr_alpha_kernel(
    q_ptr, k_ptr, bias_ptr, lse_ptr, alpha_ptr, col_ptr, eid_ptr, items_ptr, n_items,
    H, D,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_be, stride_bh,
    scale, att_ptr, seed_ptr, slope, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, HB: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr, ITEMS_PER_PROG: tl.constexpr,
    SCORE: tl.constexpr, DROPOUT: tl.constexpr,
):
    """The attention weights in edge_index column order, from the final lse: a second pass over the
    forward's work items (hub chunks included), each edge written by exactly one program."""
    pid = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, BLOCK_E)
    mask_h = offs_h < H
    mask_hd = mask_h[:, None] & (offs_d[None, :] < D)
    k_off = offs_h[None, :, None] * stride_kh + offs_d[None, None, :]
    att = _load_att(att_ptr, offs_h, offs_d, D, mask_hd, HB, D_PAD, SCORE)
    seed0, seed1 = _load_seed(seed_ptr, DROPOUT)

    for it in range(ITEMS_PER_PROG):
        w = pid.to(tl.int64) * ITEMS_PER_PROG + it
        if w < n_items:
            row = tl.load(items_ptr + w * 4)
            e_begin = tl.load(items_ptr + w * 4 + 1)
            e_end = tl.load(items_ptr + w * 4 + 2)
            q = tl.load(q_ptr + row * stride_qn + offs_h[:, None] * stride_qh + offs_d[None, :],
                        mask=mask_hd, other=0.0).to(tl.float32) * scale
            lse = tl.load(lse_ptr + row * H + offs_h, mask=mask_h, other=0.0)
            lse = tl.where(lse == float("-inf"), 0.0, lse)  # every score -inf: p = 0, not NaN
            for e in range(e_begin, e_end, BLOCK_E):
                _alpha_edge_block(
                    e, e_end, q, att, lse, k_ptr, bias_ptr, alpha_ptr, col_ptr, eid_ptr,
                    offs_e, offs_h, k_off, mask_h, mask_hd,
                    H, stride_kn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold, keep_scale,
                    HAS_BIAS, SCORE, DROPOUT)


@triton.jit
def _lse_merge_step(s, m, l, acc, part_out_ptr, part_lse_ptr, H, DV, offs_h, o_off, mask_h, mask_hdv):
    """Online merge of partial (out, lse) number s into (m, l, acc)."""
    ls = tl.load(part_lse_ptr + s * H + offs_h, mask=mask_h, other=float("-inf"))
    m_new = tl.maximum(m, ls)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    w = tl.exp(ls - m_safe)
    l = l * alpha + w
    acc = acc * alpha[:, None] + w[:, None] * tl.load(part_out_ptr + s * (H * DV) + o_off,
                                                      mask=mask_hdv, other=0.0)
    return m_new, l, acc


@triton.jit
def _csr_fwd_merge_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, lse_ptr, merge_rows_ptr, merge_ptr_ptr,
    H, DV,
    HB: tl.constexpr, DV_PAD: tl.constexpr,
):
    """out/lse of a hub row from its chunks' normalised partials, combined through their lse."""
    r = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_dv = tl.arange(0, DV_PAD)
    mask_h = offs_h < H
    mask_hdv = mask_h[:, None] & (offs_dv[None, :] < DV)
    o_off = offs_h[:, None] * DV + offs_dv[None, :]
    row = tl.load(merge_rows_ptr + r)
    s_begin = tl.load(merge_ptr_ptr + r)
    s_end = tl.load(merge_ptr_ptr + r + 1)
    m = tl.full([HB], float("-inf"), tl.float32)
    l = tl.zeros([HB], tl.float32)
    acc = tl.zeros([HB, DV_PAD], tl.float32)
    for s in range(s_begin, s_end):
        m, l, acc = _lse_merge_step(s, m, l, acc, part_out_ptr, part_lse_ptr, H, DV, offs_h, o_off,
                                    mask_h, mask_hdv)
    nonempty = l != 0.0  # a NaN sum keeps its NaN (see the forward)
    l_safe = tl.where(nonempty, l, 1.0)
    tl.store(out_ptr + row * (H * DV) + o_off, (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty),
             mask=mask_hdv)
    tl.store(lse_ptr + row * H + offs_h, tl.where(nonempty, m + tl.log(l_safe), float("-inf")),
             mask=mask_h)


@triton.jit
def _bwd_delta_kernel(
    out_ptr, do_ptr, glse_ptr, delta_ptr,
    N, H, DV,
    stride_on, stride_oh, stride_don, stride_doh, stride_gn, stride_gh,
    HAS_GLSE: tl.constexpr, BLOCK_R: tl.constexpr, HB: tl.constexpr, DV_PAD: tl.constexpr,
):
    """delta[i, h] = sum_d out[i,h,d] * grad_out[i,h,d] - grad_lse[i,h]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_dv = tl.arange(0, DV_PAD)
    mask_rh = (rows[:, None] < N) & (offs_h[None, :] < H)
    mask = mask_rh[:, :, None] & (offs_dv[None, None, :] < DV)
    o = tl.load(out_ptr + rows[:, None, None] * stride_on + offs_h[None, :, None] * stride_oh
                + offs_dv[None, None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + rows[:, None, None] * stride_don + offs_h[None, :, None] * stride_doh
                 + offs_dv[None, None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=2)
    if HAS_GLSE:
        delta -= tl.load(glse_ptr + rows[:, None] * stride_gn + offs_h[None, :] * stride_gh,
                         mask=mask_rh, other=0.0)
    tl.store(delta_ptr + rows[:, None] * H + offs_h[None, :], delta, mask=mask_rh)


@triton.jit
def _edge_grad_terms(dp, p, delta, galpha_ptr, ei, offs_h, valid, H, seed0, seed1, drop_threshold, keep_scale,
                     DROPOUT: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr):
    """(ds, the edges' weight in dV without the 1/(1-p) factor) from dp = <dO_i, v_j>:
    ds = p (c m (dp + g) - Delta), see graphattn/scored_ops.py."""
    if HAS_GRAD_ALPHA:
        dp += tl.load(galpha_ptr + ei[:, None] * H + offs_h[None, :], mask=valid, other=0.0)
    if DROPOUT:
        keep = dropout_keep(seed0, seed1, drop_threshold, ei[:, None], offs_h[None, :])
        dp = tl.where(keep, dp * keep_scale, 0.0)
        p_kept = tl.where(keep, p, 0.0)
    else:
        p_kept = p
    return p * (dp - delta), p_kept


@triton.jit
def _dq_edge_block(
    e, e_end, acc, acc_att, q, att, do, lse, delta, k_ptr, v_ptr, bias_ptr, dbias_ptr, galpha_ptr, col_ptr, eid_ptr,
    offs_e, offs_h, k_off, v_off, mask_h, mask_hd, mask_hdv,
    H, stride_kn, stride_vn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, NEED_DBIAS: tl.constexpr, NEED_EID: tl.constexpr,
    SCORE: tl.constexpr, DROPOUT: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr, NEED_DATT: tl.constexpr,
):
    """One block of a target row's edges: acc += ds_e * (d s_e / d q_i) without its constant factor
    (scale for dot, att for additive: applied once per row); acc_att += ds_e * LeakyReLU(q_i + k_j);
    dbias[eid] = ds_e."""
    pe = e + offs_e
    me = pe < e_end
    valid = me[:, None] & mask_h[None, :]
    j = tl.load(col_ptr + pe, mask=me, other=0)
    kt = tl.load(k_ptr + j[:, None, None] * stride_kn + k_off,
                 mask=me[:, None, None] & mask_hd[None, :, :], other=0.0).to(tl.float32)
    s = _scores(q, kt, att, slope, SCORE)  # [BLOCK_E, HB]
    if NEED_EID:
        ei = tl.load(eid_ptr + pe, mask=me, other=0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ei[:, None] * stride_be + offs_h[None, :] * stride_bh, mask=valid, other=0.0)
        s += b.to(tl.float32)
    # exp of -inf on masked lanes: no inf/NaN intermediates (p = 0 there).
    p = tl.exp(tl.where(valid, s - lse[None, :], float("-inf")))
    vt = tl.load(v_ptr + j[:, None, None] * stride_vn + v_off,
                 mask=me[:, None, None] & mask_hdv[None, :, :], other=0.0).to(tl.float32)
    dp = tl.sum(vt * do[None, :, :], axis=2)
    if DROPOUT or HAS_GRAD_ALPHA:
        ds, _ = _edge_grad_terms(dp, p, delta[None, :], galpha_ptr, ei, offs_h, valid, H, seed0, seed1,
                                 drop_threshold, keep_scale, DROPOUT, HAS_GRAD_ALPHA)
    else:
        ds = p * (dp - delta[None, :])
    if SCORE == 0:
        acc += tl.sum(ds[:, :, None] * kt, axis=0)
    else:
        # d s / d q[h, d] = att[h, d] * LeakyReLU'(x) with x = q + k (att is applied once, at the end);
        # d s / d att[h, d] = LeakyReLU(x).
        x = kt + q[None, :, :]
        acc += tl.sum(ds[:, :, None] * tl.where(x > 0, 1.0, slope), axis=0)
        if NEED_DATT:
            acc_att += tl.sum(ds[:, :, None] * tl.where(x > 0, x, x * slope), axis=0)
    if NEED_DBIAS:
        tl.store(dbias_ptr + ei[:, None] * H + offs_h[None, :], ds.to(dbias_ptr.dtype.element_ty), mask=valid)
    return acc, acc_att


@triton.jit
def _csr_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dbias_ptr, part_ptr,
    col_ptr, eid_ptr, items_ptr, n_items,
    H, D, DV,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_be, stride_bh,
    stride_don, stride_doh,
    scale, att_ptr, seed_ptr, galpha_ptr, datt_part_ptr, n_rows, slope, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, NEED_DBIAS: tl.constexpr, NEED_EID: tl.constexpr, HB: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_E: tl.constexpr, ITEMS_PER_PROG: tl.constexpr,
    SCORE: tl.constexpr, DROPOUT: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr, NEED_DATT: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_e = tl.arange(0, BLOCK_E)
    mask_h = offs_h < H
    mask_hd = mask_h[:, None] & (offs_d[None, :] < D)
    mask_hdv = mask_h[:, None] & (offs_dv[None, :] < DV)
    k_off = offs_h[None, :, None] * stride_kh + offs_d[None, None, :]
    v_off = offs_h[None, :, None] * stride_vh + offs_dv[None, None, :]
    dq_off = offs_h[:, None] * D + offs_d[None, :]
    att = _load_att(att_ptr, offs_h, offs_d, D, mask_hd, HB, D_PAD, SCORE)
    seed0, seed1 = _load_seed(seed_ptr, DROPOUT)

    for it in range(ITEMS_PER_PROG):
        w = pid.to(tl.int64) * ITEMS_PER_PROG + it
        if w < n_items:
            row = tl.load(items_ptr + w * 4)
            e_begin = tl.load(items_ptr + w * 4 + 1)
            e_end = tl.load(items_ptr + w * 4 + 2)
            slot = tl.load(items_ptr + w * 4 + 3)
            q = tl.load(q_ptr + row * stride_qn + offs_h[:, None] * stride_qh + offs_d[None, :],
                        mask=mask_hd, other=0.0).to(tl.float32) * scale
            do = tl.load(do_ptr + row * stride_don + offs_h[:, None] * stride_doh + offs_dv[None, :],
                         mask=mask_hdv, other=0.0).to(tl.float32)
            lse = tl.load(lse_ptr + row * H + offs_h, mask=mask_h, other=0.0)
            lse = tl.where(lse == float("-inf"), 0.0, lse)
            delta = tl.load(delta_ptr + row * H + offs_h, mask=mask_h, other=0.0)
            acc = tl.zeros([HB, D_PAD], tl.float32)
            acc_att = tl.zeros([HB, D_PAD], tl.float32)
            for e in range(e_begin, e_end, BLOCK_E):
                acc, acc_att = _dq_edge_block(
                    e, e_end, acc, acc_att, q, att, do, lse, delta, k_ptr, v_ptr, bias_ptr, dbias_ptr,
                    galpha_ptr, col_ptr, eid_ptr, offs_e, offs_h, k_off, v_off, mask_h, mask_hd, mask_hdv,
                    H, stride_kn, stride_vn, stride_be, stride_bh, slope, seed0, seed1, drop_threshold,
                    keep_scale, HAS_BIAS, NEED_DBIAS, NEED_EID, SCORE, DROPOUT, HAS_GRAD_ALPHA, NEED_DATT)
            if SCORE == 0:
                acc = acc * scale
            else:
                acc = acc * att
            if slot < 0:
                tl.store(dq_ptr + row * (H * D) + dq_off, acc.to(dq_ptr.dtype.element_ty), mask=mask_hd)
            else:
                tl.store(part_ptr + slot * (H * D) + dq_off, acc, mask=mask_hd)
            if NEED_DATT:
                # One partial per whole row (at its row) or per hub chunk (after the n_rows rows),
                # summed on the host in a fixed order: deterministic without atomics.
                prow = tl.where(slot < 0, row, n_rows + slot)
                tl.store(datt_part_ptr + prow * (H * D) + dq_off, acc_att, mask=mask_hd)


@triton.jit
def _dkdv_edge_block(
    t, t_end, acc_k, acc_v, kj, vj, att, q_ptr, do_ptr, lse_ptr, delta_ptr, bias_ptr, galpha_ptr, row_ptr, eid_ptr,
    offs_e, offs_h, q_off, do_off, mask_h, mask_hd, mask_hdv,
    H, stride_qn, stride_don, stride_be, stride_bh, slope, seed0, seed1, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, NEED_EID: tl.constexpr, SCORE: tl.constexpr, DROPOUT: tl.constexpr,
    HAS_GRAD_ALPHA: tl.constexpr,
):
    """One block of a source row's outgoing edges: acc_v += m_e p_e dO_i (the 1/(1-p) factor is applied
    once per row), acc_k += ds_e * (d s_e / d k_j) without its constant factor (scale or att)."""
    pt = t + offs_e
    mt = pt < t_end
    valid = mt[:, None] & mask_h[None, :]
    i = tl.load(row_ptr + pt, mask=mt, other=0)
    qt = tl.load(q_ptr + i[:, None, None] * stride_qn + q_off,
                 mask=mt[:, None, None] & mask_hd[None, :, :], other=0.0).to(tl.float32)
    s = _scores(kj, qt, att, slope, SCORE)  # [BLOCK_E, HB]
    if NEED_EID:
        ei = tl.load(eid_ptr + pt, mask=mt, other=0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ei[:, None] * stride_be + offs_h[None, :] * stride_bh, mask=valid, other=0.0)
        s += b.to(tl.float32)
    lse = tl.load(lse_ptr + i[:, None] * H + offs_h[None, :], mask=valid, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(delta_ptr + i[:, None] * H + offs_h[None, :], mask=valid, other=0.0)
    p = tl.exp(tl.where(valid, s - lse, float("-inf")))
    dot = tl.load(do_ptr + i[:, None, None] * stride_don + do_off,
                  mask=mt[:, None, None] & mask_hdv[None, :, :], other=0.0).to(tl.float32)
    if DROPOUT or HAS_GRAD_ALPHA:
        dp = tl.sum(dot * vj[None, :, :], axis=2)
        ds, p_kept = _edge_grad_terms(dp, p, delta, galpha_ptr, ei, offs_h, valid, H, seed0, seed1,
                                      drop_threshold, keep_scale, DROPOUT, HAS_GRAD_ALPHA)
        acc_v += tl.sum(p_kept[:, :, None] * dot, axis=0)
    else:
        acc_v += tl.sum(p[:, :, None] * dot, axis=0)
        dp = tl.sum(dot * vj[None, :, :], axis=2)
        ds = p * (dp - delta)
    if SCORE == 0:
        acc_k += tl.sum(ds[:, :, None] * qt, axis=0)
    else:
        x = qt + kj[None, :, :]
        acc_k += tl.sum(ds[:, :, None] * tl.where(x > 0, 1.0, slope), axis=0)
    return acc_k, acc_v


@triton.jit
def _csr_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, part_dk_ptr, part_dv_ptr,
    row_ptr, eid_ptr, items_ptr, n_items,
    H, D, DV,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_be, stride_bh,
    stride_don, stride_doh,
    scale, att_ptr, seed_ptr, galpha_ptr, slope, drop_threshold, keep_scale,
    HAS_BIAS: tl.constexpr, HB: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_E: tl.constexpr, ITEMS_PER_PROG: tl.constexpr,
    NEED_EID: tl.constexpr, SCORE: tl.constexpr, DROPOUT: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    offs_e = tl.arange(0, BLOCK_E)
    mask_h = offs_h < H
    mask_hd = mask_h[:, None] & (offs_d[None, :] < D)
    mask_hdv = mask_h[:, None] & (offs_dv[None, :] < DV)
    q_off = offs_h[None, :, None] * stride_qh + offs_d[None, None, :]
    do_off = offs_h[None, :, None] * stride_doh + offs_dv[None, None, :]
    dk_off = offs_h[:, None] * D + offs_d[None, :]
    dv_off = offs_h[:, None] * DV + offs_dv[None, :]
    att = _load_att(att_ptr, offs_h, offs_d, D, mask_hd, HB, D_PAD, SCORE)
    seed0, seed1 = _load_seed(seed_ptr, DROPOUT)

    for it in range(ITEMS_PER_PROG):
        w = pid.to(tl.int64) * ITEMS_PER_PROG + it
        if w < n_items:
            src = tl.load(items_ptr + w * 4)
            t_begin = tl.load(items_ptr + w * 4 + 1)
            t_end = tl.load(items_ptr + w * 4 + 2)
            slot = tl.load(items_ptr + w * 4 + 3)
            kj = tl.load(k_ptr + src * stride_kn + offs_h[:, None] * stride_kh + offs_d[None, :],
                         mask=mask_hd, other=0.0).to(tl.float32) * scale
            vj = tl.load(v_ptr + src * stride_vn + offs_h[:, None] * stride_vh + offs_dv[None, :],
                         mask=mask_hdv, other=0.0).to(tl.float32)
            acc_k = tl.zeros([HB, D_PAD], tl.float32)
            acc_v = tl.zeros([HB, DV_PAD], tl.float32)
            for t in range(t_begin, t_end, BLOCK_E):
                acc_k, acc_v = _dkdv_edge_block(
                    t, t_end, acc_k, acc_v, kj, vj, att, q_ptr, do_ptr, lse_ptr, delta_ptr, bias_ptr,
                    galpha_ptr, row_ptr, eid_ptr, offs_e, offs_h, q_off, do_off, mask_h, mask_hd, mask_hdv,
                    H, stride_qn, stride_don, stride_be, stride_bh, slope, seed0, seed1, drop_threshold,
                    keep_scale, HAS_BIAS, NEED_EID, SCORE, DROPOUT, HAS_GRAD_ALPHA)
            if SCORE == 0:
                acc_k = acc_k * scale
            else:
                acc_k = acc_k * att
            if DROPOUT:
                acc_v = acc_v * keep_scale
            if slot < 0:
                tl.store(dk_ptr + src * (H * D) + dk_off, acc_k.to(dk_ptr.dtype.element_ty), mask=mask_hd)
                tl.store(dv_ptr + src * (H * DV) + dv_off, acc_v.to(dv_ptr.dtype.element_ty), mask=mask_hdv)
            else:
                tl.store(part_dk_ptr + slot * (H * D) + dk_off, acc_k, mask=mask_hd)
                tl.store(part_dv_ptr + slot * (H * DV) + dv_off, acc_v, mask=mask_hdv)


@triton.jit
def _sum_merge_kernel(
    part_ptr, dst_ptr, merge_rows_ptr, merge_ptr_ptr, ROW_ELEMS,
    BLOCK: tl.constexpr,
):
    """dst[row] = sum of the hub's partial rows (float32, in slot order)."""
    r = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ROW_ELEMS
    row = tl.load(merge_rows_ptr + r)
    s_begin = tl.load(merge_ptr_ptr + r)
    s_end = tl.load(merge_ptr_ptr + r + 1)
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(s_begin, s_end):
        acc += tl.load(part_ptr + s * ROW_ELEMS + offs, mask=mask, other=0.0)
    tl.store(dst_ptr + row * ROW_ELEMS + offs, acc.to(dst_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Launch heuristics
# ---------------------------------------------------------------------------
def _geometry(H, D, DV):
    """(HB, number of head blocks, D_PAD, DV_PAD): heads per program and padded head dims."""
    d_pad = triton.next_power_of_2(max(D, 1))
    dv_pad = triton.next_power_of_2(max(DV, 1))
    h_pad = triton.next_power_of_2(max(H, 1))
    hb = max(1, min(h_pad, _ROW_BUDGET // max(d_pad, dv_pad)))
    return hb, triton.cdiv(H, hb), d_pad, dv_pad


def _launch_config(cls, hb, d_max):
    """(BLOCK_E, ITEMS_PER_PROG, num_warps) for a degree class and a per-program row width.

    A fixed heuristic (no autotuning): BLOCK_E is the class's degree bound
    (32 for the long class) capped so that one [BLOCK_E, HB, D] tile stays
    within _TILE_BUDGET elements; one warp per _ELEMS_PER_THREAD * 32 elements.
    """
    cap = triton.next_power_of_2(DEGREE_CLASSES[cls]) if cls < len(DEGREE_CLASSES) else _LONG_BLOCK_E
    row = hb * d_max
    block_e = max(2, min(cap, triton.next_power_of_2(max(1, _TILE_BUDGET // row))))
    tile = block_e * row
    num_warps = max(1, min(8, tile // (32 * _ELEMS_PER_THREAD)))
    return block_e, _ITEMS_PER_PROG[min(cls, len(_ITEMS_PER_PROG) - 1)], num_warps


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------
def _check_inputs(q, k, v, bias, n_edges):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be a 3-D tensor [N, H, D]")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] != k.shape[1] or q.shape[1] != v.shape[1]:
        raise ValueError("q, k, v must have the same number of heads")
    if q.shape[2] != k.shape[2]:
        raise ValueError("q and k must have the same head dim")
    if k.shape[0] != v.shape[0]:
        raise ValueError("k and v must have the same number of rows")
    if bias is not None:
        if bias.dtype != q.dtype:
            raise TypeError(f"bias must have dtype {q.dtype}, got {bias.dtype}")
        if bias.dim() == 1:
            bias = bias[:, None].expand(bias.shape[0], q.shape[1])
        if bias.dim() != 2 or bias.shape[1] != q.shape[1] or bias.shape[0] != n_edges:
            raise ValueError(f"bias must be [E, H] or [E] with E = {n_edges}, H = {q.shape[1]}, "
                             f"got {list(bias.shape)}")
        bias = _fit_int32_rows(bias, "bias")
    return bias


_INT32_LIMIT = 2**31
# The largest H * max(D, Dv) the kernels take (offsets within one row are int32).
MAX_ROW_ELEMENTS = _INT32_LIMIT


def _row_span(t):
    """Largest element offset within one row t[i] (all dims but the first)."""
    return sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:]) if n > 1)


def _fit_int32_rows(t, name):
    """``t`` with offsets within one row that fit in int32 (copied when they do not).

    The kernels address ``t[i]`` as an int64 row offset (``i * stride(0)``, ``i`` a row, edge
    or slot number) plus int32 offsets inside the row (``h * stride(1) + d``): int32 keeps
    the per-element offset tensors at one register each. A view whose inner strides are
    huge (e.g. [N, H, D] transposed from [H, N, D], or a [E, H] bias from a [H, E] one, with
    N * D * H > 2^31) is copied to a contiguous tensor, whose rows span H * D elements.
    """
    if _row_span(t) < _INT32_LIMIT:
        return t
    t = t.contiguous()
    if _row_span(t) >= _INT32_LIMIT:
        raise ValueError(f"{name}: one row has {t[0].numel()} elements; the Triton kernels take at most 2^31")
    return t


def _last_dim_contiguous(t, name="input"):
    t = t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()
    return _fit_int32_rows(t, name)


def _or_dummy(t, dummy):
    return t if t is not None and t.numel() > 0 else dummy


def _index(t):
    """Index vectors are read with unit stride as int64 (no copy when they already are)."""
    return t.to(torch.int64).contiguous()


def _on_device(t):
    """Launch on the inputs' GPU, not the current one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _Extras:
    """The score kind and dropout of one call, as the kernels take them (see the module docstring).

    ``code`` is the SCORE constexpr (0 dot, 1 additive); ``att`` float32 [H, D]
    contiguous for the additive score (ones for GAT); ``seed`` int64 [2] or None
    without dropout; ``threshold`` / ``keep_scale`` from graphattn/dropout.py.
    """

    def __init__(self, code=0, att=None, seed=None, slope=0.0, dropout_p=0.0):
        self.code, self.att, self.seed, self.slope = code, att, seed, float(slope)
        self.dropout = seed is not None
        self.threshold = _dropout.threshold(dropout_p) if self.dropout else 0
        self.keep_scale = _dropout.keep_scale(dropout_p) if self.dropout else 1.0

    def scale(self, scale):
        """The additive scores have no scale: the kernels multiply q (or k) by 1."""
        return float(scale) if self.code == 0 else 1.0

    def kernel_args(self, dummy, idx_dummy):
        """(att, seed) pointers for the kernels; dummies where the constexpr switches leave them unread."""
        return _or_dummy(self.att, dummy), _or_dummy(self.seed, idx_dummy)


_DOT = _Extras()
_SCORE_KINDS = ("dot", "gat", "gatv2")


def _make_extras(q, score, att, seed, negative_slope, dropout_p):
    if score not in _SCORE_KINDS:
        raise ValueError(f"score must be one of {_SCORE_KINDS}, got {score!r}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    H, D = q.shape[1], q.shape[2]
    if score == "gat":
        if D != 1:
            raise ValueError(f"score='gat' takes q, k as [N, H, 1], got head dim {D}")
        if att is not None:
            raise ValueError("score='gat' takes no att")
        att = torch.ones((H, 1), dtype=torch.float32, device=q.device)  # GAT is GATv2's score with att = 1
    elif score == "gatv2":
        if att is None or tuple(att.shape) != (H, D):
            raise ValueError(f"score='gatv2' needs att [H, D] = [{H}, {D}], got "
                             f"{None if att is None else list(att.shape)}")
        att = att.to(torch.float32).contiguous()
    elif att is not None:
        raise ValueError("score='dot' takes no att")
    if dropout_p > 0:
        if seed is None or seed.numel() != 2:
            raise ValueError("dropout_p > 0 needs the seed, an int64 tensor [2] (graphattn.dropout.draw_seed)")
        seed = seed.to(device=q.device, dtype=torch.int64).contiguous()
    else:
        seed = None
    return _Extras(0 if score == "dot" else 1, att, seed, negative_slope, dropout_p)


def csr_attention_forward(q, k, v, rowptr, col, eid, bias, scale, *, plan=None):
    """Fused CSR edge-softmax attention forward -> ``(out [N_dst, H, Dv], lse [N_dst, H] float32)``.

    ``rowptr`` int64 [N_dst + 1], ``col`` / ``eid`` int64 [E] (target-sorted
    CSR), ``bias`` None or [E, H] (any strides, head stride 0 allowed; a [E]
    bias is expanded), ``scale`` a float. ``plan`` from ``build_csr_plan``
    (computed here when None).
    """
    with _on_device(q):
        out, lse, _ = _forward(q, k, v, rowptr, col, eid, bias, scale, plan, _DOT, False)
        return out, lse


def csr_scored_attention_forward(q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope,
                                 dropout_p, return_alpha, *, plan=None):
    """Forward with a score kind, attention dropout and the weights -> ``(out, lse, alpha or None)``.

    As ``csr_attention_forward``, plus: ``score`` "dot", "gat" (q, k [N, H, 1])
    or "gatv2" (``att`` [H, D]); ``scale`` is used by "dot" only;
    ``negative_slope`` of the LeakyReLU; ``dropout_p`` with ``seed`` (int64
    [2], graphattn/dropout.py) when > 0. ``alpha`` [E, H] in the input dtype,
    in edge_index column order (indexed by ``eid``), when ``return_alpha``.
    """
    with _on_device(q):
        extras = _make_extras(q, score, att, seed, negative_slope, dropout_p)
        return _forward(q, k, v, rowptr, col, eid, bias, scale, plan, extras, return_alpha)


def _forward(q, k, v, rowptr, col, eid, bias, scale, plan, extras, return_alpha):
    bias = _check_inputs(q, k, v, bias, col.numel())
    col, eid = _index(col), _index(eid)
    q, k, v = (_last_dim_contiguous(t, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    n_dst, H, D = q.shape
    DV = v.shape[2]
    E = col.numel()
    device = q.device
    out = torch.empty((n_dst, H, DV), dtype=q.dtype, device=device)
    lse = torch.empty((n_dst, H), dtype=torch.float32, device=device)
    # Every edge belongs to a target row, so the alpha pass writes all of it.
    alpha = torch.empty((E, H), dtype=q.dtype, device=device) if return_alpha else None
    if n_dst == 0 or H == 0:
        return out, lse, alpha
    if DV == 0:
        out.zero_()
    if not _has_plan(plan, ""):
        plan = build_csr_plan(rowptr)
    items = _plan_items(plan, "", n_dst, "rowptr")
    n_slots = plan["slot_row"].shape[0]

    dummy = torch.empty(1, dtype=torch.float32, device=device)
    idx_dummy = torch.zeros(1, dtype=torch.int64, device=device)
    part_out = torch.empty((n_slots, H, DV), dtype=torch.float32, device=device) if n_slots else dummy
    part_lse = torch.empty((n_slots, H), dtype=torch.float32, device=device) if n_slots else dummy
    has_bias = bias is not None
    bias_t = bias if has_bias and bias.numel() > 0 else q
    sb = bias.stride() if has_bias else (0, 0)
    k_t, v_t = _or_dummy(k, q), _or_dummy(v, q)
    col_t, eid_t = _or_dummy(col, idx_dummy), _or_dummy(eid, idx_dummy)
    att_t, seed_t = extras.kernel_args(dummy, idx_dummy)
    scale = extras.scale(scale)
    hb, n_hb, d_pad, dv_pad = _geometry(H, D, DV)
    for cls, it in enumerate(items):
        n_items = it.shape[0]
        if n_items == 0:
            continue
        block_e, ipp, num_warps = _launch_config(cls, hb, max(d_pad, dv_pad))
        _csr_fwd_kernel[(triton.cdiv(n_items, ipp), n_hb)](
            q, k_t, v_t, bias_t, out, lse, part_out, part_lse,
            col_t, eid_t, it, n_items,
            H, D, DV,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), sb[0], sb[1],
            scale, att_t, seed_t, extras.slope, extras.threshold, extras.keep_scale,
            HAS_BIAS=has_bias, HB=hb, D_PAD=d_pad, DV_PAD=dv_pad,
            BLOCK_E=block_e, ITEMS_PER_PROG=ipp,
            SCORE=extras.code, DROPOUT=extras.dropout, num_warps=num_warps,
        )
    n_hubs = plan["merge_rows"].shape[0]
    if n_hubs:
        _csr_fwd_merge_kernel[(n_hubs, n_hb)](
            part_out, part_lse, out, lse, plan["merge_rows"], plan["merge_ptr"], H, DV,
            HB=hb, DV_PAD=dv_pad, num_warps=4 if hb * dv_pad >= 1024 else 2,
        )
    if return_alpha and E > 0:
        # After the merge: every item, hub chunk or whole row, needs its row's final lse.
        for cls, it in enumerate(items):
            n_items = it.shape[0]
            if n_items == 0:
                continue
            block_e, ipp, num_warps = _launch_config(cls, hb, d_pad)
            _csr_alpha_kernel[(triton.cdiv(n_items, ipp), n_hb)](
                q, k_t, bias_t, lse, alpha, col_t, eid_t, it, n_items,
                H, D,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), sb[0], sb[1],
                scale, att_t, seed_t, extras.slope, extras.threshold, extras.keep_scale,
                HAS_BIAS=has_bias, HB=hb, D_PAD=d_pad, BLOCK_E=block_e, ITEMS_PER_PROG=ipp,
                SCORE=extras.code, DROPOUT=extras.dropout, num_warps=num_warps,
            )
    return out, lse, alpha


def _merge_sum(part, dst, plan, prefix, row_elems):
    n_hubs = plan[f"{prefix}merge_rows"].shape[0]
    if n_hubs == 0 or row_elems == 0:
        return
    block = min(1024, triton.next_power_of_2(row_elems))
    _sum_merge_kernel[(n_hubs, triton.cdiv(row_elems, block))](
        part, dst, plan[f"{prefix}merge_rows"], plan[f"{prefix}merge_ptr"], row_elems,
        BLOCK=block, num_warps=4 if block >= 512 else 1,
    )


def csr_attention_backward(grad_out, grad_lse, q, k, v, bias, out, lse,
                           rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias, *, plan=None):
    """Backward of ``csr_attention_forward`` -> ``(dq, dk, dv, dbias)``.

    ``grad_lse`` None or float32 [N_dst, H]; ``colptr`` [N_src + 1], ``row_t``
    / ``eid_t`` [E] the source-sorted CSR. ``dbias`` is [E, H] in the input
    dtype, or None when ``need_dbias`` is False. ``plan`` from
    ``build_csr_plan(rowptr, colptr)``; missing parts (e.g. a plan built
    without colptr) are computed here, which synchronises with the device.
    """
    with _on_device(q):
        dq, dk, dv, dbias, _ = _backward(grad_out, grad_lse, None, q, k, v, bias, out, lse, rowptr, col, eid,
                                         colptr, row_t, eid_t, scale, need_dbias, False, plan, _DOT)
        return dq, dk, dv, dbias


def csr_scored_attention_backward(grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse,
                                  rowptr, col, eid, colptr, row_t, eid_t, score, scale, negative_slope, dropout_p,
                                  need_dbias, need_datt, *, plan=None):
    """Backward of ``csr_scored_attention_forward`` -> ``(dq, dk, dv, dbias or None, datt or None)``.

    ``grad_alpha`` None or [E, H] (edge_index column order, read as float32);
    its term ``- sum_e alpha_e g_e`` must already be in ``grad_lse`` (see
    graphattn/scored_ops.py). ``datt`` [H, D] in the dtype of att, when
    ``need_datt`` (score "gatv2" only). The rest as ``csr_attention_backward``.
    """
    with _on_device(q):
        extras = _make_extras(q, score, att, seed, negative_slope, dropout_p)
        if need_datt and score != "gatv2":
            raise ValueError("need_datt is for score='gatv2' only")
        if grad_alpha is not None:
            grad_alpha = grad_alpha.to(torch.float32).contiguous()
        dq, dk, dv, dbias, datt = _backward(grad_out, grad_lse, grad_alpha, q, k, v, bias, out, lse, rowptr, col,
                                            eid, colptr, row_t, eid_t, scale, need_dbias, need_datt, plan, extras)
        return dq, dk, dv, dbias, None if datt is None else datt.to(att.dtype)


def _backward(grad_out, grad_lse, grad_alpha, q, k, v, bias, out, lse, rowptr, col, eid,
              colptr, row_t, eid_t, scale, need_dbias, need_datt, plan, extras):
    bias = _check_inputs(q, k, v, bias, col.numel())
    col, eid, row_t, eid_t = _index(col), _index(eid), _index(row_t), _index(eid_t)
    q, k, v = (_last_dim_contiguous(t, name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    n_dst, H, D = q.shape
    n_src = k.shape[0]
    DV = v.shape[2]
    E = col.numel()
    device = q.device
    dq = torch.empty((n_dst, H, D), dtype=q.dtype, device=device)
    dk = torch.empty((n_src, H, D), dtype=q.dtype, device=device)
    dv = torch.empty((n_src, H, DV), dtype=q.dtype, device=device)
    dbias = torch.zeros((E, H), dtype=q.dtype, device=device) if need_dbias else None
    datt = torch.zeros((H, D), dtype=torch.float32, device=device) if need_datt else None
    if H == 0 or (n_dst == 0 and n_src == 0):
        return dq, dk, dv, dbias, datt
    if D == 0 or DV == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
    if not _has_plan(plan, "") or not _has_plan(plan, "t_"):
        extra = {}
        if not _has_plan(plan, ""):
            extra.update(build_csr_plan(rowptr))
        if not _has_plan(plan, "t_"):
            extra.update(_plan_one(colptr, HUB_CHUNK, "t_"))
        plan = {**(plan or {}), **extra}
    items = _plan_items(plan, "", n_dst, "rowptr")
    t_items = _plan_items(plan, "t_", n_src, "colptr")

    if grad_out.shape != (n_dst, H, DV):
        raise ValueError(f"grad_out must be [{n_dst}, {H}, {DV}], got {list(grad_out.shape)}")
    if grad_alpha is not None and tuple(grad_alpha.shape) != (E, H):
        raise ValueError(f"grad_alpha must be [{E}, {H}], got {list(grad_alpha.shape)}")
    grad_out = _last_dim_contiguous(grad_out, "grad_out")
    if grad_out.dtype != q.dtype:
        grad_out = grad_out.to(q.dtype)
    out = _last_dim_contiguous(out, "out")
    has_glse = grad_lse is not None
    if has_glse:
        grad_lse = _fit_int32_rows(grad_lse.to(torch.float32), "grad_lse")
    lse = lse.to(torch.float32).contiguous()

    dummy = torch.empty(1, dtype=torch.float32, device=device)
    idx_dummy = torch.zeros(1, dtype=torch.int64, device=device)
    has_bias = bias is not None
    bias_t = bias if has_bias and bias.numel() > 0 else q
    sb = bias.stride() if has_bias else (0, 0)
    hb, n_hb, d_pad, dv_pad = _geometry(H, D, DV)
    d_max = max(d_pad, dv_pad)
    att_t, seed_t = extras.kernel_args(dummy, idx_dummy)
    has_ga = grad_alpha is not None and E > 0
    ga_t = grad_alpha if has_ga else dummy
    need_eid = has_bias or extras.dropout or has_ga
    extra_args = (extras.scale(scale), att_t, seed_t, ga_t)
    extra_flags = dict(SCORE=extras.code, DROPOUT=extras.dropout, HAS_GRAD_ALPHA=has_ga)

    # 1. Delta = rowsum(dO * O) - grad_lse   ([N_dst, H] float32)
    delta = torch.empty((n_dst, H), dtype=torch.float32, device=device)
    if n_dst:
        block_r = max(1, min(64, triton.next_power_of_2(max(1, 4096 // (hb * dv_pad)))))
        _bwd_delta_kernel[(triton.cdiv(n_dst, block_r), n_hb)](
            out, grad_out, grad_lse if has_glse else dummy, delta,
            n_dst, H, DV,
            out.stride(0), out.stride(1), grad_out.stride(0), grad_out.stride(1),
            grad_lse.stride(0) if has_glse else 0, grad_lse.stride(1) if has_glse else 0,
            HAS_GLSE=has_glse, BLOCK_R=block_r, HB=hb, DV_PAD=dv_pad, num_warps=4,
        )

    k_t, v_t, q_t = _or_dummy(k, dummy), _or_dummy(v, dummy), _or_dummy(q, dummy)
    do_t = _or_dummy(grad_out, dummy)
    lse_t, delta_t = _or_dummy(lse, dummy), _or_dummy(delta, dummy)
    common_strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      sb[0], sb[1], grad_out.stride(0), grad_out.stride(1))

    # 2. dQ (and dbias, and the datt partials) over target rows
    if n_dst:
        n_slots = plan["slot_row"].shape[0]
        part = torch.empty((n_slots, H, D), dtype=torch.float32, device=device) if n_slots else dummy
        need_db = bool(need_dbias) and E > 0
        need_da = bool(need_datt) and E > 0
        # Rows of hubs stay 0 here (their chunks write after the n_dst rows).
        datt_part = torch.zeros((n_dst + n_slots, H, D), dtype=torch.float32, device=device) if need_da else dummy
        for cls, it in enumerate(items):
            n_items = it.shape[0]
            if n_items == 0:
                continue
            block_e, ipp, num_warps = _launch_config(cls, hb, d_max)
            _csr_bwd_dq_kernel[(triton.cdiv(n_items, ipp), n_hb)](
                q_t, k_t, v_t, bias_t, do_t, lse_t, delta_t, dq, _or_dummy(dbias, dummy), part,
                _or_dummy(col, idx_dummy), _or_dummy(eid, idx_dummy), it, n_items,
                H, D, DV, *common_strides, *extra_args, datt_part, n_dst,
                extras.slope, extras.threshold, extras.keep_scale,
                HAS_BIAS=has_bias, NEED_DBIAS=need_db, NEED_EID=need_eid or need_db, HB=hb,
                D_PAD=d_pad, DV_PAD=dv_pad, BLOCK_E=block_e, ITEMS_PER_PROG=ipp,
                NEED_DATT=need_da, **extra_flags, num_warps=num_warps,
            )
        _merge_sum(part, dq, plan, "", H * D)
        if need_da:
            datt = datt_part.sum(0)

    # 3. dK, dV over source rows (transposed CSR)
    if n_src:
        n_slots = plan["t_slot_row"].shape[0]
        part_k = torch.empty((n_slots, H, D), dtype=torch.float32, device=device) if n_slots else dummy
        part_v = torch.empty((n_slots, H, DV), dtype=torch.float32, device=device) if n_slots else dummy
        for cls, it in enumerate(t_items):
            n_items = it.shape[0]
            if n_items == 0:
                continue
            block_e, ipp, num_warps = _launch_config(cls, hb, d_max)
            _csr_bwd_dkdv_kernel[(triton.cdiv(n_items, ipp), n_hb)](
                q_t, k_t, v_t, bias_t, do_t, lse_t, delta_t, dk, dv, part_k, part_v,
                _or_dummy(row_t, idx_dummy), _or_dummy(eid_t, idx_dummy), it, n_items,
                H, D, DV, *common_strides, *extra_args,
                extras.slope, extras.threshold, extras.keep_scale,
                HAS_BIAS=has_bias, HB=hb, D_PAD=d_pad, DV_PAD=dv_pad,
                BLOCK_E=block_e, ITEMS_PER_PROG=ipp,
                NEED_EID=need_eid, **extra_flags, num_warps=num_warps,
            )
        _merge_sum(part_k, dk, plan, "t_", H * D)
        _merge_sum(part_v, dv, plan, "t_", H * DV)
    return dq, dk, dv, dbias, datt
