"""Triton CSR attention kernels (kernels/csr_attention.py) against the float64 reference.

Runs on CUDA when available, else on CPU through Triton's interpreter
(TRITON_INTERPRET=1 must be set before triton is imported; sizes are small).
"""
import math
import os

import pytest
import torch

# tests/conftest.py switches Triton's interpreter on when there is no GPU.
triton = pytest.importorskip("triton")

from graphattn.kernels.csr_attention import (  # noqa: E402
    DEGREE_CLASSES,
    HUB_CHUNK,
    build_csr_plan,
    csr_attention_backward,
    csr_attention_forward,
)
from graphattn.reference import sparse_attention  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Relative-RMS tolerances for low precision: the kernel computes in float32 from
# low-precision inputs, so its error is about one rounding of the output
# (2^-11 for f16, 2^-8 for bf16); these leave ~3-4x margin.
REL_RMS = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def to_csr(src, dst, n_src, n_dst):
    """Target-sorted CSR and source-sorted (transposed) CSR of an unsorted edge list."""
    dst_sorted, order = torch.sort(dst, stable=True)
    rowptr = torch.searchsorted(dst_sorted, torch.arange(n_dst + 1, device=dst.device))
    col, eid = src[order].contiguous(), order
    col_sorted, order_t = torch.sort(col, stable=True)
    colptr = torch.searchsorted(col_sorted, torch.arange(n_src + 1, device=dst.device))
    return dict(rowptr=rowptr, col=col, eid=eid, colptr=colptr,
                row_t=dst_sorted[order_t].contiguous(), eid_t=eid[order_t].contiguous())


def random_edges(n_src, n_dst, n_edges, *, hub_in=0, hub_out=0, seed=0):
    """Unsorted edges with duplicates, self-loops, an isolated last target and optional hubs."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (n_edges,), generator=g)
    dst = torch.randint(0, max(n_dst - 1, 1), (n_edges,), generator=g)  # target n_dst-1 gets nothing
    n_loop = min(n_src, n_dst - 1, 3)
    loops = torch.arange(n_loop)
    parts_s, parts_d = [src, loops, src[:4]], [dst, loops, dst[:4]]  # self-loops, duplicates
    if hub_in:
        parts_s.append(torch.randint(0, n_src, (hub_in,), generator=g))
        parts_d.append(torch.zeros(hub_in, dtype=torch.long))
    if hub_out:
        parts_s.append(torch.full((hub_out,), n_src - 1, dtype=torch.long))
        parts_d.append(torch.randint(0, max(n_dst - 1, 1), (hub_out,), generator=g))
    src, dst = torch.cat(parts_s), torch.cat(parts_d)
    perm = torch.randperm(src.numel(), generator=g)  # unsorted
    return src[perm].to(device), dst[perm].to(device)


def strided(t, extra=2):
    """The same values as a non-contiguous view: a slice of a bigger [N, 3, H, D+extra] tensor."""
    n, h, d = t.shape
    big = torch.zeros(n, 3, h, d + extra, dtype=t.dtype, device=t.device)
    big[:, 1, :, :d] = t
    view = big[:, 1, :, :d]
    assert not view.is_contiguous()
    return view


def reference(q, k, v, src, dst, bias, scale, grad_out, grad_lse):
    """float64 out, lse and gradients (wrt q, k, v, bias) from the pure-PyTorch oracle."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    out, lse = sparse_attention(*leaves, src, dst, b64, scale)
    loss = (out * grad_out.double()).sum()
    if grad_lse is not None:
        loss = loss + torch.where(torch.isfinite(lse), lse * grad_lse.double(), torch.zeros_like(lse)).sum()
    grads = torch.autograd.grad(loss, leaves + ([b64] if b64 is not None else []), allow_unused=True)
    dq, dk, dv = grads[:3]
    db = grads[3] if b64 is not None else None
    return out.detach(), lse.detach(), dq, dk, dv, db


def assert_close(name, actual, expected, dtype, rtol=1e-4):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    a, e = actual.double().cpu(), expected.double().cpu()
    if a.numel() == 0:
        return
    scale_ = e.abs().max().clamp_min(1e-12)
    if dtype == torch.float32:
        err = (a - e).abs().max() / scale_
        assert err < rtol, f"{name}: max abs error / max abs = {err:.3g} >= {rtol}"
    else:
        rel = (a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-12)
        assert rel < REL_RMS[dtype], f"{name}: relative RMS error {rel:.3g} >= {REL_RMS[dtype]}"


