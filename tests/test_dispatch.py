"""Dispatch: auto picks the first capable backend of the priority list; forced
backends serve or raise with reasons; available_backends and the info CLI."""
import subprocess
import sys

import pytest
import torch

import graphattn
from graphattn import dispatch
from graphattn.backends import BACKENDS, Call


def make_call(**changes):
    fields = dict(pattern="csr", device_type="cpu", dtype=torch.float32, num_heads=2, head_dim=8, value_dim=8,
                  has_bias=False, causal=False, deterministic=False, return_lse=False)
    fields.update(changes)
    return Call(**fields)


@pytest.mark.parametrize("pattern, expected", [("csr", "cpu"), ("segments", "cpu"), ("dense", "sdpa")])
def test_auto_on_cpu(pattern, expected):
    assert dispatch.choose(make_call(pattern=pattern)).name == expected


def test_auto_never_picks_the_triton_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for pattern in ("csr", "segments", "dense"):
        assert dispatch.choose(make_call(pattern=pattern)).name != "triton"


def test_auto_falls_back_to_the_reference_when_the_fast_backend_cannot(monkeypatch):
    monkeypatch.setattr(type(BACKENDS["cpu"]), "unavailable_reason", lambda self, d: "not built (test)")
    assert dispatch.choose(make_call()).name == "reference"
    with pytest.raises(graphattn.BackendError, match="not built"):
        dispatch.choose(make_call(), "cpu")


def test_when_nothing_serves_every_backend_is_listed_with_its_reasons():
    with pytest.raises(graphattn.BackendError) as info:
        dispatch.choose(make_call(device_type="mps"))
    message = str(info.value)
    for name in BACKENDS:
        assert f"  {name}:" in message


def test_forced_backend_reasons():
    with pytest.raises(graphattn.BackendError, match="does not take bias"):
        dispatch.choose(make_call(pattern="dense", has_bias=True), "sdpa")
    with pytest.raises(graphattn.BackendError, match="float64 is served on CPU only"):
        dispatch.choose(make_call(device_type="cuda", dtype=torch.float64), "reference")
    with pytest.raises(graphattn.BackendError, match="head dim 300 > 256"):
        dispatch.choose(make_call(device_type="cuda", head_dim=300), "triton")


def test_deterministic_mode_rules_out_nondeterministic_backends():
    with pytest.raises(graphattn.BackendError, match="not bitwise deterministic on cuda"):
        dispatch.choose(make_call(device_type="cuda", deterministic=True), "reference")


def test_forced_backend_runs_that_backend(monkeypatch):
    calls = []
    original = type(BACKENDS["reference"]).attention

    def spy(self, *args):
        calls.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(type(BACKENDS["reference"]), "attention", spy)
    q = torch.randn(3, 1, 2)
    graphattn.attention(q, q, q, torch.tensor([[0, 1], [1, 2]]), backend="reference")
    assert calls == ["reference"]


def test_available_backends():
    names = graphattn.available_backends("cpu")
    assert {"cpu", "sdpa", "reference"} <= set(names)
    if not torch.cuda.is_available():
        assert graphattn.available_backends("cuda") == []


def test_info_cli_reports_versions_and_backends():
    result = subprocess.run([sys.executable, "-m", "graphattn.info"], capture_output=True, text=True, check=True)
    assert "torch" in result.stdout and "graphattn" in result.stdout
    for name in BACKENDS:
        assert name in result.stdout


