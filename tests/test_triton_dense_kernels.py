"""Triton dense / segment attention kernels (kernels/dense_attention.py) vs the float64 reference.

Runs on CUDA when available, else on CPU through Triton's interpreter
(TRITON_INTERPRET=1 must be set before triton is imported; sizes are small and the
kernels use one 16x16 block config there).

Tolerances: float32 is compared elementwise against float64 (the kernels use exact
fp32 dots, input_precision="ieee"). float16 / bfloat16 follow flash-attention's
rule: the kernel's max error against float64 must stay within 3x the error of the
same reference computed by torch in that dtype (plus a small floor).
"""

import pytest
import torch

# tests/conftest.py switches Triton's interpreter on when there is no GPU.
triton = pytest.importorskip("triton")

import graphattn.kernels.dense_attention as kda  # noqa: E402
from graphattn.kernels.dense_attention import (  # noqa: E402
    build_segment_plan,
    dense_attention_backward,
    dense_attention_forward,
    segment_attention_backward,
    segment_attention_forward,
)

from graphattn.reference import dense_attention, segment_attention  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu" and not kda._INTERPRET:
    pytest.skip("no GPU and the kernels were not loaded under TRITON_INTERPRET=1", allow_module_level=True)

LOWP = {"f16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- helpers


def _randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)


def _ref_dense(q, k, v, scale, causal, do, glse, dtype=torch.float64):
    """Reference (out, lse, dq, dk, dv) computed by autograd in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
    out, lse = dense_attention(*leaves, scale=scale, causal=causal)
    grads = [do.to(dtype)] + ([glse.to(dtype)] if glse is not None else [])
    outs = [out] + ([lse] if glse is not None else [])
    dq, dk, dv = torch.autograd.grad(outs, leaves, grads)
    return out.detach(), lse.detach(), dq, dk, dv


def _ref_segment(q, k, v, ptr, scale, do, glse, dtype=torch.float64):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
    out, lse = segment_attention(*leaves, ptr.cpu() if ptr.device.type != "cpu" else ptr, scale=scale)
    grads = [do.to(dtype)] + ([glse.to(dtype)] if glse is not None else [])
    outs = [out] + ([lse] if glse is not None else [])
    dq, dk, dv = torch.autograd.grad(outs, leaves, grads)
    return out.detach(), lse.detach(), dq, dk, dv


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _check_f32(got, ref, names=("out", "lse", "dq", "dk", "dv"), atol=1e-4, rtol=1e-4):
    for name, g, r in zip(names, got, ref):
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        torch.testing.assert_close(g.double(), r.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _check_lowp(got, ref64, ref_lowp, names=("out", "lse", "dq", "dk", "dv"), factor=3.0, floor=1e-4):
    for name, g, r, t in zip(names, got, ref64, ref_lowp):
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err, torch_err = _max_err(g, r), _max_err(t, r)
        scale = r.abs().max().item() + 1e-6
        assert err <= factor * torch_err + floor * scale, (
            f"{name}: max error {err:.3g} > {factor} x torch's own {torch_err:.3g} (+ {floor * scale:.2g})")


def _run_dense(q, k, v, scale, causal, do, glse):
    out, lse = dense_attention_forward(q, k, v, scale, causal)
    dq, dk, dv = dense_attention_backward(do, glse, q, k, v, out, lse, scale, causal)
    return out, lse, dq, dk, dv


# ----------------------------------------------------------------------------- dense, float32

DENSE_CASES = [
    # B, Lq, Lk, H, D, Dv, causal, with_grad_lse
    (2, 17, 17, 3, 8, 8, False, True),
    (2, 17, 17, 1, 40, 24, True, True),  # D not a power of two, Dv != D
    (1, 63, 63, 1, 16, 16, True, False),  # several tiles, ragged tail
    (2, 1, 1, 3, 8, 8, True, True),  # L = 1
    (1, 17, 40, 2, 40, 8, True, True),  # causal, Lq < Lk
    (1, 40, 17, 2, 8, 40, True, False),  # causal, Lq > Lk: rows past Lk see every key
    (1, 33, 47, 1, 8, 8, False, True),  # Lq != Lk
    (1, 32, 32, 1, 16, 32, True, True),  # exact tile multiples, unmasked fast path
    (1, 17, 9, 1, 1, 3, False, False),  # D = 1, Dv = 3
]


@pytest.mark.parametrize("B,Lq,Lk,H,D,Dv,causal,with_glse", DENSE_CASES)
def test_dense_float32_matches_reference(B, Lq, Lk, H, D, Dv, causal, with_glse):
    q = _randn(B, Lq, H, D, seed=1)
    k = _randn(B, Lk, H, D, seed=2)
    v = _randn(B, Lk, H, Dv, seed=3)
    do = _randn(B, Lq, H, Dv, seed=4)
    glse = _randn(B, Lq, H, seed=5) if with_glse else None
    scale = 0.3
    got = _run_dense(q, k, v, scale, causal, do, glse)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[0].is_contiguous() and got[0].shape == (B, Lq, H, Dv)
    _check_f32(got, _ref_dense(q, k, v, scale, causal, do, glse))


def test_dense_matches_sdpa_default_scale():
    """Cross-check the contract against torch's SDPA itself (scale=None -> 1/sqrt(D))."""
    q, k, v = _randn(2, 19, 3, 24, seed=11), _randn(2, 23, 3, 24, seed=12), _randn(2, 23, 3, 16, seed=13)
    for causal in (False, True):
        out, _ = dense_attention_forward(q, k, v, None, causal)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double(), is_causal=causal
        ).transpose(1, 2)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_dense_negative_scale_and_large_logits():
    """Large logits (|s| ~ 1e3) must not overflow; a negative scale flips the max."""
    q, k = _randn(1, 21, 2, 16, seed=21, scale=8.0), _randn(1, 21, 2, 16, seed=22, scale=8.0)
    v = _randn(1, 21, 2, 8, seed=23)
    do, glse = _randn(1, 21, 2, 8, seed=24), _randn(1, 21, 2, seed=25)
    for scale, causal in ((1.0, True), (-0.7, False)):
        got = _run_dense(q, k, v, scale, causal, do, glse)
        ref = _ref_dense(q, k, v, scale, causal, do, glse)
        assert ref[1].abs().max() > 200  # the logits really are large
        _check_f32(got, ref, atol=2e-3, rtol=1e-4)