def run_and_check(q, k, v, src, dst, bias, scale, *, grad_lse=True, plan_kw=None, seed=1,
                  grad_out_layout="contiguous", rtol=1e-4):
    n_dst, H, _ = q.shape
    n_src, Dv = k.shape[0], v.shape[2]
    dtype = q.dtype
    g = to_csr(src, dst, n_src, n_dst)
    plan = None if plan_kw is None else build_csr_plan(g["rowptr"], g["colptr"], **plan_kw)
    # The kernels take a [E] bias as an expanded [E, H] view (head stride 0).
    bias_k = bias[:, None].expand(bias.shape[0], H) if bias is not None and bias.dim() == 1 else bias

    out, lse = csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], bias_k, scale, plan=plan)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (n_dst, H, Dv)
    assert lse.dtype == torch.float32 and lse.shape == (n_dst, H)

    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(n_dst, H, Dv, generator=gen).to(device=device, dtype=dtype)
    if grad_out_layout == "transposed":  # last-dim stride != 1
        go = go.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        assert go.stride(-1) != 1 or Dv == 1
    elif grad_out_layout == "strided":
        go = strided(go)
    gl = torch.randn(n_dst, H, generator=gen).to(device) if grad_lse else None

    ro, rl, rdq, rdk, rdv, rdb = reference(q, k, v, src, dst, bias, scale, go, gl)
    assert_close("out", out, ro, dtype, rtol)
    finite = torch.isfinite(rl)
    assert torch.equal(torch.isfinite(lse).cpu(), finite.cpu()), "lse: -inf pattern differs"
    assert torch.equal(lse.cpu()[~finite.cpu()], rl.float().cpu()[~finite.cpu()]), "lse of empty targets must be -inf"
    lse_tol = rtol if dtype == torch.float32 else 1e-3  # lse is float32 in every case
    assert_close("lse", lse[finite], rl[finite], torch.float32, lse_tol)

    dq, dk, dv, db = csr_attention_backward(
        go, gl, q, k, v, bias_k, out, lse, g["rowptr"], g["col"], g["eid"],
        g["colptr"], g["row_t"], g["eid_t"], scale, bias is not None, plan=plan)
    for name, a, r, like in (("dq", dq, rdq, q), ("dk", dk, rdk, k), ("dv", dv, rdv, v)):
        assert a.dtype == dtype and a.is_contiguous() and a.shape == like.shape
        assert_close(name, a, r, dtype, rtol)
    if bias is None:
        assert db is None
    else:
        assert db.shape == (src.numel(), H) and db.dtype == dtype
        # dbias of a [E] bias is the sum over heads of the [E, H] dbias.
        assert_close("dbias", db.sum(1) if bias.dim() == 1 else db, rdb, dtype, rtol)
    return out, lse, (dq, dk, dv, db)


def make_qkv(n_src, n_dst, H, D, Dv, dtype, *, seed=0, layout="contiguous", mag=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(n_dst, H, D, generator=g) * mag).to(device=device, dtype=dtype)
    k = (torch.randn(n_src, H, D, generator=g) * mag).to(device=device, dtype=dtype)
    v = torch.randn(n_src, H, Dv, generator=g).to(device=device, dtype=dtype)
    if layout == "strided":
        q, k, v = strided(q), strided(k, 3), strided(v, 1)
    return q, k, v


def make_bias(kind, E, H, dtype, seed=2):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    shape = (E, H) if kind == "EH" else (E,)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
CASES = [
    # dtype, H, D, Dv, bias, layout, grad_lse, grad_out layout, hub_chunk
    pytest.param("f32", 3, 7, 5, "EH", "contiguous", True, "contiguous", 8, id="f32-H3-D7-Dv5-biasEH-lse-split"),
    pytest.param("f32", 1, 40, 16, "E", "strided", False, "strided", None, id="f32-H1-D40-Dv16-biasE-strided"),
    pytest.param("f16", 3, 40, 40, "E", "strided", True, "contiguous", 8, id="f16-H3-D40-biasE-strided-split"),
    pytest.param("bf16", 3, 1, 3, None, "contiguous", True, "transposed", None, id="bf16-H3-D1-Dv3-nobias"),
    pytest.param("bf16", 1, 7, 9, "EH", "strided", False, "contiguous", 8, id="bf16-H1-D7-Dv9-biasEH-split"),
    # H * D_pad > 512: heads split over 3 programs (2 + 2 + 1 heads, the last block partly masked)
    pytest.param("f32", 5, 130, 20, "EH", "strided", True, "contiguous", 8, id="f32-H5-D130-Dv20-headblocks"),
]


@pytest.mark.parametrize("dt,H,D,Dv,bias_kind,layout,grad_lse,go_layout,hub_chunk", CASES)
def test_matches_reference(dt, H, D, Dv, bias_kind, layout, grad_lse, go_layout, hub_chunk):
    dtype = DTYPES[dt]
    n_src, n_dst = 9, 11
    # hub_in=20 > hub_chunk=8 and > the short classes: the target hub is split into 3 chunks,
    # and source n_src-1 has out-degree >= 20 (split in the dK/dV pass).
    src, dst = random_edges(n_src, n_dst, 30, hub_in=20, hub_out=20, seed=H * 100 + D)
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, dtype, seed=D, layout=layout)
    bias = make_bias(bias_kind, src.numel(), H, dtype)
    plan_kw = None if hub_chunk is None else {"hub_chunk": hub_chunk}
    out, lse, _ = run_and_check(q, k, v, src, dst, bias, 1.0 / math.sqrt(D), grad_lse=grad_lse,
                                plan_kw=plan_kw, grad_out_layout=go_layout)
    # The isolated last target: exact zeros and -inf, no NaN.
    assert torch.all(out[-1] == 0) and torch.all(lse[-1] == -math.inf)


