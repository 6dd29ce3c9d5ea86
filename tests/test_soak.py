"""Soak, the CI version (benchmarks/soak.py --quick; the full run is `python -m benchmarks.soak`):
calls of every kind on freshly built graphs, the graphattn.nn layers for some training steps, and a
compiled attention over varying sizes, checking that resident memory stays flat after warm-up, that
no Graph outlives its call (nothing caches graphs, no reference cycle holds one), that the live
Python objects stay flat, and that torch.compile stops recompiling once shapes are dynamic."""
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphattn
from graphattn import Graph

from conftest import DEVICE, has_triton_kernels, random_edges, random_rows, sparse_backends

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from benchmarks import soak  # noqa: E402


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_quick_soak_memory_and_caches_stay_flat(tmp_path):
    """In a process of its own: pytest's log capture keeps every log record torch.compile emits,
    and the tests before this one leave their own objects and memory behind."""
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--quick", "--device", DEVICE, "--json",
                             str(out)], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["calls"] == soak.QUICK["calls"] and report["graphs_built"] > report["calls"]
    assert report["rss_growth_mb"] < 50 and report["graphs_outlived_call"] == 0
    assert report["compiled_graphs"] <= 3  # static, dynamic, and E = 1 (dynamo specialises sizes 0 and 1)


def test_the_graph_tracker_sees_a_graph_kept_by_a_cache():
    """The soak's leak detector itself: a Graph kept alive by a module-level cache, or by a
    reference cycle, is reported as outliving its call."""
    keep = []

    def leaky():
        keep.append(Graph.from_edge_index(torch.tensor([[0], [1]]), num_nodes=2))

    def cyclic():
        g = Graph.from_edge_index(torch.tensor([[0], [1]]), num_nodes=2)
        g._cache["self"] = g

    def clean():
        Graph.from_edge_index(torch.tensor([[0], [1]]), num_nodes=2).transposed()

    tracker = soak._Tracker()
    with tracker:
        tracker.run(clean)
        assert tracker.kept == []
        tracker.run(leaky)
        tracker.run(cyclic)
    assert len(tracker.kept) == 2 and tracker.built == 3
    assert tracker.alive() == 1  # the cycle goes with a full collection, the cached one does not
    keep.clear()
    assert tracker.alive() == 0


@pytest.mark.parametrize("vary", ["edges", "nodes"])
def test_torch_compile_stops_recompiling_for_new_sizes(vary):
    """A compiled attention called on graphs of ever new E (or N and E): dynamo compiles a static
    graph, then marks the sizes dynamic on the first change and compiles one dynamic graph that
    serves every later size. Never one graph per size. E = 1 and E = 0 get a graph each (dynamo
    specialises sizes 0 and 1), once."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda q, k, v, e: graphattn.attention(q, k, v, e), fullgraph=True, backend="aot_eager")
    def calls(edge_counts):
        for i, e in enumerate(edge_counts):
            n = 20 if vary == "edges" else 20 + 3 * i
            q, k, v = (random_rows(n, 2, 4, torch.float32, seed=10 * i + s).requires_grad_() for s in (1, 2, 3))
            edge_index = random_edges(n, n, e, seed=i)
            out = fn(q, k, v, edge_index)
            out.sum().backward()
            expected = graphattn.attention(q.detach(), k.detach(), v.detach(), edge_index)
            assert torch.allclose(out, expected, atol=1e-5)

    calls([30 + 7 * i for i in range(8)])
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    calls([1, 0])
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    calls([1, 0, 5, 77, 1, 0, 200])
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])


def test_one_graph_reused_by_every_backend_keeps_a_bounded_cache():
    """The build-once caches of a Graph reused for many steps on every backend: a fixed set of keys,
    each built once (later calls add nothing, and the transpose is the same object)."""
    n = 30
    graph = Graph.from_edge_index(random_edges(n, n, 150, seed=3), num_nodes=n)
    q, k, v = (random_rows(n, 2, 8, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))

    def steps():
        for backend in sparse_backends():
            for _ in range(2):
                graphattn.attention(q, k, v, graph, backend=backend).sum().backward()
                with torch.no_grad():
                    graphattn.attention(q, k, v, graph, backend=backend)
        graphattn.attention(q, k, v, graph)  # auto: asks is_complete

    steps()
    keys, transposed = dict(graph._cache), graph.transposed()
    assert len(keys) <= soak.MAX_CACHE_KEYS
    steps()
    assert graph._cache.keys() == keys.keys() and all(graph._cache[key] is keys[key] for key in keys)
    assert graph.transposed() is transposed


@pytest.mark.skipif(not has_triton_kernels("csr_attention"), reason="Triton CSR kernels not available here")
def test_triton_plans_live_on_the_graph_not_in_the_kernels_module():
    """The Triton schedule is cached on the Graph (and dies with it), not in a module-level table
    that would grow with every new graph."""
    import weakref

    kernels = sys.modules["graphattn.kernels.csr_attention"] if "graphattn.kernels.csr_attention" in sys.modules \
        else __import__("graphattn.kernels.csr_attention", fromlist=["x"])
    before = {name: len(value) for name, value in vars(kernels).items() if isinstance(value, (dict, list, set))}
    refs = []
    for i in range(3):
        graph = Graph.from_edge_index(random_edges(12, 12, 40, seed=i), num_nodes=12)
        q, k, v = (random_rows(12, 2, 4, torch.float32, seed=s).requires_grad_() for s in (1, 2, 3))
        graphattn.attention(q, k, v, graph, backend="triton").sum().backward()
        assert any(key[0] == "triton.csr_plan" for key in graph._cache if isinstance(key, tuple))
        refs.append(weakref.ref(graph))
        del graph
    gc.collect()
    assert all(r() is None for r in refs)
    after = {name: len(value) for name, value in vars(kernels).items() if isinstance(value, (dict, list, set))}
    assert after == before