def test_dense_noncontiguous_inputs():
    """Every input with its own strides: q a slice of a packed [B, L, 3, H, D] tensor,
    k in [B, H, L, D] storage, v a slice of a wider tensor, grad_out and grad_lse transposed.
    Memory outside the views holds NaN: a kernel that reads past D (the tiles are padded
    to 32) without a mask turns its results into NaN."""
    B, L, H, D = 2, 19, 2, 24
    qkv = _randn(B, L, 3, H, D + 8, seed=31)
    qkv[..., D:] = float("nan")
    q = qkv[:, :, 0, :, :D]
    k_store = _randn(B, H, L, D + 8, seed=34)
    k_store[..., D:] = float("nan")
    k = k_store[..., :D].transpose(1, 2)
    v_store = _randn(B, L, H, 2 * D, seed=35)
    v_store[..., :4] = float("nan")
    v_store[..., 4 + D:] = float("nan")
    v = v_store[..., 4:4 + D]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    assert len({q.stride(), k.stride(), v.stride()}) == 3
    do = _randn(B, H, L, D, seed=32).transpose(1, 2)
    glse = _randn(B, H, L, seed=33).transpose(1, 2)
    got = _run_dense(q, k, v, 0.25, True, do, glse)
    _check_f32(got, _ref_dense(q, k, v, 0.25, True, do, glse))
    assert got[2].shape == q.shape and got[3].shape == k.shape and got[4].shape == v.shape


def test_dense_empty_keys_and_queries():
    q, k, v = _randn(2, 5, 3, 8, seed=41), _randn(2, 0, 3, 8, seed=42), _randn(2, 0, 3, 6, seed=43)
    out, lse = dense_attention_forward(q, k, v, None, True)
    assert out.shape == (2, 5, 3, 6) and torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, float("-inf")))
    dq, dk, dv = dense_attention_backward(torch.ones_like(out), None, q, k, v, out, lse, None, True)
    assert torch.equal(dq, torch.zeros_like(q)) and dk.shape == k.shape and dv.shape == v.shape
    # Lq = 0: empty outputs, zero key gradients
    q0 = _randn(1, 0, 2, 8, seed=44)
    k1, v1 = _randn(1, 3, 2, 8, seed=45), _randn(1, 3, 2, 8, seed=46)
    out, lse = dense_attention_forward(q0, k1, v1, None, False)
    assert out.shape == (1, 0, 2, 8) and lse.shape == (1, 0, 2)
    dq, dk, dv = dense_attention_backward(out, None, q0, k1, v1, out, lse, None, False)
    assert torch.equal(dk, torch.zeros_like(k1)) and torch.equal(dv, torch.zeros_like(v1))