@pytest.mark.parametrize("hub_chunk", [64, HUB_CHUNK, 10**9])
def test_hub_rows_split_and_merged(hub_chunk):
    """A target with in-degree 300 and a source with out-degree 300, far above BLOCK_E."""
    H, D, Dv = 2, 8, 4
    n_src, n_dst = 6, 5
    src, dst = random_edges(n_src, n_dst, 12, hub_in=300, hub_out=300, seed=5)
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, torch.float32, seed=3)
    bias = make_bias("EH", src.numel(), H, torch.float32)
    g = to_csr(src, dst, n_src, n_dst)
    plan = build_csr_plan(g["rowptr"], g["colptr"], hub_chunk=hub_chunk)
    if hub_chunk >= 10**9:
        assert plan["merge_rows"].numel() == 0 and plan["t_merge_rows"].numel() == 0
    else:  # target 0 and source n_src-1 are split into chunks (other rows may be too)
        assert 0 in plan["merge_rows"].tolist() and n_src - 1 in plan["t_merge_rows"].tolist()
        assert (plan["slot_row"] == 0).sum() >= math.ceil(300 / hub_chunk)
        assert (plan["t_slot_row"] == n_src - 1).sum() >= math.ceil(300 / hub_chunk)
    run_and_check(q, k, v, src, dst, bias, 0.3, plan_kw={"hub_chunk": hub_chunk})


def test_split_equals_unsplit_low_precision():
    """fp16 with a hub split into many chunks agrees with the unsplit schedule."""
    H, D, Dv = 3, 7, 7
    n_src = n_dst = 4
    src, dst = random_edges(n_src, n_dst, 8, hub_in=300, seed=7)
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, torch.float16, seed=4)
    g = to_csr(src, dst, n_src, n_dst)
    results = []
    for chunk in (16, 10**9):
        plan = build_csr_plan(g["rowptr"], g["colptr"], hub_chunk=chunk)
        out, lse = csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], None, 0.5, plan=plan)
        results.append((out.float(), lse))
    (o1, l1), (o2, l2) = results
    finite = torch.isfinite(l2)
    assert torch.equal(torch.isfinite(l1), finite)
    assert (l1[finite] - l2[finite]).abs().max() < 1e-4
    assert (o1 - o2).abs().max() < 2e-3  # at most one fp16 rounding of |out| < 4 apart
    ro, rl = sparse_attention(q.double(), k.double(), v.double(), src, dst, None, 0.5)
    assert_close("out (split fp16)", results[0][0], ro, torch.float16)


@pytest.mark.parametrize("n_src,n_dst", [(2, 3), (0, 2), (3, 0)])
def test_no_edges(n_src, n_dst):
    H, D, Dv = 2, 5, 3
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, torch.float32)
    src = dst = torch.zeros(0, dtype=torch.long, device=device)
    g = to_csr(src, dst, n_src, n_dst)
    bias = torch.zeros(0, H, device=device)
    out, lse = csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], bias, 0.5)
    assert out.shape == (n_dst, H, Dv) and lse.shape == (n_dst, H)
    assert torch.all(out == 0) and torch.all(lse == -math.inf)
    go = torch.randn(n_dst, H, Dv, device=device)
    gl = torch.randn(n_dst, H, device=device)
    dq, dk, dv, db = csr_attention_backward(
        go, gl, q, k, v, bias, out, lse, g["rowptr"], g["col"], g["eid"],
        g["colptr"], g["row_t"], g["eid_t"], 0.5, True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape and db.shape == (0, H)
    for t in (dq, dk, dv):
        assert torch.all(t == 0)


@pytest.mark.parametrize("dt", ["f32", "bf16"])
def test_single_node(dt):
    """N = 1: one node with a self-loop twice (duplicate), and N_src = 1 feeding 2 targets."""
    dtype = DTYPES[dt]
    q, k, v = make_qkv(1, 1, 3, 7, 2, dtype)
    src = torch.tensor([0, 0], device=device)
    dst = torch.tensor([0, 0], device=device)
    run_and_check(q, k, v, src, dst, make_bias("EH", 2, 3, dtype), 0.7)
    q2, k2, v2 = make_qkv(1, 3, 1, 7, 2, dtype, seed=1)
    run_and_check(q2, k2, v2, torch.tensor([0, 0], device=device), torch.tensor([2, 0], device=device),
                  None, 0.7)


@pytest.mark.parametrize("dt", ["f32", "f16"])
def test_large_logits_do_not_overflow(dt):
    """Scores of magnitude ~1e4 (exp would overflow without max-subtraction)."""
    dtype = DTYPES[dt]
    H, D, Dv = 2, 4, 3
    n = 6
    src, dst = random_edges(n, n, 20, hub_in=20, seed=11)
    q, k, v = make_qkv(n, n, H, D, Dv, dtype, seed=2, mag=70.0)
    bias = make_bias("EH", src.numel(), H, dtype) * 1000
    s = (q.double()[dst] * k.double()[src]).sum(-1)
    assert s.abs().max() > 5e3
    # float32 scores of magnitude 1e4 carry ~1e-3 absolute rounding (also in the
    # kernel's own recomputation in the backward), hence the looser tolerance.
    out, lse, grads = run_and_check(q, k, v, src, dst, bias, 1.0, plan_kw={"hub_chunk": 8}, rtol=2e-2)
    assert torch.isfinite(out).all() and torch.isfinite(lse[:-1]).all()
    for t in grads:
        assert torch.isfinite(t).all()


def test_all_bias_minus_inf_row_is_zero_not_nan():
    """A target whose every edge has bias -inf behaves like a target without edges."""
    H, D, Dv = 1, 3, 2
    q, k, v = make_qkv(3, 2, H, D, Dv, torch.float32)
    src = torch.tensor([0, 1, 2, 0], device=device)
    dst = torch.tensor([0, 0, 1, 1], device=device)
    bias = torch.tensor([[-math.inf], [-math.inf], [0.0], [1.0]], device=device)
    g = to_csr(src, dst, 3, 2)
    out, lse = csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], bias, 1.0)
    assert torch.all(out[0] == 0) and lse[0, 0] == -math.inf
    ro, rl = sparse_attention(q.double(), k.double(), v.double(), src, dst, bias.double(), 1.0)
    assert_close("out row 1", out[1], ro[1], torch.float32)
    go = torch.ones(2, H, Dv, device=device)
    dq, dk, dv, db = csr_attention_backward(
        go, None, q, k, v, bias, out, lse, g["rowptr"], g["col"], g["eid"],
        g["colptr"], g["row_t"], g["eid_t"], 1.0, True)
    for t in (dq, dk, dv, db):
        assert torch.isfinite(t).all()
    assert torch.all(dq[0] == 0) and torch.all(db[:2] == 0)


