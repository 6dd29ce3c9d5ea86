"""Segments by SDPA over padded blocks (graphattn/backends/sdpa_segments.py, backend "sdpa" on CPU)
against the float64 reference: every CPU dtype, forward and backward, with and without lse, odd
sizes (D not a power of two, Dv != D, segments of 0, 1 and mixed sizes, one size for all),
non-contiguous inputs, large logits, N = 0, scale 0; the padding plan; determinism; and the
crossover file's script (benchmarks/segment_crossover.py). Which calls auto sends here:
tests/test_dispatch.py."""
import math

import pytest
import torch

import graphattn
from graphattn import reference
from graphattn.backends import sdpa_segments

from conftest import REL_RMS, assert_matches, leaf, rel_rms, random_rows

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the segments SDPA path serves CPU tensors only")

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
MIXED = [5, 1, 0, 40, 3, 0, 17, 1, 33]


def segment_rows(sizes, heads, d, dv, dtype, scale=1.0):
    n = sum(sizes)
    ptr = torch.tensor([0] + sizes).cumsum(0)
    return (random_rows(n, heads, d, dtype, seed=1, scale=scale), random_rows(n, heads, d, dtype, seed=2, scale=scale),
            random_rows(n, heads, dv, dtype, seed=3), ptr)


def check(q, k, v, ptr, *, scale=None, with_lse=True, vs_float32=False):
    """graphattn.attention(backend='sdpa') vs the float64 reference: out, lse and the gradients of
    q, k, v (through out and, with_lse, lse). vs_float32: also allow 2x the error of the reference
    in float32 (large logits, where float32 itself is far from exact). Returns (out, lse, grads)."""
    dtype = q.dtype
    graph = graphattn.Graph.block_diagonal(ptr)
    qa, ka, va = leaf(q), leaf(k), leaf(v)
    got = graphattn.attention(qa, ka, va, graph, scale=scale, return_lse=with_lse, backend="sdpa")
    out, lse = got if with_lse else (got, None)

    def run_reference(acc):
        leaves = [leaf(t.to(acc)) for t in (q, k, v)]
        return (*reference.segment_attention(*leaves, ptr, scale), leaves)

    ref_out, ref_lse, ref_leaves = run_reference(torch.float64)
    assert out.dtype == dtype and out.shape == ref_out.shape
    floors = [0.0] * 5
    if vs_float32:
        out32, lse32, leaves32 = run_reference(torch.float32)
        floors[:2] = [2 * rel_rms(out32, ref_out), 2 * rel_rms(lse32, ref_lse)]
    assert_matches(out, ref_out, dtype, "out", floors[0])
    if with_lse:
        assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_matches(lse, ref_lse, dtype, "lse", floors[1])
    gen = torch.Generator().manual_seed(7)
    g_out = torch.randn(ref_out.shape, generator=gen, dtype=torch.float64)
    g_lse = torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64)

    def loss(o, l):
        return (o.double() * g_out).sum() + ((l.double() * g_lse).sum() if with_lse else 0.0)

    grads = torch.autograd.grad(loss(out, lse), (qa, ka, va))
    ref_grads = torch.autograd.grad(loss(ref_out, ref_lse), ref_leaves)
    if vs_float32:
        grads32 = torch.autograd.grad(loss(out32, lse32), leaves32)
        # SDPA's backward recomputes the weights from its float32 lse (as FlashAttention does)
        lse_ulp = 2 * torch.finfo(torch.float32).eps * float(ref_lse.detach().abs().max())
        floors[2:] = [max(2 * rel_rms(a, b), lse_ulp) for a, b in zip(grads32, ref_grads)]
    for name, g, want, floor in zip("qkv", grads, ref_grads, floors[2:]):
        assert g.dtype == dtype
        assert_matches(g, want, dtype, f"d{name}", floor)
    return out, lse, grads


