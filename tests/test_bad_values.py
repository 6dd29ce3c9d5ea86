"""Bad values and bad indices (shared/API.md):

- NaN or +-inf in q, k, v reach only the targets that read them, as in SDPA: every output row and
  every gradient row outside what the bad row feeds stays bitwise the result of the same call
  without the bad value, on every backend that runs here (cpu, reference, Triton under the
  interpreter), for edge lists, segments and dense calls.
- An index < 0 or >= N in edge_index raises IndexError naming edge_index on every backend, eagerly
  and under torch.compile(fullgraph=True); int32 indices near 2**31 - 1 too.
- A Graph built for another device or other sizes is refused with the error that says how to fix it.
- Duplicate edges and self-loops are ordinary edges.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import graphattn
from graphattn import Graph

from conftest import DEVICE, REL_RMS, assert_matches, has_triton_kernels, random_rows, reference_sparse, \
    sparse_backends

N, H, D = 9, 2, 4
# Row 3 of k/v is read by targets 0, 4 and 6; target 3 reads source 2; target 8 reads nothing.
EDGES = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 5],
                      [1, 2, 3, 4, 5, 6, 7, 0, 0, 6, 5]], device=DEVICE)
BAD = 3


def segment_backends():
    names = ["cpu", "sdpa", "reference"] if DEVICE == "cpu" else ["reference"]
    if has_triton_kernels("dense_attention"):
        names.append("triton")
    return names


def dense_backends():
    names = ["sdpa", "reference"]
    if has_triton_kernels("dense_attention"):
        names.append("triton")
    return names


def targets_of(sources, edges):
    return sorted({int(t) for s, t in edges.t().tolist() if s in sources})


def sources_into(targets, edges):
    return sorted({int(s) for s, t in edges.t().tolist() if t in targets})


def run(q, k, v, pattern, backend, grad_out, grad_lse):
    """out, lse, dq, dk, dv for fixed gradients of out and lse (so the gradient entering a row
    never depends on the values: what the bad value changes is the op's own doing)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = graphattn.attention(*leaves, pattern, backend=backend, return_lse=True)
    grads = torch.autograd.grad((out, lse), leaves, (grad_out, grad_lse))
    return {"out": out.detach(), "lse": lse.detach(), "dq": grads[0], "dk": grads[1], "dv": grads[2]}


def assert_only_rows_change(clean, dirty, allowed, what):
    """Every row (dim 0, or dim -3 for dense) outside allowed[name] is bitwise the clean one."""
    for name, rows in allowed.items():
        a, b = clean[name], dirty[name]
        keep = torch.ones(a.shape[0], dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(a[keep], b[keep]), (
            f"{what}: {name} rows {sorted(set(range(a.shape[0])) - set(rows))} must be exact, but "
            f"{torch.nonzero(~(a[keep] == b[keep]).reshape(int(keep.sum()), -1).all(1)).flatten().tolist()} "
            f"(of those) changed")


def bad_value_cases():
    for tensor in "qkv":
        for value in (float("nan"), float("inf"), float("-inf")):
            yield tensor, value


@pytest.mark.parametrize("backend", sparse_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tensor, value", list(bad_value_cases()))
def test_bad_value_reaches_only_the_targets_that_read_it(backend, dtype, tensor, value):
    q, k, v = (random_rows(N, H, D, dtype, seed=s) for s in (1, 2, 3))
    grad_out = random_rows(N, H, D, dtype, seed=4)
    grad_lse = random_rows(N, H, 1, torch.float32, seed=5)[..., 0]
    clean = run(q, k, v, EDGES, backend, grad_out, grad_lse)
    dirty_inputs = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
    dirty_inputs[tensor][BAD] = value
    dirty = run(dirty_inputs["q"], dirty_inputs["k"], dirty_inputs["v"], EDGES, backend, grad_out, grad_lse)

    # The targets the bad row feeds: itself (a row of q) or those with an edge from it (k, v).
    hit = [BAD] if tensor == "q" else targets_of({BAD}, EDGES)
    feeding = sources_into(set(hit), EDGES)  # their sources: dk/dv of these carry the hit rows' terms
    allowed = {"out": hit, "lse": hit, "dq": hit, "dk": feeding, "dv": feeding}
    if tensor == "v":
        # v enters neither the scores nor the weights: lse is untouched, and dV = sum alpha dO is too.
        allowed.update(lse=[], dv=[])
    assert_only_rows_change(clean, dirty, allowed, f"{value} in {tensor}[{BAD}] ({backend}, {dtype})")
    if value != value or tensor == "v":
        # NaN (or an infinite value row) must show in every target that read it, never be hidden.
        # (+-inf in a score may legitimately mask an edge, so q/k infinities are not asserted here.)
        reached = ~torch.isfinite(dirty["out"][hit]).reshape(len(hit), -1).all(1)
        assert reached.all(), f"{value} in {tensor}[{BAD}] did not reach targets {hit} ({backend})"


@pytest.mark.parametrize("backend", sparse_backends())
def test_nan_in_one_head_stays_in_that_head(backend):
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    clean = graphattn.attention(q, k, v, EDGES, backend=backend)
    k_bad = k.clone()
    k_bad[BAD, 1, 0] = float("nan")
    dirty = graphattn.attention(q, k_bad, v, EDGES, backend=backend)
    hit = targets_of({BAD}, EDGES)
    assert torch.equal(dirty[:, 0], clean[:, 0]), "NaN in head 1 changed head 0"
    others = [i for i in range(N) if i not in hit]
    assert torch.equal(dirty[others, 1], clean[others, 1])
    assert torch.isnan(dirty[hit, 1]).all()


@pytest.mark.parametrize("backend", segment_backends())
@pytest.mark.parametrize("tensor", "qkv")
def test_nan_in_segments_stays_in_its_segment(backend, tensor):
    ptr = torch.tensor([0, 3, 7, 7, N], device=DEVICE)  # the bad row 3 is in segment [3, 7)
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (6, 7, 8))
    grad_out = random_rows(N, H, D, torch.float32, seed=9)
    grad_lse = random_rows(N, H, 1, torch.float32, seed=10)[..., 0]
    graph = Graph.block_diagonal(ptr)
    clean = run(q, k, v, graph, backend, grad_out, grad_lse)
    inputs = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
    inputs[tensor][BAD] = float("nan")
    dirty = run(inputs["q"], inputs["k"], inputs["v"], graph, backend, grad_out, grad_lse)
    segment = [3, 4, 5, 6]
    hit = [BAD] if tensor == "q" else segment
    allowed = {"out": hit, "lse": [] if tensor == "v" else hit, "dq": hit, "dk": segment,
               "dv": [] if tensor == "v" else segment}
    assert_only_rows_change(clean, dirty, allowed, f"NaN in {tensor}[{BAD}], segments ({backend})")
    assert torch.isnan(dirty["out"][hit]).reshape(len(hit), -1).any(1).all()


@pytest.mark.parametrize("backend", dense_backends())
@pytest.mark.parametrize("causal", [False, True])
def test_nan_in_dense_key_reaches_only_its_batch_and_the_rows_that_see_it(backend, causal):
    """As SDPA: NaN in k[b, j] reaches the queries of batch b that attend to key j."""
    q, k, v = (random_rows(2 * N, H, D, torch.float32, seed=s).view(2, N, H, D) for s in (11, 12, 13))
    k_bad = k.clone()
    k_bad[1, BAD] = float("nan")
    clean = graphattn.attention(q, k, v, backend=backend, causal=causal)
    dirty = graphattn.attention(q, k_bad, v, backend=backend, causal=causal)
    assert torch.equal(dirty[0], clean[0]), "NaN in batch 1 changed batch 0"
    seeing = list(range(BAD, N)) if causal else list(range(N))  # top-left aligned causal: rows i >= j
    blind = [i for i in range(N) if i not in seeing]
    assert torch.equal(dirty[1, blind], clean[1, blind])
    assert torch.isnan(dirty[1, seeing]).reshape(len(seeing), -1).all(1).all()


# ---------------------------------------------------------------------------
# Indices
# ---------------------------------------------------------------------------
INT32_MAX = 2 ** 31 - 1
BAD_INDICES = [
    ("source = N", [[0, N], [1, 0]], r"edge_index\[0\] \(sources\) holds index 9, outside \[0, 9\)"),
    ("negative source", [[0, -1], [1, 0]], r"edge_index\[0\] \(sources\) holds index -1"),
    ("target = N", [[0, 1], [1, N]], r"edge_index\[1\] \(targets\) holds index 9"),
    ("negative target", [[0, 1], [-5, 0]], r"edge_index\[1\] \(targets\) holds index -5"),
    ("int32 max source", [[INT32_MAX, 0], [1, 0]], rf"edge_index\[0\].*{INT32_MAX}, outside"),
    ("int32 min target", [[0, 1], [1, -INT32_MAX - 1]], rf"edge_index\[1\].*{-INT32_MAX - 1}"),
]


@pytest.mark.parametrize("backend", sparse_backends())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("name, rows, words", BAD_INDICES, ids=[c[0] for c in BAD_INDICES])
def test_out_of_range_index_raises_index_error_on_every_backend(backend, dtype, name, rows, words):
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    edge_index = torch.tensor(rows, dtype=dtype, device=DEVICE)
    with pytest.raises(IndexError, match=words):
        graphattn.attention(q, k, v, edge_index, backend=backend)
    with pytest.raises(IndexError, match=words):
        Graph.from_edge_index(edge_index, num_nodes=N)


def test_int32_indices_near_the_int32_limit_work_when_in_range():
    """int32 edge_index with values near 2**31 - 1 against a q/k of that many rows would need
    terabytes; what can be checked is that int32 indices address rows exactly as int64 ones do
    (they are widened before any arithmetic) and that a bipartite graph's N_src near 2**31 - 1
    is taken without overflow when building the Graph (no row of k is materialised)."""
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    out32 = graphattn.attention(q, k, v, EDGES.to(torch.int32))
    out64 = graphattn.attention(q, k, v, EDGES)
    assert torch.equal(out32, out64)
    big = INT32_MAX - 1
    edge_index = torch.tensor([[big, 0, big], [0, 1, 1]], dtype=torch.int32)
    graph = Graph.from_edge_index(edge_index, num_nodes=(INT32_MAX, 2))
    assert graph.col.dtype == torch.int64 and graph.col.tolist() == [big, 0, big]
    assert graph.rowptr.tolist() == [0, 1, 3]
    with pytest.raises(IndexError, match=rf"holds index {INT32_MAX}, outside \[0, {INT32_MAX}\)"):
        Graph.from_edge_index(torch.tensor([[INT32_MAX], [0]], dtype=torch.int32), num_nodes=(INT32_MAX, 1))


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_out_of_range_index_raises_index_error_under_torch_compile(compile_backend):
    """The eager range check reads data, so under torch.compile the Graph build goes through the
    custom op graphattn::checked_index, whose output the CSR build consumes (inductor cannot drop
    it) and whose eager implementation raises the same IndexError at run time."""
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v, e: graphattn.attention(q, k, v, e), fullgraph=True, backend=compile_backend)
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    good = fn(q, k, v, EDGES)
    assert torch.allclose(good, graphattn.attention(q, k, v, EDGES), atol=1e-6)
    for name, rows, words in BAD_INDICES[:4]:
        for dtype in (torch.int64, torch.int32):
            with pytest.raises(IndexError, match=words):
                fn(q, k, v, torch.tensor(rows, dtype=dtype, device=DEVICE))
    # More edges than traced with: the check holds under dynamic shapes too.
    with pytest.raises(IndexError, match=r"edge_index\[1\] \(targets\) holds index 9"):
        fn(q, k, v, torch.cat([EDGES, torch.tensor([[0], [N]], device=DEVICE)], dim=1))
    # and the compiled function still computes after the errors.
    assert torch.equal(fn(q, k, v, EDGES), good)


def test_graph_built_under_compile_needs_num_nodes():
    torch._dynamo.reset()
    fn = torch.compile(lambda e: Graph.from_edge_index(e).rowptr, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="needs num_nodes"):
        fn(EDGES)


def test_checked_index_op_passes_opcheck():
    from graphattn.graph import checked_index

    torch.library.opcheck(checked_index, (EDGES[0].to(torch.int32), N, "edge_index[0] (sources)"))
    torch.library.opcheck(checked_index, (EDGES[1], N, "edge_index[1] (targets)"))


# A Graph whose CSR was altered after it was built (its tensors are public) bypasses the checks of
# Graph.from_edge_index; the kernels must still not read outside k/v.
def tampered_graph(value, n=N):
    graph = Graph.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]], device=DEVICE), num_nodes=n)
    graph.col = graph.col.clone()
    graph.col[0] = value
    return graph


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU tensors only (a GPU kernel's wild read is a device fault)")
@pytest.mark.parametrize("backend, value", [
    ("cpu", -1), ("cpu", N), ("cpu", 10 ** 9),
    ("reference", -1), ("reference", N), ("reference", 10 ** 9)])
def test_tampered_graph_is_caught_in_the_backend(backend, value):
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    with pytest.raises(IndexError):
        graphattn.attention(q, k, v, tampered_graph(value), backend=backend)


# Triton's kernels may crash the process on a wild read (under the interpreter too), so they run in
# a child process, one value after another (the crashing one last).
_TAMPERED_TRITON = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, graphattn
    q = k = v = torch.randn(6, 2, 4)
    for value in (-1, 6, 10 ** 9):
        graph = graphattn.Graph.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), num_nodes=6)
        graph.col = graph.col.clone()
        graph.col[0] = value
        try:
            graphattn.attention(q, k, v, graph, backend="triton")
        except IndexError as e:
            print(value, "IndexError", e, flush=True)
            continue
        print(value, "no IndexError", flush=True)
        sys.exit(1)