def test_plan_covers_each_edge_once():
    deg = torch.tensor([0, 1, 4, 5, 16, 17, 40, 0, 300, 2, 1000, 3])
    rowptr = torch.zeros(deg.numel() + 1, dtype=torch.long)
    rowptr[1:] = deg.cumsum(0)
    chunk = 64
    plan = build_csr_plan(rowptr.to(device), hub_chunk=chunk)
    n_cls = len(DEGREE_CLASSES) + 1
    items = [plan[f"items{c}"].cpu() for c in range(n_cls)]
    assert not any(k.startswith("t_") for k in plan)
    covered = torch.zeros(int(rowptr[-1]), dtype=torch.long)
    rows_whole = []
    for c, it in enumerate(items):
        assert it.dtype == torch.int64 and it.dim() == 2 and it.shape[1] == 4
        for row, a, b, slot in it.tolist():
            covered[a:b] += 1
            assert rowptr[row] <= a <= b <= rowptr[row + 1]
            if slot < 0:
                assert (a, b) == (int(rowptr[row]), int(rowptr[row + 1]))
                rows_whole.append(row)
                lo = -1 if c == 0 else DEGREE_CLASSES[c - 1]
                hi = DEGREE_CLASSES[c] if c < len(DEGREE_CLASSES) else chunk
                assert lo < b - a <= hi, (row, c)
            else:
                assert c == n_cls - 1 and 0 < b - a <= chunk
    assert torch.all(covered == 1)
    lengths = (items[-1][:, 2] - items[-1][:, 1]).tolist()
    assert lengths == sorted(lengths, reverse=True)  # longest first
    hubs = plan["merge_rows"].cpu().tolist()
    assert hubs == [8, 10]
    assert sorted(rows_whole + hubs) == list(range(deg.numel()))
    mp = plan["merge_ptr"].cpu().tolist()
    assert mp == [0, 5, 5 + 16] and plan["slot_row"].cpu().tolist() == [8] * 5 + [10] * 16
    slots = {s: (a, b) for _, a, b, s in items[-1].tolist() if s >= 0}
    for h, row in enumerate(hubs):  # a hub's slots are its chunks in edge order
        spans = [slots[s] for s in range(mp[h], mp[h + 1])]
        assert spans[0][0] == rowptr[row] and spans[-1][1] == rowptr[row + 1]
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_plan_for_another_graph_is_rejected():
    q, k, v = make_qkv(3, 3, 1, 2, 2, torch.float32)
    g = to_csr(torch.tensor([0, 1], device=device), torch.tensor([1, 2], device=device), 3, 3)
    other = build_csr_plan(torch.tensor([0, 1, 2], device=device))  # 2 rows, not 3
    with pytest.raises(ValueError, match="plan"):
        csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], None, 1.0, plan=other)


def test_head_block_case_really_splits_heads():
    """The `headblocks` case of test_matches_reference must cover several head blocks."""
    from graphattn.kernels.csr_attention import _geometry

    hb, n_hb, _, _ = _geometry(5, 130, 20)
    assert n_hb > 1 and 5 % hb != 0  # more than one block, the last one partly masked


def test_row_offsets_past_int32_are_relaid_out():
    """The kernels address row i of q, k, v, out, grad_out, bias, grad_lse as an int64 row offset plus
    int32 offsets inside the row. A view whose inner strides would overflow int32 ([N, H, D] transposed
    from [H, N, D], or an [E, H] bias from a [H, E] one, with (H - 1) * N * D >= 2^31) is copied
    contiguous; one that fits is used as it is; a single row of 2^31 elements is refused.
    Meta tensors: shapes and strides only, no memory."""
    from graphattn.kernels.csr_attention import _check_inputs, _fit_int32_rows, _last_dim_contiguous

    n, h = 2**28, 9  # (h - 1) * n = 2^31
    q = torch.empty(h, n, 1, device="meta").transpose(0, 1)
    assert _last_dim_contiguous(q, "q").is_contiguous()
    fits = torch.empty(h, 1000, 4, device="meta").transpose(0, 1)
    assert _last_dim_contiguous(fits, "q") is fits
    bias = torch.empty(h, n, device="meta").t()
    qk = torch.empty(1, h, 1, device="meta")
    assert _check_inputs(qk, qk, qk, bias, n).is_contiguous()
    shared = torch.empty(n, device="meta")  # [E] bias: head stride 0, nothing to copy
    assert _check_inputs(qk, qk, qk, shared, n).stride() == (1, 0)
    with pytest.raises(ValueError, match="2\\^31"):
        _fit_int32_rows(torch.empty(1, 2**16, 2**15 + 1, device="meta"), "q")