# ----------------------------------------------------------------------------- dense, low precision


@pytest.mark.parametrize("dt", ["f16", "bf16"])
@pytest.mark.parametrize("B,Lq,Lk,H,D,Dv,causal", [
    (2, 63, 50, 1, 40, 24, True),
    (1, 17, 33, 3, 64, 64, False),
])
def test_dense_low_precision(dt, B, Lq, Lk, H, D, Dv, causal):
    dtype = LOWP[dt]
    q, k, v = (_randn(B, L, H, d, dtype=dtype, seed=s) for L, d, s in ((Lq, D, 51), (Lk, D, 52), (Lk, Dv, 53)))
    do = _randn(B, Lq, H, Dv, dtype=dtype, seed=54)
    glse = _randn(B, Lq, H, seed=55)
    got = _run_dense(q, k, v, None, causal, do, glse)
    assert all(t.dtype == dtype for t in (got[0], got[2], got[3], got[4])) and got[1].dtype == torch.float32
    ref64 = _ref_dense(q, k, v, None, causal, do, glse)
    ref_lowp = _ref_dense(q, k, v, None, causal, do, glse, dtype=dtype)
    _check_lowp(got, ref64, ref_lowp)


# ----------------------------------------------------------------------------- block shapes


def _with_configs(monkeypatch, **blocks):
    """Force one config per autotuner (as the GPU may pick), e.g. fwd=(32, 16)."""
    names = {"fwd": kda._fwd_dense, "dkdv": kda._dkdv_dense, "dq": kda._dq_dense}
    for name, (bm, bn) in blocks.items():
        monkeypatch.setattr(names[name], "configs", [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4)])


def test_dense_unequal_block_shapes(monkeypatch):
    """BLOCK_M != BLOCK_N: the causal stage split (unmasked / diagonal) must still cover
    every key exactly once, in all three kernels, also with Lq != Lk."""
    _with_configs(monkeypatch, fwd=(32, 16), dkdv=(16, 32), dq=(32, 16))
    for Lq, Lk in ((45, 45), (37, 70)):
        q, k, v = _randn(1, Lq, 1, 8, seed=61), _randn(1, Lk, 1, 8, seed=62), _randn(1, Lk, 1, 8, seed=63)
        do, glse = _randn(1, Lq, 1, 8, seed=64), _randn(1, Lq, 1, seed=65)
        got = _run_dense(q, k, v, 0.5, True, do, glse)
        _check_f32(got, _ref_dense(q, k, v, 0.5, True, do, glse))


