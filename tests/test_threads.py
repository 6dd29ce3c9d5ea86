"""Several Python threads calling graphattn.attention at once: on graphs of their own and on one
shared Graph whose lazy caches (transpose, is_complete, backend plans) are first built by the
racing calls. Every thread must get bitwise the serial results, forward and backward; nothing
may crash or deadlock (joins have a timeout, so a deadlock fails the test instead of hanging it).

The Triton backend is not run from several threads here: on CPU it runs in Triton's interpreter,
which keeps global state while it interprets a kernel (two kernels interpreted at once fail with
"Did you forget to add @triton.jit?"). That is the interpreter's limit, not the GPU path's; the
Triton schedule that graphattn caches on the Graph is still built concurrently below.
"""
import threading
import time

import pytest
import torch

import graphattn
from graphattn import Graph

from conftest import DEVICE, has_triton_kernels, random_edges, random_rows

THREADS = 4
JOIN_TIMEOUT_S = 120.0  # generous: a deadlock is forever, 2 busy cores are slow but not that slow

# Backends that may run concurrently in one process on this machine (see the module docstring).
CONCURRENT_BACKENDS = ["cpu", "reference"] if DEVICE == "cpu" else ["reference"]


def run_threads(target, args_per_thread):
    """Start one thread per args tuple behind a barrier (so they really overlap), join each with
    a timeout; re-raise the first exception a thread raised; fail on a thread still running."""
    barrier = threading.Barrier(len(args_per_thread))
    results = [None] * len(args_per_thread)
    errors = []

    def body(i, args):
        try:
            barrier.wait(timeout=JOIN_TIMEOUT_S)
            results[i] = target(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i, a), daemon=True) for i, a in enumerate(args_per_thread)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads {stuck} still running after {JOIN_TIMEOUT_S} s: deadlock or hang"
    if errors:
        raise errors[0]
    return results


def make_case(seed, n_src, n_dst, num_edges, heads=2, dim=8, dtype=torch.float32):
    q = random_rows(n_dst, heads, dim, dtype, seed=seed)
    k = random_rows(n_src, heads, dim, dtype, seed=seed + 1)
    v = random_rows(n_src, heads, dim, dtype, seed=seed + 2)
    grad_out = random_rows(n_dst, heads, dim, dtype, seed=seed + 3)
    grad_lse = random_rows(n_dst, heads, 1, torch.float32, seed=seed + 4)[..., 0]
    edge_index = random_edges(n_src, n_dst, num_edges, seed=seed)
    return q, k, v, grad_out, grad_lse, edge_index


def forward_backward(case, pattern, backend):
    """out, lse and the gradients of q, k, v for fixed output gradients (lse's included)."""
    q, k, v, grad_out, grad_lse, _ = case
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = graphattn.attention(*leaves, pattern, backend=backend, return_lse=True)
    grads = torch.autograd.grad((out, lse), leaves, (grad_out, grad_lse))
    return (out.detach(), lse.detach(), *grads)


def assert_bitwise(got, expected, what):
    names = ("out", "lse", "dq", "dk", "dv")
    for name, a, b in zip(names, got, expected):
        assert torch.equal(a, b), f"{what}: {name} differs from the serial result"


CASES = [(10, 30, 30, 120), (20, 17, 25, 60), (30, 64, 40, 400), (40, 5, 9, 0), (50, 33, 33, 33)]


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_threads_on_their_own_graphs_match_serial_calls(backend):
    cases = [make_case(*c) for c in CASES[:THREADS]]
    # Serial results, each on a Graph of its own.
    expected = [forward_backward(c, Graph.from_edge_index(c[5], num_nodes=(c[1].shape[0], c[0].shape[0])), backend)
                for c in cases]

    def work(case, index):
        got = []
        for _ in range(3):  # a fresh Graph each time, and once a raw edge_index
            graph = Graph.from_edge_index(case[5], num_nodes=(case[1].shape[0], case[0].shape[0]))
            got.append(forward_backward(case, graph, backend))
        got.append(forward_backward(case, case[5], backend))
        return index, got

    for index, got in run_threads(work, [(c, i) for i, c in enumerate(cases)]):
        for j, result in enumerate(got):
            assert_bitwise(result, expected[index], f"thread {index}, call {j}")


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_threads_on_one_shared_graph_match_serial_calls(backend):
    case = make_case(60, 48, 48, 300)
    n = case[0].shape[0]
    expected = forward_backward(case, Graph.from_edge_index(case[5], num_nodes=n), backend)
    shared = Graph.from_edge_index(case[5], num_nodes=n)  # nothing lazy built yet: the threads race for it

    def work():
        results = [forward_backward(case, shared, backend) for _ in range(3)]
        return results, shared.transposed(), shared.is_complete()

    transposes = set()
    for results, transposed, complete in run_threads(work, [()] * THREADS):
        for j, result in enumerate(results):
            assert_bitwise(result, expected, f"shared graph, call {j}")
        transposes.add(id(transposed))
        assert complete is False
    assert len(transposes) == 1, "threads saw different transposes: the lazy build ran more than once"