def test_bad_inputs_are_rejected():
    q, k, v = make_qkv(2, 2, 1, 2, 2, torch.float32)
    g = to_csr(torch.tensor([0], device=device), torch.tensor([1], device=device), 2, 2)
    with pytest.raises(TypeError, match="dtype"):
        csr_attention_forward(q, k.half(), v, g["rowptr"], g["col"], g["eid"], None, 1.0)
    with pytest.raises(ValueError, match="bias"):
        csr_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], torch.zeros(2, 1, device=device), 1.0)


# ---------------------------------------------------------------------------
# the sparse-path extras at kernel level: score kinds, dropout, alpha and its gradient,
# with hub rows split on both the target side (forward, alpha, dQ, datt partials) and the
# source side (dK/dV) -- graphattn.attention's tests never split a source row
# ---------------------------------------------------------------------------
def scored_reference(q, k, v, att, src, dst, bias, scale, score, slope, p, seed, go, gl, ga):
    """float64 out, lse, alpha and gradients wrt (q, k, v, att, bias) of <out, go> + <lse, gl> + <alpha, ga>."""
    from graphattn.dropout import keep_mask

    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (q, k, v, att, bias)]
    qq, kk = leaves[0], leaves[1]
    if score == "gat":  # the reference takes GAT's q, k as [N, H]
        qq, kk = qq.squeeze(-1), kk.squeeze(-1)
    mask = keep_mask(seed, src.numel(), q.shape[1], p) if p > 0 else None
    out, lse, alpha = sparse_attention(qq, kk, leaves[2], src, dst, leaves[4], scale if score == "dot" else None,
                                       score=score, negative_slope=slope,
                                       att=leaves[3], dropout_p=p, dropout_mask=mask, return_attention=True)
    loss = (out * go.double()).sum() + (alpha * ga.double()).sum()
    loss = loss + torch.where(torch.isfinite(lse), lse * gl.double(), torch.zeros_like(lse)).sum()
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, wanted))
    return out.detach(), lse.detach(), alpha.detach(), [None if t is None else next(grads) for t in leaves]


SCORED_CASES = [
    # score, dtype, H, D, Dv, bias, dropout_p
    pytest.param("gatv2", "f32", 3, 5, 4, "EH", 0.3, id="gatv2-f32-biasEH-dropout"),
    pytest.param("gat", "f32", 2, 1, 6, "E", 0.0, id="gat-f32-biasE"),
    pytest.param("dot", "f16", 2, 6, 3, None, 0.4, id="dot-f16-dropout"),
]


@pytest.mark.parametrize("score,dt,H,D,Dv,bias_kind,p", SCORED_CASES)
def test_scored_matches_reference_with_hub_chunks(score, dt, H, D, Dv, bias_kind, p):
    from graphattn.kernels.csr_attention import csr_scored_attention_backward, csr_scored_attention_forward
    from graphattn.scored_ops import alpha_grad_into_lse

    dtype = DTYPES[dt]
    n_src, n_dst, slope, scale = 9, 11, 0.15, 0.4
    src, dst = random_edges(n_src, n_dst, 30, hub_in=20, hub_out=20, seed=D)
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, dtype, seed=H)
    att = torch.randn(H, D, generator=torch.Generator().manual_seed(5)).to(device, dtype) if score == "gatv2" \
        else None
    bias = make_bias(bias_kind, src.numel(), H, dtype)
    bias_k = bias[:, None].expand(bias.shape[0], H) if bias is not None and bias.dim() == 1 else bias
    seed = torch.tensor([0x9ABCDEF1, 12345], dtype=torch.int64, device=device)
    g = to_csr(src, dst, n_src, n_dst)
    plan = build_csr_plan(g["rowptr"], g["colptr"], hub_chunk=8)
    assert plan["merge_rows"].numel() and plan["t_merge_rows"].numel()  # both sides split

    out, lse, alpha = csr_scored_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], bias_k, att, seed,
                                                   score, scale, slope, p, True, plan=plan)
    gen = torch.Generator().manual_seed(9)
    go = torch.randn(n_dst, H, Dv, generator=gen).to(device, dtype)
    gl = torch.randn(n_dst, H, generator=gen).to(device)
    ga = torch.randn(src.numel(), H, generator=gen).to(device)
    ro, rl, ra, rgrads = scored_reference(q, k, v, att, src, dst, bias, scale, score, slope, p, seed, go, gl, ga)
    assert alpha.dtype == dtype and alpha.shape == (src.numel(), H)
    for name, a, r in (("out", out, ro), ("alpha", alpha, ra)):
        assert_close(name, a, r, dtype)
    finite = torch.isfinite(rl)
    assert torch.equal(torch.isfinite(lse).cpu(), finite.cpu())
    assert_close("lse", lse[finite], rl[finite], torch.float32, 1e-4 if dtype == torch.float32 else 1e-3)
    if p > 0:
        assert torch.equal((alpha == 0).cpu(), (ra == 0).cpu()), "keep mask differs from graphattn.dropout"

    gl_eff = alpha_grad_into_lse(gl, ga, alpha, g["rowptr"], g["eid"], lse)
    results = [csr_scored_attention_backward(go, gl_eff, ga, q, k, v, bias_k, att, seed, out, lse, g["rowptr"],
                                             g["col"], g["eid"], g["colptr"], g["row_t"], g["eid_t"], score, scale,
                                             slope, p, bias is not None, att is not None, plan=plan)
               for _ in range(2)]
    dq, dk, dv, db, datt = results[0]
    for a, b in zip(results[0], results[1]):  # deterministic: hub partials are merged in a fixed order
        assert (a is None and b is None) or torch.equal(a, b)
    for name, a, r in (("dq", dq, rgrads[0]), ("dk", dk, rgrads[1]), ("dv", dv, rgrads[2])):
        assert a.dtype == dtype and a.shape == r.shape
        assert_close(name, a, r, dtype)
    if att is None:
        assert datt is None
    else:
        assert datt.dtype == dtype and datt.shape == att.shape
        assert_close("datt", datt, rgrads[3], dtype)
    if bias is None:
        assert db is None
    else:
        assert_close("dbias", db.sum(1) if bias.dim() == 1 else db, rgrads[4], dtype)