def test_dense_backward_is_deterministic():
    q, k, v = _randn(1, 40, 2, 16, seed=71), _randn(1, 40, 2, 16, seed=72), _randn(1, 40, 2, 16, seed=73)
    do = _randn(1, 40, 2, 16, seed=74)
    out, lse = dense_attention_forward(q, k, v, None, True)
    first = dense_attention_backward(do, None, q, k, v, out, lse, None, True)
    second = dense_attention_backward(do, None, q, k, v, out, lse, None, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_row_without_keys_gets_no_gradient(causal):
    """lse = -inf marks a row that attends to nothing (what the forward gives a row without keys):
    its P is 0, so it gets dq = 0 and adds nothing to dk, dv; never NaN (exp(s - lse) would be inf).
    Rows 3 and 17 lie in a full query tile and in the ragged last one (16-row tiles under the
    interpreter): the unmasked and the masked stage of the dK/dV kernel."""
    B, Lq, Lk, H, D = 1, 20, 18, 2, 8
    q, k, v = _randn(B, Lq, H, D, seed=121), _randn(B, Lk, H, D, seed=122), _randn(B, Lk, H, D, seed=123)
    do, glse = _randn(B, Lq, H, D, seed=124), _randn(B, Lq, H, seed=125)
    out, lse = dense_attention_forward(q, k, v, 0.3, causal)
    empty = [(0, 3, 1), (0, 17, 0)]
    for b, r, h in empty:
        out[b, r, h], lse[b, r, h] = 0.0, float("-inf")
    dq, dk, dv = dense_attention_backward(do, glse, q, k, v, out, lse, 0.3, causal)
    # The same as zeroing those rows' incoming gradients (their dq is then 0 as well).
    do0, glse0 = do.clone(), glse.clone()
    for b, r, h in empty:
        do0[b, r, h], glse0[b, r, h] = 0.0, 0.0
    _, _, rdq, rdk, rdv = _ref_dense(q, k, v, 0.3, causal, do0, glse0)
    _check_f32((dq, dk, dv), (rdq, rdk, rdv), names=("dq", "dk", "dv"))
    assert all(torch.all(dq[b, r, h] == 0) for b, r, h in empty)


def test_kernel_layout_keeps_tile_offsets_in_int32():
    """Offsets inside a tile are int32 (the tile's base is int64): a view whose row stride would
    overflow them (sequence-first [L, B, H, D] permuted, B * H * D > 2^23) is copied contiguous, one
    that fits is used as it is; H * head dim too large for any layout is refused. Meta tensors: no memory."""
    fits = torch.empty(64, 4, 8, 64, device="meta").permute(1, 0, 2, 3)  # row stride 4 * 8 * 64
    assert kda._kernel_layout(fits) is fits
    wide = torch.empty(64, 2**12, 32, 64, device="meta").permute(1, 0, 2, 3)  # row stride 2^23
    assert not wide.is_contiguous() and kda._kernel_layout(wide).is_contiguous()
    lse = torch.empty(64, 2**24, 2, device="meta").permute(1, 0, 2)  # [B, L, H], row stride 2^25
    assert kda._kernel_layout(lse, row_dim=-2).is_contiguous()
    q = torch.empty(1, 4, 2**16, 128, device="meta")  # H * D = 2^23: 256 rows of it pass 2^31
    with pytest.raises(ValueError, match="too large"):
        dense_attention_forward(q, q, q, None, False)


# ----------------------------------------------------------------------------- segments

SIZES = [5, 1, 0, 70, 16, 2]  # size-1, empty, one bigger than the block (16 here, 64 on GPU), an exact block


def _ptr(sizes):
    return torch.tensor([0] + list(sizes), dtype=torch.int64).cumsum(0).to(device)


def test_build_segment_plan_covers_every_node_once():
    ptr = _ptr(SIZES)
    plan = build_segment_plan(ptr, 16)
    assert plan.dtype == torch.int32 and plan.dim() == 2 and plan.shape[1] == 2
    seg, start = plan[:, 0].long().cpu(), plan[:, 1].long().cpu()
    p = ptr.cpu()
    assert plan.shape[0] == sum((s + 15) // 16 for s in SIZES)
    covered = torch.zeros(int(p[-1]), dtype=torch.int64)
    for s, st in zip(seg.tolist(), start.tolist()):
        assert p[s] <= st < p[s + 1]  # a tile lies inside its (non-empty) segment
        covered[st:min(st + 16, int(p[s + 1]))] += 1
    assert torch.equal(covered, torch.ones_like(covered))
    sizes = (p[1:] - p[:-1])[seg]
    assert torch.all(sizes[:-1] >= sizes[1:])  # largest segments first
    assert build_segment_plan(torch.zeros(1, dtype=torch.int64), 16).shape == (0, 2)
    with pytest.raises(ValueError):
        build_segment_plan(torch.tensor([0, 3, 2]), 16)
    with pytest.raises(ValueError):
        build_segment_plan(ptr, 16, num_nodes=int(p[-1]) + 1)


@pytest.mark.parametrize("with_glse", [True, False])
def test_segment_float32_matches_reference(with_glse):
    ptr = _ptr(SIZES)
    N, H, D, Dv = int(ptr[-1]), 2, 40, 24
    q, k, v = _randn(N, H, D, seed=81), _randn(N, H, D, seed=82), _randn(N, H, Dv, seed=83)
    do = _randn(N, H, Dv, seed=84)
    glse = _randn(N, H, seed=85) if with_glse else None
    out, lse = segment_attention_forward(q, k, v, ptr, 0.2)
    dq, dk, dv = segment_attention_backward(do, glse, q, k, v, out, lse, ptr, 0.2)
    _check_f32((out, lse, dq, dk, dv), _ref_segment(q, k, v, ptr, 0.2, do, glse))


def test_segment_cached_plan_other_block_and_noncontiguous():
    """A plan built once (block 32) and passed in; inputs are slices of a packed tensor."""
    sizes = [1, 0, 45, 3]
    ptr = _ptr(sizes)
    N, H, D = int(ptr[-1]), 3, 8
    qkv = _randn(N, 3, H, D + 8, seed=91)
    qkv[..., D:] = float("nan")  # never read: the tiles (16 wide) mask past D = 8
    q, v = qkv[:, 0, :, :D], qkv[:, 2, :, :D]
    k = _randn(H, N, D, seed=94).transpose(0, 1)  # strides unlike q's
    do, glse = _randn(N, H, D, seed=92), _randn(N, H, seed=93)
    plan = build_segment_plan(ptr, 32)
    out, lse = segment_attention_forward(q, k, v, ptr, None, plan=plan, block_m=32)
    dq, dk, dv = segment_attention_backward(do, glse, q, k, v, out, lse, ptr, None, plan=plan, block_m=32)
    _check_f32((out, lse, dq, dk, dv), _ref_segment(q, k, v, ptr, None, do, glse))
    # the default plan gives the same answer
    out2, lse2 = segment_attention_forward(q, k, v, ptr, None)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse2, lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_segment_low_precision(dt):
    dtype = LOWP[dt]
    ptr = _ptr(SIZES)
    N, H, D = int(ptr[-1]), 1, 40
    q, k, v = (_randn(N, H, D, dtype=dtype, seed=s, scale=2.0) for s in (101, 102, 103))
    do, glse = _randn(N, H, D, dtype=dtype, seed=104), _randn(N, H, seed=105)
    out, lse = segment_attention_forward(q, k, v, ptr, None)
    dq, dk, dv = segment_attention_backward(do, glse, q, k, v, out, lse, ptr, None)
    assert out.dtype == dtype and lse.dtype == torch.float32 and dq.dtype == dtype
    ref64 = _ref_segment(q, k, v, ptr, None, do, glse)
    ref_lowp = _ref_segment(q, k, v, ptr, None, do, glse, dtype=dtype)
    _check_lowp((out, lse, dq, dk, dv), ref64, ref_lowp)


def test_segment_row_without_keys_gets_no_gradient():
    """As test_dense_row_without_keys_gets_no_gradient, for segments (row 2 of a 5-node segment, and
    rows in the full and the ragged tile of a 20-node one)."""
    ptr = _ptr([5, 20])
    N, H, D = int(ptr[-1]), 2, 8
    q, k, v = _randn(N, H, D, seed=131), _randn(N, H, D, seed=132), _randn(N, H, D, seed=133)
    do, glse = _randn(N, H, D, seed=134), _randn(N, H, seed=135)
    out, lse = segment_attention_forward(q, k, v, ptr, 0.4)
    empty = [(2, 0), (9, 1), (23, 0)]
    for r, h in empty:
        out[r, h], lse[r, h] = 0.0, float("-inf")
    dq, dk, dv = segment_attention_backward(do, glse, q, k, v, out, lse, ptr, 0.4)
    do0, glse0 = do.clone(), glse.clone()
    for r, h in empty:
        do0[r, h], glse0[r, h] = 0.0, 0.0
    _, _, rdq, rdk, rdv = _ref_segment(q, k, v, ptr, 0.4, do0, glse0)
    _check_f32((dq, dk, dv), (rdq, rdk, rdv), names=("dq", "dk", "dv"))
    assert all(torch.all(dq[r, h] == 0) for r, h in empty)


def test_segment_no_nodes():
    for sizes in ([], [0, 0]):
        ptr = _ptr(sizes)
        q = _randn(0, 2, 8, seed=111)
        out, lse = segment_attention_forward(q, q, q, ptr, None)
        assert out.shape == (0, 2, 8) and lse.shape == (0, 2)
        grads = segment_attention_backward(out, None, q, q, q, out, lse, ptr, None)
        assert all(g.shape == (0, 2, 8) for g in grads)