@pytest.mark.parametrize("with_lse", [True, False], ids=["lse", "no lse"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_sizes_every_dtype(dtype, with_lse):
    q, k, v, ptr = segment_rows(MIXED, 3, 12, 10, dtype)  # D = 12, Dv = 10
    check(q, k, v, ptr, with_lse=with_lse)


@pytest.mark.parametrize("sizes", [[8, 8, 0, 8], [1, 1, 1, 1, 1], [0, 0, 6], [1, 0, 2, 0, 1, 3]],
                         ids=["one size, blocks are views", "all of size 1", "empty then one", "tiny mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odd_segment_layouts(sizes, dtype):
    q, k, v, ptr = segment_rows(sizes, 2, 7, 5, dtype)
    check(q, k, v, ptr)


@pytest.mark.parametrize("sizes", [[], [0], [0, 0, 0]], ids=["no segment", "one empty", "three empty"])
@pytest.mark.parametrize("with_lse", [True, False], ids=["lse", "no lse"])
def test_no_nodes(sizes, with_lse):
    q, k, v, ptr = segment_rows(sizes, 2, 4, 3, torch.float32)
    qa, ka, va = leaf(q), leaf(k), leaf(v)
    got = graphattn.attention(qa, ka, va, graphattn.Graph.block_diagonal(ptr), return_lse=with_lse, backend="sdpa")
    out = got[0] if with_lse else got
    assert out.shape == (0, 2, 3) and out.dtype == torch.float32
    if with_lse:
        assert got[1].shape == (0, 2) and got[1].dtype == torch.float32
    grads = torch.autograd.grad(out.sum(), (qa, ka, va))
    assert [tuple(g.shape) for g in grads] == [(0, 2, 4), (0, 2, 4), (0, 2, 3)]


def test_non_contiguous_inputs():
    sizes = [6, 0, 11, 2, 9]
    n, heads, d = sum(sizes), 3, 6
    ptr = torch.tensor([0] + sizes).cumsum(0)
    packed = random_rows(n, 3 * heads, d, torch.float32, seed=4).reshape(n, 3, heads, d)
    q, k, v = packed.unbind(1)  # rows strided by 3 * H * D
    assert not q.is_contiguous()
    check(q, k, v, ptr)
    heads_last = random_rows(n, d, heads, torch.float32, seed=5).transpose(1, 2)  # [N, H, D], D strided
    check(heads_last, k, v, ptr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_do_not_overflow(dtype):
    q, k, v, ptr = segment_rows([7, 1, 20, 0, 13], 2, 4, 4, dtype, scale=100.0)  # scores ~ 1e4
    out, lse, grads = check(q, k, v, ptr, vs_float32=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


def test_scale_zero_and_custom_scale():
    q, k, v, ptr = segment_rows([4, 9, 1], 2, 5, 5, torch.float64)
    check(q, k, v, ptr, scale=0.0)
    check(q, k, v, ptr, scale=0.37)


def test_many_buckets_and_chunked_lse(monkeypatch):
    """Sizes 1..60: many buckets, most with a key-padding mask; lse computed a few segments at a time."""
    monkeypatch.setattr(sdpa_segments, "_LSE_CHUNK_SCORES", 2000)
    sizes = [int(s) for s in torch.randint(1, 61, (40,), generator=torch.Generator().manual_seed(3))]
    q, k, v, ptr = segment_rows(sizes, 2, 8, 8, torch.float64)
    plan = sdpa_segments.build_plan(ptr)
    assert len(plan.buckets) > 5 and sum(m is not None for m in plan.masks) > 0
    check(q, k, v, ptr)


def test_plan():
    sizes = [5, 0, 40, 3, 36, 37, 1, 40]
    ptr = torch.tensor([0] + sizes).cumsum(0)
    plan = sdpa_segments.build_plan(ptr)
    n = sum(sizes)
    assert plan.num_nodes == n and plan.padded_rows == sum(length * count for length, count in plan.buckets)
    assert plan.pos.shape == (n,) and plan.pos.unique().numel() == n and int(plan.pos.max()) < plan.padded_rows
    # every segment sits in a bucket at least as long as itself and at least _FILL of it
    assert sorted(sizes)[::-1][:4] == [40, 40, 37, 36] and plan.buckets[0] == (40, 4)
    assert all(m is None or m.shape == (count, 1, 1, length) for (length, count), m in zip(plan.buckets, plan.masks))
    assert plan.masks[0] is not None  # 37 and 36 padded to 40
    # rows of one segment are consecutive slots of one block
    for start, size in zip(ptr[:-1].tolist(), sizes):
        if size == 0:
            continue
        slots = plan.pos[start:start + size]
        assert torch.equal(slots, slots[0] + torch.arange(size))
    uniform = sdpa_segments.build_plan(torch.tensor([0, 4, 4, 8, 12]))
    assert uniform.pos is None and uniform.buckets == ((4, 3),) and uniform.masks == (None,)


def test_plan_is_cached_on_the_graph():
    q, k, v, ptr = segment_rows([3, 5], 1, 4, 4, torch.float32)
    graph = graphattn.Graph.block_diagonal(ptr)
    graphattn.attention(q, k, v, graph, backend="sdpa")
    plan = graph.cached(sdpa_segments.PLAN_KEY, lambda: None)
    graphattn.attention(q, k, v, graph, backend="sdpa")
    assert graph.cached(sdpa_segments.PLAN_KEY, lambda: None) is plan is not None


def test_gradcheck():
    q, k, v, ptr = segment_rows([4, 0, 1, 3], 2, 3, 2, torch.float64)
    graph = graphattn.Graph.block_diagonal(ptr)
    assert torch.autograd.gradcheck(
        lambda q, k, v: graphattn.attention(q, k, v, graph, return_lse=True, backend="sdpa"),
        (leaf(q), leaf(k), leaf(v)))


def test_deterministic_runs_are_bitwise_identical(deterministic):
    q, k, v, ptr = segment_rows([10, 190, 100, 3], 4, 16, 16, torch.float32)
    graph = graphattn.Graph.block_diagonal(ptr)
    leaves = [leaf(t) for t in (q, k, v)]

    def run():
        out = graphattn.attention(*leaves, graph, backend="sdpa")
        return [out.detach(), *torch.autograd.grad(out.square().sum(), leaves)]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_same_as_the_segment_kernel():
    q, k, v, ptr = segment_rows(MIXED, 2, 16, 16, torch.float32)
    graph = graphattn.Graph.block_diagonal(ptr)
    a = graphattn.attention(q, k, v, graph, backend="sdpa", return_lse=True)
    b = graphattn.attention(q, k, v, graph, backend="cpu", return_lse=True)
    for x, y in zip(a, b):
        assert rel_rms(x, y) < REL_RMS[torch.float32]


def test_refused_on_cuda_with_the_reason():
    call = graphattn.backends.Call("segments", "cuda", torch.float32, 2, 4, 4, False, False, False, False)
    reasons = graphattn.dispatch.BACKENDS["sdpa"].not_supported_reasons(call)
    assert any("segments on cpu only" in r for r in reasons)


# ---------------------------------------------------------------------------
# benchmarks/segment_crossover.py: rows -> thresholds -> graphattn/segment_crossover.py
# ---------------------------------------------------------------------------
def _rows(dtype, mode, ratios):
    """Crossover rows at E / N = 4, 8, 16, ...: kernel time / sdpa time = ratio."""
    rows = []
    for i, ratio in enumerate(ratios):
        common = dict(benchmark="scaling/crossover", case=f"sizes {i}", mode=mode, dtype=dtype, H="4", D="32",
                      N="1000", degree=str(4.0 * 2**i), status="ok", device="Test CPU (2 cores)", torch="2.x",
                      commit="abc1234", date=f"2026-01-01T00:00:0{i}Z", threads="2")
        rows.append({**common, "provider": "graphattn-cpu", "time_median_s": str(ratio)})
        rows.append({**common, "provider": "graphattn-sdpa", "time_median_s": "1.0"})
    return rows


def test_crossover_thresholds_from_rows():
    from benchmarks import segment_crossover as sc

    rows = (_rows("float32", "fwd", [0.25, 0.5, 2.0, 4.0]) + _rows("float32", "fwdbwd", [2.0, 3.0])
            + _rows("bfloat16", "fwd", [0.5, 0.9, 0.8]) + _rows("float16", "fwd", [0.5, 2.0, 0.9, 1.5]))
    text = sc.render(rows, "test.csv", label="synthetic")
    namespace = {}
    exec(text, namespace)  # noqa: S102  (the generated module is plain literals)
    got = namespace["THRESHOLDS"]
    # between E/N 8 (ratio 0.5) and 16 (ratio 2): log-log halfway, sqrt(8 * 16)
    assert got[("float32", "fwd")] == pytest.approx(math.sqrt(8 * 16), rel=1e-2)
    assert got[("float32", "fwdbwd")] == 4.0  # SDPA won at every size: from the smallest measured
    assert got[("bfloat16", "fwd")] is None  # the kernel won at the largest size
    assert 16 < got[("float16", "fwd")] < 32  # the last crossing counts, not the first
    assert namespace["DEVICE"] == "Test CPU (2 cores)" and namespace["COMMIT"] == "abc1234"
    assert "Note: synthetic" in text and "from test.csv" in text
    # a rerun of a case replaces it
    rerun = _rows("float32", "fwd", [0.25, 0.5, 0.5, 4.0])[4:6]
    for r in rerun:
        r["date"] = "2026-01-02T00:00:00Z"
    namespace = {}
    exec(sc.render(rows + rerun, "test.csv"), namespace)
    assert 16 < namespace["THRESHOLDS"][("float32", "fwd")] < 32


def test_the_committed_crossover_file_is_what_its_csv_gives():
    from benchmarks import segment_crossover as sc
    from graphattn import segment_crossover

    assert set(segment_crossover.THRESHOLDS) <= {(d, m) for d in sc.DTYPES for m in sc.MODES}
    source = segment_crossover.__doc__.split(" from ", 1)[1].split(":", 1)[0] if " from " in (
        segment_crossover.__doc__ or "") else None
    if source is None:
        pytest.skip("no crossover measured yet (placeholder file)")
    csv_path = sc.ROOT / source
    assert csv_path.exists(), f"graphattn/segment_crossover.py names {source}, which is not in the repository"
    assert sc.main(["--csv", str(csv_path), "--check"]) == 0


def test_readme_tables_from_rows(monkeypatch):
    """benchmarks/readme_tables.py: the dense like-for-like and segments tables come from the rows
    (ratios computed, nothing typed) and the segments table names auto's choice under the crossover."""
    from benchmarks import readme_tables
    from graphattn import segment_crossover

    monkeypatch.setattr(segment_crossover, "THRESHOLDS", {("float32", "fwd"): 20.0})
    base = dict(H=4.0, D=32.0, commit="abc1234", date="2026-01-01T00:00:00Z", device="Test CPU (2 cores)")
    rows = [dict(base, benchmark="scaling/dtype", case="dense", N=2048.0, dtype="float32", mode="fwd",
                 provider=p, time_median_s=t)
            for p, t in (("graphattn-sdpa", 1.05), ("torch-sdpa-blhd", 1.0), ("torch-sdpa", 0.5))]
    rows += [dict(base, benchmark="scaling/segments", case=case, N=4096.0, dtype="float32", mode="fwd", degree=deg,
                  provider=p, time_median_s=t)
             for case, deg in (("sizes 4-16", 11.0), ("sizes 64-256", 170.0))
             for p, t in (("graphattn-cpu", 1.0), ("graphattn-sdpa", 2.0), ("torch-sdpa-padded", 3.0))]
    text = "\n".join(readme_tables.lines_for(rows))
    assert "| dtype | 2,048 | float32 | fwd | graphattn-sdpa | 1.05 s | 1.00 s | 1.050 | 500.00 ms | 2.100 | – | – |" in text
    assert "| sizes 4-16 | 11 | float32 | fwd | 1.00 s | 2.00 s | 3.00 s | cpu |" in text
    assert "| sizes 64-256 | 170 | float32 | fwd | 1.00 s | 2.00 s | 3.00 s | sdpa |" in text
    assert "| float32 | 20 | – |" in text  # the crossover table
    assert readme_tables.lines_for([r for r in rows if r["provider"] != "torch-sdpa-blhd"
                                    and r["provider"] != "graphattn-sdpa"]) == []


def test_crossover_measure_end_to_end(tmp_path):
    """`python -m benchmarks.segment_crossover --measure --quick`: the sweep's rows, then the module."""
    from benchmarks import common, segment_crossover as sc

    csv_path, module = tmp_path / "crossover.csv", tmp_path / "segment_crossover.py"
    assert sc.main(["--measure", "--quick", "--dtype", "float32", "--csv", str(csv_path), "--out", str(module),
                    "--label", "smoke test"]) == 0
    rows = common.read_rows(csv_path)
    assert {r["provider"] for r in rows} == {"graphattn-cpu", "graphattn-sdpa"}
    assert {r["benchmark"] for r in rows} == {"scaling/crossover"} and all(r["status"] == "ok" for r in rows)
    namespace = {}
    exec(module.read_text(), namespace)  # noqa: S102
    assert set(namespace["THRESHOLDS"]) == {("float32", "fwd"), ("float32", "fwdbwd")}
    assert sc.main(["--csv", str(csv_path), "--out", str(module), "--check"]) == 0