def test_scored_no_edges_and_empty_targets():
    """E = 0: out 0, lse -inf, alpha [0, H], zero gradients (datt too), no NaN."""
    from graphattn.kernels.csr_attention import csr_scored_attention_backward, csr_scored_attention_forward

    H, D, Dv = 2, 3, 2
    q, k, v = make_qkv(3, 4, H, D, Dv, torch.float32)
    att = torch.ones(H, D, device=device)
    src = dst = torch.zeros(0, dtype=torch.long, device=device)
    g = to_csr(src, dst, 3, 4)
    seed = torch.tensor([1, 2], device=device)
    out, lse, alpha = csr_scored_attention_forward(q, k, v, g["rowptr"], g["col"], g["eid"], None, att, seed,
                                                   "gatv2", 1.0, 0.2, 0.5, True)
    assert torch.all(out == 0) and torch.all(lse == -math.inf) and alpha.shape == (0, H)
    dq, dk, dv, db, datt = csr_scored_attention_backward(
        torch.randn(4, H, Dv, device=device), None, torch.zeros(0, H, device=device), q, k, v, None, att, seed,
        out, lse, g["rowptr"], g["col"], g["eid"], g["colptr"], g["row_t"], g["eid_t"], "gatv2", 1.0, 0.2, 0.5,
        False, True)
    assert db is None
    for t in (dq, dk, dv, datt):
        assert torch.all(t == 0)


# ---------------------------------------------------------------------------
# masked edges: an edge with a -inf bias gets weight 0 and no gradient; a target whose every
# edge is masked (on a head) is, on that head, a target without edges: out 0, lse -inf, zero
# gradients, never NaN. The oracle drops the masked edges, head by head, and runs the float64
# reference on the rest -- so it never itself sees a -inf score.
# ---------------------------------------------------------------------------
MASK_CHUNK = 8  # hub_chunk of the masked tests: the hub rows below are split into chunks


def masked_case(bias_kind, H, dtype, *, n_src=7, n_dst=9, seed=0):
    """(src, dst, bias with -inf entries, csr, plan) with, by target:
    0: a hub (24 edges, 3 chunks), every edge masked;
    1: a hub (27 edges, 4 chunks), its first chunk (in CSR order) masked and some more edges masked on
       head 0 only ([E, H] bias);
    2: 5 edges, all masked on head 0 only ([E, H] bias; on every head for a [E] bias);
    3: 6 edges, every other one masked;
    4 .. n_dst - 2: a few edges, some masked; n_dst - 1: no edge at all.
    Sources 0 (every edge masked) and n_src - 1 (partly masked) have out-degree > MASK_CHUNK: their
    dK/dV rows are split into chunks too."""
    g = torch.Generator().manual_seed(seed)
    degrees = [24, 27, 5, 6] + [3] * (n_dst - 5) + [0]
    dst = torch.repeat_interleave(torch.arange(n_dst), torch.tensor(degrees))
    src = torch.randint(1, n_src, (dst.numel(),), generator=g)
    src[torch.rand(dst.numel(), generator=g) < 0.4] = n_src - 1  # a source hub, partly masked
    src[dst == 0] = 0  # source 0: a hub whose every edge (into target 0) is masked
    perm = torch.randperm(dst.numel(), generator=g)  # unsorted columns
    src, dst = src[perm].to(device), dst[perm].to(device)
    csr = to_csr(src, dst, n_src, n_dst)
    E = src.numel()
    rowptr, eid = csr["rowptr"].cpu(), csr["eid"].cpu()

    def edges_of(row, lo=0, hi=None):  # edge_index columns of a row's CSR positions [lo, hi)
        a = int(rowptr[row])
        b = int(rowptr[row + 1]) if hi is None else a + hi
        return eid[a + lo:b]

    all_heads = torch.zeros(E, dtype=torch.bool)
    head0 = torch.zeros(E, dtype=torch.bool)
    all_heads[edges_of(0)] = True
    all_heads[edges_of(1, 0, MASK_CHUNK)] = True  # a whole chunk: its partial lse is -inf
    head0[edges_of(1)[MASK_CHUNK + 1::3]] = True
    (head0 if bias_kind == "EH" else all_heads)[edges_of(2)] = True
    all_heads[edges_of(3)[::2]] = True
    rest = torch.cat([edges_of(r) for r in range(4, n_dst - 1)])
    all_heads[rest[torch.rand(rest.numel(), generator=g) < 0.3]] = True
    if bias_kind == "EH":
        bias = torch.randn(E, H, generator=g)
        bias[all_heads] = -math.inf
        bias[head0, 0] = -math.inf
    else:
        bias = torch.randn(E, generator=g)
        bias[all_heads] = -math.inf
    plan = build_csr_plan(csr["rowptr"], csr["colptr"], hub_chunk=MASK_CHUNK)
    assert {0, 1} <= set(plan["merge_rows"].tolist()) and {0, n_src - 1} <= set(plan["t_merge_rows"].tolist())
    return src, dst, bias.to(device=device, dtype=dtype), csr, plan