@pytest.mark.parametrize("backend", CONCURRENT_BACKENDS)
def test_threads_on_one_shared_segments_graph_match_serial_calls(backend):
    ptr = torch.tensor([0, 5, 5, 19, 40], device=DEVICE)
    case = make_case(70, 40, 40, 0)
    expected = forward_backward(case, Graph.block_diagonal(ptr), backend)
    shared = Graph.block_diagonal(ptr)
    for results in run_threads(lambda: [forward_backward(case, shared, backend) for _ in range(3)], [()] * THREADS):
        for j, result in enumerate(results):
            assert_bitwise(result, expected, f"segments, call {j}")


def test_concurrent_first_builds_run_once_and_share_one_object():
    """The race itself, made wide: each build sleeps, so without the per-graph lock every thread
    would build its own copy (and the last would overwrite the others)."""
    graph = Graph.from_edge_index(random_edges(30, 30, 90, seed=5), num_nodes=30)
    builds = {"transposed": 0, "plan": 0}
    real_build = graph._build_transposed

    def slow_transposed():
        builds["transposed"] += 1
        time.sleep(0.05)
        return real_build()

    def slow_plan():
        builds["plan"] += 1
        time.sleep(0.05)
        graph.transposed()  # a build may use another lazy cache of the same graph (re-entrant lock)
        return [torch.arange(3)]

    graph._build_transposed = slow_transposed
    results = run_threads(lambda: (graph.cached(("test", "plan"), slow_plan), graph.transposed()), [()] * 8)
    assert builds == {"transposed": 1, "plan": 1}
    assert len({id(plan) for plan, _ in results}) == 1
    assert len({id(t) for _, t in results}) == 1


@pytest.mark.skipif(not has_triton_kernels("csr_attention"), reason="Triton CSR kernels not available here")
def test_triton_plans_built_concurrently_are_built_once():
    """The Triton schedule cached on a shared Graph, built by racing threads (no kernel runs)."""
    triton_backend = graphattn.dispatch.BACKENDS["triton"]
    graph = Graph.from_edge_index(random_edges(50, 50, 400, seed=6), num_nodes=50)
    for with_transposed in (False, True):
        plans = run_threads(lambda w=with_transposed: triton_backend.csr_plan(graph, w), [()] * THREADS)
        assert all(p is plans[0] for p in plans), "each thread built its own Triton plan"
    seg = Graph.block_diagonal(torch.tensor([0, 3, 10], device=DEVICE))
    plans = run_threads(lambda: triton_backend.segment_plan(seg), [()] * THREADS)
    assert all(p is plans[0] for p in plans)


def test_nn_layers_in_threads_match_serial_steps():
    """A GATConv forward+backward per thread (each its own module copy, one shared edge_index)."""
    from graphattn.nn import GATConv

    torch.manual_seed(0)
    layer = GATConv(16, 8, heads=2).to(DEVICE)
    x = torch.randn(50, 16, device=DEVICE)
    edge_index = random_edges(50, 50, 300, seed=7)

    def step(module):
        module.zero_grad()
        out = module(x, edge_index)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in module.parameters()]

    import copy

    expected = step(copy.deepcopy(layer))
    for out, grads in run_threads(step, [(copy.deepcopy(layer),) for _ in range(THREADS)]):
        assert torch.equal(out, expected[0])
        assert all(torch.equal(a, b) for a, b in zip(grads, expected[1]))