""")


@pytest.mark.skipif(DEVICE != "cpu" or not has_triton_kernels("csr_attention"),
                    reason="Triton under the interpreter (CPU) only")
def test_tampered_graph_is_caught_by_the_triton_kernels():
    result = subprocess.run([sys.executable, "-c", _TAMPERED_TRITON], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}{result.stderr[-2000:]}"


# ---------------------------------------------------------------------------
# A Graph for another device or other sizes
# ---------------------------------------------------------------------------
def test_graph_on_another_device_is_refused_with_the_fix():
    """No second real device is needed: a Graph moved to the meta device is another device."""
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    graph = Graph.from_edge_index(EDGES, num_nodes=N)
    graph.transposed()
    elsewhere = graph.to("meta")
    assert elsewhere.device.type == "meta" and elsewhere._transposed.colptr.device.type == "meta"
    for backend in sparse_backends():
        with pytest.raises(ValueError, match=r"the Graph is on meta.*graph\.to\(q\.device\)"):
            graphattn.attention(q, k, v, elsewhere, backend=backend)
    with pytest.raises(ValueError, match=r"edge_index is on meta but q is on .*\.to\(\)"):
        graphattn.attention(q, k, v, EDGES.to("meta"))


@pytest.mark.parametrize("sizes", [(N + 1, N), (N, N + 1), (N - 1, N - 1)])
def test_graph_of_other_sizes_is_refused_with_the_fix(sizes):
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    edges = EDGES[:, (EDGES < N - 1).all(0)]
    graph = Graph.from_edge_index(edges, num_nodes=sizes)
    for backend in sparse_backends():
        with pytest.raises(ValueError, match=rf"the Graph has {sizes[0]} sources and {sizes[1]} targets.*"
                                             r"num_nodes=\(N_src, N_dst\)"):
            graphattn.attention(q, k, v, graph, backend=backend)


def test_segments_graph_of_other_size_is_refused():
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    with pytest.raises(ValueError, match="the Graph has"):
        graphattn.attention(q, k, v, Graph.block_diagonal(torch.tensor([0, 4, N + 2], device=DEVICE)))


# ---------------------------------------------------------------------------
# Duplicates and self-loops are ordinary edges
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", sparse_backends())
def test_duplicate_edges_and_self_loops_count_as_edges(backend):
    loops = torch.arange(N, device=DEVICE)
    edges = torch.cat([EDGES, EDGES[:, :4], EDGES[:, :2], torch.stack([loops, loops]), torch.tensor(
        [[4, 4, 4], [4, 4, 4]], device=DEVICE)], dim=1)
    q, k, v = (random_rows(N, H, D, torch.float32, seed=s) for s in (1, 2, 3))
    bias = random_rows(edges.shape[1], H, 1, torch.float32, seed=4)[..., 0]
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out, lse = graphattn.attention(*leaves[:3], edges, bias=leaves[3], backend=backend, return_lse=True)
    grads = torch.autograd.grad(out.square().sum() + lse.sum(), leaves)
    ref_out, ref_lse, ref_leaves = reference_sparse(q, k, v, edges, bias)
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_lse.sum(), ref_leaves)
    assert_matches(out, ref_out, torch.float32, "out")
    assert_matches(lse, ref_lse, torch.float32, "lse")
    for name, a, b in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert_matches(a, b, torch.float32, name)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_graph_of_other_size_under_torch_compile_still_names_the_fix(fullgraph):
    """Validation errors raised while dynamo traces (the Graph's sizes are checked against q/k at
    trace time) come back as the ValueError itself without fullgraph; with fullgraph=True dynamo
    wraps them (torch._dynamo.exc.Unsupported, a RuntimeError: "Observed exception") with the
    original message in its text and as its __cause__. Either way the user reads what to fix.
    (Out-of-range indices are checked when the compiled graph runs instead, and stay IndexError.)"""
    torch._dynamo.reset()
    graph = Graph.from_edge_index(EDGES[:, (EDGES < N - 1).all(0)], num_nodes=N - 1)
    q = random_rows(N, H, D, torch.float32, seed=1)
    fn = torch.compile(lambda q: graphattn.attention(q, q, q, graph), fullgraph=fullgraph, backend="aot_eager")
    words = r"the Graph has 8 sources and 8 targets.*num_nodes=\(N_src, N_dst\)"
    with pytest.raises(RuntimeError if fullgraph else ValueError, match=words) as info:
        fn(q)
    if fullgraph:
        assert "ValueError" in repr(info.value.__cause__)


@pytest.mark.parametrize("backend", sparse_backends())
def test_a_nan_query_gives_its_target_a_nan_lse_and_its_sources_nan_gradients(backend):
    """A NaN score is not a masked edge: lse stays NaN (not -inf), so the backward does not take the
    target for one without edges and drop the NaN on its way to the sources it read."""
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 3, 3], [1, 2, 3, 4, 5, 6, 7, 0, 0, 6]], device=DEVICE)
    q, k, v = (random_rows(8, 2, 4, torch.float32, seed=s) for s in (1, 2, 3))
    q[3] = float("nan")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = graphattn.attention(q, k, v, edge_index, return_lse=True, backend=backend)
    assert torch.isnan(lse[3]).all() and torch.isnan(out[3]).all()
    dv = torch.autograd.grad((out, lse), v, (torch.ones_like(out), torch.ones_like(lse)))[0]
    assert torch.isnan(dv[2]).all(), "target 3 reads source 2 only: its NaN must reach dv[2]"