def masked_oracle(q, k, v, att, src, dst, bias, scale, score, slope, p, seed, go, gl, ga):
    """float64 (out, lse, alpha, dq, dk, dv, datt, dbias [E, H]) of <out, go> + <lse, gl> + <alpha, ga>,
    head by head, each head on its edges whose bias is finite (the masked ones simply do not exist)."""
    from graphattn.dropout import keep_mask

    n_dst, H = q.shape[:2]
    E, Dv = src.numel(), v.shape[2]
    b_eh = (bias[:, None].expand(E, H) if bias.dim() == 1 else bias).double()
    keep = keep_mask(seed, E, H, p) if p > 0 else None
    out = torch.zeros(n_dst, H, Dv, dtype=torch.float64, device=device)
    lse = torch.full((n_dst, H), -math.inf, dtype=torch.float64, device=device)
    alpha = torch.zeros(E, H, dtype=torch.float64, device=device)
    dbias = torch.zeros(E, H, dtype=torch.float64, device=device)
    dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float64, device=device) for t in (q, k, v))
    datt = None if att is None else torch.zeros(att.shape, dtype=torch.float64, device=device)
    for h in range(H):
        kept = torch.isfinite(b_eh[:, h])
        qh, kh, vh = (t[:, h:h + 1].detach().double().requires_grad_() for t in (q, k, v))
        bh = b_eh[kept, h:h + 1].clone().requires_grad_()
        ah = None if att is None else att[h:h + 1].detach().double().requires_grad_()
        qq, kk = (qh[..., 0], kh[..., 0]) if score == "gat" else (qh, kh)
        o, l, a = sparse_attention(qq, kk, vh, src[kept], dst[kept], bh, scale if score == "dot" else None,
                                   score=score, negative_slope=slope, att=ah, dropout_p=p,
                                   dropout_mask=None if keep is None else keep[kept, h:h + 1],
                                   return_attention=True)
        loss = (o * go[:, h:h + 1].double()).sum() + (a * ga[kept, h:h + 1].double()).sum()
        loss = loss + torch.where(torch.isfinite(l), l * gl[:, h:h + 1].double(), torch.zeros_like(l)).sum()
        leaves = [qh, kh, vh, bh] + ([ah] if ah is not None else [])
        grads = [torch.zeros_like(t) if d is None else d
                 for t, d in zip(leaves, torch.autograd.grad(loss, leaves, allow_unused=True))]
        out[:, h:h + 1], lse[:, h:h + 1], alpha[kept, h:h + 1] = o.detach(), l.detach(), a.detach()
        dq[:, h:h + 1], dk[:, h:h + 1], dv[:, h:h + 1], dbias[kept, h:h + 1] = grads[:4]
        if ah is not None:
            datt[h:h + 1] = grads[4]
    return out, lse, alpha, dq, dk, dv, datt, dbias