def test_complete_graph_edge_list_takes_the_dense_path(monkeypatch):
    """Every (source, target) pair once, in any column order: auto computes it densely, and the
    result is the edge-list result (compared with the reference backend, which stays sparse)."""
    n_src, n_dst, heads = 7, 5, 2
    src = torch.arange(n_src).repeat(n_dst)
    dst = torch.arange(n_dst).repeat_interleave(n_src)
    perm = torch.randperm(src.numel(), generator=torch.Generator().manual_seed(0))
    edge_index = torch.stack([src, dst])[:, perm]
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=(n_src, n_dst))
    assert graph.is_complete()
    q = torch.randn(n_dst, heads, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n_src, heads, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(n_src, heads, 3, dtype=torch.float64, requires_grad=True)
    patterns = []
    choose = graphattn.dispatch.choose
    monkeypatch.setattr(graphattn.dispatch, "choose", lambda call, backend="auto": (
        patterns.append(call.pattern), choose(call, backend))[1])
    out, lse = graphattn.attention(q, k, v, edge_index, return_lse=True)
    assert patterns == ["dense"]
    ref_out, ref_lse = graphattn.attention(q, k, v, edge_index, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref_out.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    # not complete: one pair missing, or one duplicated in place of another
    assert not graphattn.Graph.from_edge_index(edge_index[:, 1:], num_nodes=(n_src, n_dst)).is_complete()
    dup = edge_index.clone()
    dup[:, 0] = dup[:, 1]
    assert not graphattn.Graph.from_edge_index(dup, num_nodes=(n_src, n_dst)).is_complete()
    # with a bias the edge list stays sparse
    patterns.clear()
    graphattn.attention(q, k, v, edge_index, bias=torch.zeros(edge_index.shape[1], heads, dtype=torch.float64))
    assert patterns == ["csr"]


@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("shuffled", [False, True], ids=["in order", "shuffled columns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rerouting_a_complete_graph_to_the_dense_path_is_invisible(dtype, shuffled, return_lse):
    """The sparse contract holds for a complete edge list with every option auto reroutes: the result
    (one tensor, or out and lse) is what the reference backend gives on the edges."""
    n = 6
    edge_index = torch.stack([torch.arange(n).repeat(n), torch.arange(n).repeat_interleave(n)])
    if shuffled:
        edge_index = edge_index[:, torch.randperm(n * n, generator=torch.Generator().manual_seed(1))]
    q, k, v = (torch.randn(n, 2, 5, generator=torch.Generator().manual_seed(s)).to(dtype) for s in (1, 2, 3))
    got = graphattn.attention(q, k, v, edge_index, return_lse=return_lse)
    want = graphattn.attention(q, k, v, edge_index, return_lse=return_lse, backend="reference")
    assert type(got) is type(want)
    for a, b in zip(got if return_lse else (got,), want if return_lse else (want,)):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)


# ---------------------------------------------------------------------------
# Segments on CPU: the segment kernel or SDPA over padded blocks, by the measured crossover
# (graphattn/segment_crossover.py, written by benchmarks/segment_crossover.py)
# ---------------------------------------------------------------------------
CROSSOVER = {("float32", "fwd"): 20.0, ("float32", "fwdbwd"): 10.0, ("bfloat16", "fwd"): None,
             ("float64", "fwd"): 10.0, ("float64", "fwdbwd"): 10.0}


@pytest.fixture
def crossover(monkeypatch):
    from graphattn import segment_crossover

    monkeypatch.setattr(segment_crossover, "THRESHOLDS", dict(CROSSOVER))


@pytest.mark.parametrize("degree, needs_grad, expected", [
    (19.9, False, "cpu"), (20.0, False, "sdpa"), (500.0, False, "sdpa"),
    (9.9, True, "cpu"), (10.0, True, "sdpa"), (15.0, True, "sdpa"),
    (0.0, False, "cpu"),  # not measured (torch.compile, or not auto): the kernel
])
def test_segments_pick_each_side_of_the_crossover(crossover, degree, needs_grad, expected):
    call = make_call(pattern="segments", segment_degree=degree, needs_grad=needs_grad)
    assert dispatch.choose(call).name == expected


def test_segments_without_a_measured_crossover_stay_on_the_kernel(crossover):
    # None (the kernel won at every measured size), a missing dtype, lse asked for, another device
    assert dispatch.choose(make_call(pattern="segments", dtype=torch.bfloat16, segment_degree=1e4)).name == "cpu"
    assert dispatch.choose(make_call(pattern="segments", dtype=torch.float16, segment_degree=1e4)).name == "cpu"
    assert dispatch.choose(make_call(pattern="segments", segment_degree=1e4, return_lse=True)).name == "cpu"
    assert not dispatch.segments_by_sdpa(make_call(pattern="segments", device_type="cuda", segment_degree=1e4))


def test_the_committed_crossover_is_followed():
    """Each (dtype, mode) of the generated file: just below its threshold the kernel, at it SDPA."""
    from graphattn import segment_crossover

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    for (dtype, mode), threshold in segment_crossover.THRESHOLDS.items():
        fields = dict(pattern="segments", dtype=names[dtype], needs_grad=mode == "fwdbwd")
        if threshold is None:
            assert dispatch.choose(make_call(segment_degree=1e6, **fields)).name == "cpu"
            continue
        assert dispatch.choose(make_call(segment_degree=threshold * 0.99, **fields)).name == "cpu"
        assert dispatch.choose(make_call(segment_degree=threshold, **fields)).name == "sdpa"


def _chosen(monkeypatch):
    seen = []
    choose = graphattn.dispatch.choose
    monkeypatch.setattr(graphattn.dispatch, "choose", lambda call, backend="auto": (
        seen.append(choose(call, backend).name), choose(call, backend))[1])
    return seen


def test_attention_routes_segments_by_size_and_backward(crossover, monkeypatch):
    """graphattn.attention measures E / N (cached on the Graph) and whether a backward follows."""
    small = graphattn.Graph.block_diagonal(torch.tensor([0, 4, 8, 12]))  # E / N = 4
    large = graphattn.Graph.block_diagonal(torch.tensor([0, 0, 30, 42]))  # E / N = (900 + 144) / 42
    assert dispatch.segment_degree(large) == pytest.approx((900 + 144) / 42)
    seen = _chosen(monkeypatch)
    for graph in (small, large):
        n = graph.num_dst
        q = torch.randn(n, 2, 8)
        graphattn.attention(q, q, q, graph)  # forward only: threshold 20
        graphattn.attention(q.requires_grad_(), q, q, graph)  # a backward follows: threshold 10
        with torch.no_grad():
            graphattn.attention(q, q, q, graph)
        graphattn.attention(q, q, q, graph, return_lse=True)
        graphattn.attention(q, q, q, graph, backend="cpu")
    assert seen == ["cpu", "cpu", "cpu", "cpu", "cpu",
                    "sdpa", "sdpa", "sdpa", "cpu", "cpu"]


def test_routed_segments_give_the_kernels_result(crossover, monkeypatch):
    graph = graphattn.Graph.block_diagonal(torch.tensor([0, 0, 30, 31, 55]))
    q, k, v = (torch.randn(55, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    seen = _chosen(monkeypatch)
    out = graphattn.attention(q, k, v, graph)
    assert seen == ["sdpa"]
    ref = graphattn.attention(q, k, v, graph, backend="cpu")
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v))):
        torch.testing.assert_close(a, b)