def run_masked(score, dtype, H, D, Dv, bias_kind, p, *, seed=0):
    """Kernel forward (with alpha) and backward on masked_case against masked_oracle; returns
    (case, kernel results, oracle results) after checking every output."""
    from graphattn.kernels.csr_attention import csr_scored_attention_backward, csr_scored_attention_forward
    from graphattn.scored_ops import alpha_grad_into_lse

    n_src, n_dst, slope, scale = 7, 9, 0.2, 0.45
    src, dst, bias, csr, plan = masked_case(bias_kind, H, dtype, n_src=n_src, n_dst=n_dst, seed=seed)
    if score == "gat":
        D = 1
    q, k, v = make_qkv(n_src, n_dst, H, D, Dv, dtype, seed=seed + 3)
    att = (torch.randn(H, D, generator=torch.Generator().manual_seed(5)).to(device, dtype)
           if score == "gatv2" else None)
    bias_k = bias[:, None].expand(bias.shape[0], H) if bias.dim() == 1 else bias
    dseed = torch.tensor([0x2468ACE1, 97531], dtype=torch.int64, device=device)
    out, lse, alpha = csr_scored_attention_forward(q, k, v, csr["rowptr"], csr["col"], csr["eid"], bias_k, att,
                                                   dseed, score, scale, slope, p, True, plan=plan)
    gen = torch.Generator().manual_seed(seed + 9)
    go = torch.randn(n_dst, H, Dv, generator=gen).to(device, dtype)
    gl = torch.randn(n_dst, H, generator=gen).to(device)
    ga = torch.randn(src.numel(), H, generator=gen).to(device)
    gl_eff = alpha_grad_into_lse(gl, ga, alpha, csr["rowptr"], csr["eid"], lse)
    dq, dk, dv, db, datt = csr_scored_attention_backward(
        go, gl_eff, ga, q, k, v, bias_k, att, dseed, out, lse, csr["rowptr"], csr["col"], csr["eid"],
        csr["colptr"], csr["row_t"], csr["eid_t"], score, scale, slope, p, True, att is not None, plan=plan)
    ref = masked_oracle(q, k, v, att, src, dst, bias, scale, score, slope, p, dseed, go, gl, ga)
    ro, rl, ra, rdq, rdk, rdv, rdatt, rdb = ref

    finite = torch.isfinite(rl)
    assert torch.equal(torch.isfinite(lse), finite), "lse: -inf pattern differs from the oracle's"
    assert torch.all(lse[~finite] == -math.inf)
    assert_close("lse", lse[finite], rl[finite], torch.float32, 1e-4 if dtype == torch.float32 else 1e-3)
    for name, a, r in (("out", out, ro), ("alpha", alpha, ra), ("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv),
                       ("dbias", db.sum(1) if bias.dim() == 1 else db, rdb.sum(1) if bias.dim() == 1 else rdb)):
        assert_close(name, a, r, dtype)  # also: every value finite
    if att is not None:
        assert_close("datt", datt, rdatt, dtype)
    # A masked edge has weight 0 and no gradient, exactly.
    masked = ~torch.isfinite(bias_k)
    assert torch.all(alpha[masked] == 0) and torch.all(db[masked] == 0)
    return (src, dst, bias_k, csr), (out, lse, alpha, dq, dk, dv, db, datt), ref


@pytest.mark.parametrize("bias_kind", ["EH", "E"])
@pytest.mark.parametrize("dt", ["f32", "f16", "bf16"])
def test_fully_masked_target_is_a_target_without_edges(dt, bias_kind):
    """Targets 0 (a hub split into chunks) and 2 (on head 0 only for a [E, H] bias) have every edge
    masked: out 0, lse -inf and zero gradients on those heads, exactly as the edgeless last target."""
    H = 3
    (src, dst, bias_k, csr), (out, lse, alpha, dq, dk, dv, db, _), _ = run_masked(
        "dot", DTYPES[dt], H, 6, 5, bias_kind, 0.0)
    heads2 = [0] if bias_kind == "EH" else list(range(H))
    for row, heads in ((0, list(range(H))), (2, heads2), (out.shape[0] - 1, list(range(H)))):
        assert torch.all(out[row, heads] == 0) and torch.all(lse[row, heads] == -math.inf), row
        assert torch.all(dq[row, heads] == 0), row
        edges = csr["eid"][csr["rowptr"][row]:csr["rowptr"][row + 1]]
        assert torch.all(alpha[edges][:, heads] == 0) and torch.all(db[edges][:, heads] == 0), row
    if bias_kind == "EH":  # the other heads of target 2 attend normally
        assert torch.all(torch.isfinite(lse[2, 1:])) and torch.all(out[2, 1:].abs().sum(-1) > 0)
    # A source whose every outgoing edge is masked on a head gets zero dK and dV on that head.
    live = torch.zeros(dk.shape[:2], dtype=torch.int64, device=device)
    live = live.index_add(0, src, torch.isfinite(bias_k).long()) > 0
    assert not live[0].any()  # source 0 feeds only the masked hub target 0
    assert torch.all(dk[~live] == 0) and torch.all(dv[~live] == 0)


@pytest.mark.parametrize("score,dt,H,D,Dv,bias_kind,p", [
    pytest.param("dot", "f32", 3, 6, 5, "EH", 0.0, id="dot-f32-biasEH"),
    pytest.param("dot", "bf16", 2, 9, 4, "E", 0.0, id="dot-bf16-biasE"),
    pytest.param("dot", "f16", 2, 6, 3, "EH", 0.3, id="dot-f16-biasEH-dropout"),
    pytest.param("gat", "f32", 3, 1, 4, "EH", 0.0, id="gat-f32-biasEH"),
    pytest.param("gat", "bf16", 2, 1, 3, "E", 0.25, id="gat-bf16-biasE-dropout"),
    pytest.param("gatv2", "f32", 3, 5, 4, "EH", 0.3, id="gatv2-f32-biasEH-dropout"),
    pytest.param("gatv2", "f16", 2, 4, 4, "E", 0.0, id="gatv2-f16-biasE"),
])
def test_partly_masked_target_attends_to_the_rest(score, dt, H, D, Dv, bias_kind, p):
    """Every score kind, with and without dropout, alpha and its gradient: a row with some edges masked
    (target 1: a hub whose whole first chunk is masked; target 3; a source hub) equals the same row
    without those edges; fully masked rows stay 0 / -inf with zero gradients (datt included)."""
    _, (out, lse, _, dq, *_), _ = run_masked(score, DTYPES[dt], H, D, Dv, bias_kind, p, seed=1)
    assert torch.all(torch.isfinite(lse[1])) and torch.all(torch.isfinite(lse[3]))
    assert torch.all(out[0] == 0) and torch.all(lse[0] == -math.inf) and torch.all(dq[0] == 0)
