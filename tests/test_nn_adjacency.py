"""graphattn.nn layers on every adjacency form (graphattn/nn/adjacency.py): an edge_index tensor
(int64, int32), a torch sparse adj_t (CSR from to_torch_csc_tensor(...).t(), CSC, COO coalesced
or not), a graphattn.Graph, against the edge_index call and against PyG's own layer where PyG
takes the form; and the identity cache of prepared patterns (reuse, invalidation, lifetime,
sharing across layers, threads, torch.compile)."""
import gc
import threading
import weakref

import pytest
import torch

import graphattn
from graphattn import Graph
from graphattn import nn as gnn
from graphattn.nn import adjacency

pyg = pytest.importorskip("torch_geometric.nn", reason="torch_geometric is needed to compare with PyG's layers")
from torch_geometric.utils import coalesce, to_torch_csc_tensor, to_torch_csr_tensor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*[Ss]parse.*:UserWarning")  # torch's beta notes on sparse

DTYPE = torch.float64
N, F_IN, E_DIM, HEADS = 11, 6, 3, 2
TOL = dict(rtol=1e-9, atol=1e-9)


def make_edges(n, e, seed):
    """Unique edges (a sparse adjacency holds each pair once) with two explicit self-loops, in a
    shuffled column order (so the edge_index order differs from every sparse layout's)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)])
    ei = coalesce(torch.cat([ei, torch.tensor([[0, 4], [0, 4]])], 1), num_nodes=n)
    return ei[:, torch.randperm(ei.shape[1], generator=g)]


EI = make_edges(N, 36, 0)
X = torch.randn(N, F_IN, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
EA = torch.randn(EI.shape[1], E_DIM, generator=torch.Generator().manual_seed(2), dtype=DTYPE)


def csr_of(ei, values=None):
    """adj_t as PyG users build it; with values [E, F], a hybrid CSR [N_dst, N_src, F] (whose .t()
    PyG's route cannot take), built by to_torch_csr_tensor on (targets, sources)."""
    if values is None:
        return to_torch_csc_tensor(ei, size=(N, N)).t()
    return to_torch_csr_tensor(ei.flip(0), values, size=(N, N))


def to_form(form, ei=EI, values=None):
    """(the adjacency in `form`, the edge_index [2, E] of its edges in its own order)."""
    if form == "int64":
        return ei, ei
    if form == "int32":
        return ei.int(), ei
    if form == "graph":
        return Graph.from_edge_index(ei, num_nodes=N), ei
    if form == "coo_unsorted":  # indices[0] targets, indices[1] sources, in edge_index column order
        vals = torch.ones(ei.shape[1], dtype=DTYPE) if values is None else values
        return torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), vals, (N, N) + vals.shape[1:]), ei
    adj = csr_of(ei, values)
    if form == "csc":
        adj = adj.to_sparse_csc()
    elif form == "coo":
        adj = adj.to_sparse_coo().coalesce()
    return adj, order_of(adj)


def order_of(adj):
    """edge_index [2, nnz] (sources, targets) of a torch sparse adj_t in its value order."""
    if adj.layout == torch.sparse_csr:
        dst = torch.repeat_interleave(torch.arange(adj.shape[0]), adj.crow_indices().diff())
        return torch.stack([adj.col_indices(), dst])
    if adj.layout == torch.sparse_csc:
        src = torch.repeat_interleave(torch.arange(adj.shape[1]), adj.ccol_indices().diff())
        return torch.stack([src, adj.row_indices()])
    idx = adj._indices()
    return torch.stack([idx[1], idx[0]])


def values_in(order):
    """EA's rows for the edges of `order` (EA is in EI's column order)."""
    pos = {(int(s), int(d)): i for i, (s, d) in enumerate(EI.t().tolist())}
    return EA[torch.tensor([pos[(int(s), int(d))] for s, d in order.t().tolist()])]


def dense_alpha(weights, transformer):
    """The returned weights as a dense [N_dst, N_src, H] (order-free), differentiable. GAT layers
    return a torch sparse adj_t with alpha as its values; TransformerConv returns adj_t as it is."""
    index, alpha = weights
    if index.layout != torch.strided:
        if not transformer:
            return index.to_dense()
        index = order_of(index)
    out = alpha.new_zeros(N, N, alpha.shape[1])
    return out.index_put((index[1].long(), index[0].long()), alpha, accumulate=True)


LOSS_W = torch.rand(N, N, HEADS, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
OUT_W = torch.randn(N, 64, generator=torch.Generator().manual_seed(9), dtype=DTYPE)


def run(layer, edge_index, edge_attr=None, weights=False):
    """Output, dense weights, and the gradients of x, edge_attr and every parameter."""
    layer.zero_grad(set_to_none=True)
    x = X.clone().requires_grad_(True)
    ea = None if edge_attr is None else edge_attr.clone().requires_grad_(True)
    kw = {"edge_attr": ea} if ea is not None else {}
    if weights:
        kw["return_attention_weights"] = True
    res = layer(x, edge_index, **kw)
    out, w = res if weights else (res, None)
    loss = (out * OUT_W[:, :out.shape[1]]).sum()
    dense = None
    if weights:
        dense = dense_alpha(w, "Transformer" in type(layer).__name__)
        loss = loss + (dense * LOSS_W).sum()
    loss.backward()
    grads = {k: p.grad for k, p in layer.named_parameters()}
    return out, dense, x.grad, None if ea is None else ea.grad, grads, w


def assert_same(a, b, what):
    out_a, dense_a, xg_a, eg_a, g_a, _ = a
    out_b, dense_b, xg_b, eg_b, g_b, _ = b
    torch.testing.assert_close(out_a, out_b, **TOL, msg=f"{what}: out")
    if dense_b is not None:
        torch.testing.assert_close(dense_a, dense_b, **TOL, msg=f"{what}: weights")
    torch.testing.assert_close(xg_a, xg_b, **TOL, msg=f"{what}: grad x")
    if eg_b is not None:
        torch.testing.assert_close(eg_a, eg_b, **TOL, msg=f"{what}: grad edge_attr")
    assert g_a.keys() == g_b.keys()
    for k in g_b:
        if g_b[k] is None:
            assert g_a[k] is None or not g_a[k].any(), k
        else:
            torch.testing.assert_close(g_a[k], g_b[k], **TOL, msg=f"{what}: grad {k}")


def layers(name, edge_dim, loops):
    kw = dict(heads=HEADS, edge_dim=edge_dim)
    if name != "TransformerConv":
        kw["add_self_loops"] = loops
    torch.manual_seed(0)
    ref = getattr(pyg, name)(F_IN, 4, **kw).to(DTYPE)
    ours = getattr(gnn, name)(F_IN, 4, **kw).to(DTYPE)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


FORMS = ["int64", "int32", "csr", "csc", "coo", "coo_unsorted", "graph"]
CASES = [(name, form, ea, loops) for name in ("GATConv", "GATv2Conv", "TransformerConv") for form in FORMS
         for ea in (False, True) for loops in ((False, True) if name != "TransformerConv" else (False,))]


def pyg_takes(name, form, with_ea, loops):
    """What PyG 2.8.1's layer takes: not a Graph (ours), not a CSC adjacency (its generated
    propagate/edge_updater raise "invalid layout"), not an uncoalesced COO (indices() raises) unless
    its self-loop route coalesces it first, and not explicit edge_attr with self-loops on a torch
    sparse adjacency (an assert in remove_self_loops)."""
    if form in ("graph", "csc") or (form == "coo_unsorted" and not loops):
        return False
    return not (form in ("csr", "coo", "coo_unsorted") and loops and with_ea)


@pytest.mark.parametrize("name,form,with_ea,loops", CASES,
                         ids=[f"{n}-{f}-{'ea' if e else 'noea'}-{'loops' if lo else 'noloops'}"
                              for n, f, e, lo in CASES])
def test_form_matches_edge_index_and_pyg(name, form, with_ea, loops):
    ref, ours = layers(name, E_DIM if with_ea else None, loops)
    adj, order = to_form(form)
    ea = values_in(order) if with_ea else None
    got = run(ours, adj, ea, weights=True)
    base = run(ours, order, ea, weights=True)  # the same edges as an edge_index, in the form's order
    assert_same(got, base, f"{form} vs edge_index")
    w = got[5]
    if name == "TransformerConv" and form in ("csr", "csc", "coo", "coo_unsorted"):
        assert w[0] is adj  # PyG's TransformerConv returns a torch sparse adj_t as it is
    elif form in ("csr", "csc", "coo", "coo_unsorted"):
        assert w[0].layout == (adj.layout if form != "coo_unsorted" else torch.sparse_coo)
    elif form == "graph" or loops:
        assert w[0].dtype == torch.int64 and w[0].shape == (2, w[1].shape[0])
    else:
        assert w[0] is adj  # an edge_index without added loops comes back as it is
    if form == "graph":  # the Graph's edges in the column order it was built from, loops appended
        edges = EI if not loops else torch.cat([EI[:, EI[0] != EI[1]], torch.arange(N).repeat(2, 1)], 1)
        assert torch.equal(w[0], edges)
    if not pyg_takes(name, form, with_ea, loops):
        return
    pyg_adj = adj.clone() if form.startswith("coo") else adj  # PyG marks a COO coalesced in place
    theirs = run(ref, pyg_adj, ea, weights=True)
    if form == "int32":  # PyG 2.8.1's backward is wrong with int32 indices here (a finite difference
        # agrees with its int64 call and with ours): compare the forward only; the gradients were
        # compared with the int64 call above
        torch.testing.assert_close(got[0], theirs[0], **TOL)
        torch.testing.assert_close(got[1], theirs[1], **TOL)
    else:
        assert_same(got, theirs, f"{form} vs PyG")
    if form in ("int64", "int32"):
        assert torch.equal(w[0], theirs[5][0]) and w[0].dtype == theirs[5][0].dtype
    torch.testing.assert_close(w[1], theirs[5][1], **TOL, msg="alpha in PyG's order")


@pytest.mark.parametrize("name,loops", [("GATConv", False), ("GATConv", True), ("GATv2Conv", False),
                                        ("GATv2Conv", True), ("TransformerConv", False)])
def test_multidimensional_sparse_values_are_the_edge_features(name, loops):
    """A layer with edge_dim called without edge_attr on a hybrid adjacency [N, N, F]: PyG's
    MessagePassing takes the values as edge_attr (loops filled from fill_value); so do we."""
    ref, ours = layers(name, E_DIM, loops)
    adj = csr_of(EI, EA)
    order = order_of(adj)
    got = run(ours, adj, weights=True)
    # PyG's returned adjacency is malformed here (set_sparse_value sizes it [N, N, F, H]): compare
    # its outputs, gradients and alpha vector, and our returned adjacency with the edge_index call's
    assert_same(run(ours, adj), run(ref, adj), "hybrid CSR vs PyG")
    torch.testing.assert_close(got[5][1], ref(X, adj, return_attention_weights=True)[1][1], **TOL)
    base = run(ours, order, adj.values(), weights=True)
    assert_same(got, base[:3] + (None,) + base[4:], "hybrid CSR vs edge_index + edge_attr")
    with_1d = run(ours, csr_of(EI), weights=True)  # 1-D values are not edge features
    assert not torch.allclose(with_1d[0], got[0])


def test_bipartite_sparse_and_graph():
    """adj_t [N_dst, N_src] with N_dst != N_src: sizes come from it; the same as the edge_index call."""
    torch.manual_seed(0)
    layer = gnn.GATConv((F_IN, 5), 4, heads=2, add_self_loops=False).double().eval()
    ref = pyg.GATConv((F_IN, 5), 4, heads=2, add_self_loops=False).double().eval()
    layer.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(3)
    ei = coalesce(torch.stack([torch.randint(0, 9, (25,), generator=g), torch.randint(0, 6, (25,), generator=g)]))
    x = (torch.randn(9, F_IN, dtype=DTYPE), torch.randn(6, 5, dtype=DTYPE))
    adj = to_torch_csc_tensor(ei, size=(9, 6)).t()
    assert adj.shape == (6, 9)
    expected = layer(x, ei)
    torch.testing.assert_close(layer(x, adj), expected, **TOL)
    torch.testing.assert_close(ref(x, adj), expected, **TOL)
    torch.testing.assert_close(layer(x, Graph.from_edge_index(ei, num_nodes=(9, 6))), expected, **TOL)
    # x_dst = None: the adjacency states the number of targets
    out = layer((x[0], None), adj)
    assert out.shape[0] == 6


@pytest.mark.parametrize("loops", [False, True])
def test_dropout_mask_follows_the_edge_order(loops):
    """Attention dropout hashes (seed, edge column, head): a form and the edge_index in that form's
    edge order draw the same mask (no loops: a CSR's value order; loops: a Graph and its edge_index)."""
    torch.manual_seed(0)
    layer = gnn.GATConv(F_IN, 4, heads=HEADS, dropout=0.5, add_self_loops=loops).double().train()
    adj = Graph.from_edge_index(EI, num_nodes=N) if loops else csr_of(EI)
    same = EI if loops else order_of(adj)
    torch.manual_seed(5)
    a, (_, wa) = layer(X, adj, return_attention_weights=True)
    torch.manual_seed(5)
    b, (_, wb) = layer(X, same, return_attention_weights=True)
    assert torch.equal(a, b) and torch.equal(wa, wb) and (wa == 0).any()


def test_prepared_graph_is_what_attention_builds():
    """graphattn.attention on the prepared Graph equals the call on the raw edge_index, bitwise."""
    q, k, v = (torch.randn(N, 2, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))
    prepared = adjacency.prepare(EI, N, N).graph
    assert torch.equal(graphattn.attention(q, k, v, prepared), graphattn.attention(q, k, v, EI))
    assert torch.equal(prepared.eid, Graph.from_edge_index(EI, num_nodes=N).eid)


# ---------------------------------------------------------------- the cache
@pytest.fixture
def count_builds(monkeypatch):
    """Counts Graph.from_edge_index calls (the sort), from anywhere."""
    adjacency.clear_cache()
    calls = []
    original = Graph.from_edge_index.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Graph, "from_edge_index", classmethod(counting))
    yield calls
    adjacency.clear_cache()


@pytest.mark.parametrize("name", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_same_tensor_does_not_sort_again(count_builds, name):
    _, layer = layers(name, None, True)
    ei = EI.clone()
    first = layer(X, ei)
    assert len(count_builds) == 1
    for _ in range(3):
        torch.testing.assert_close(layer(X, ei), first, rtol=0, atol=0)
    assert len(count_builds) == 1
    layer(X, ei.clone())  # another tensor object with the same values: prepared anew
    assert len(count_builds) == 2


def test_sparse_input_is_cached_and_csr_is_not_sorted(count_builds):
    _, layer = layers("GATConv", None, False)
    adj = csr_of(EI)
    first = layer(X, adj)
    assert len(count_builds) == 0  # a CSR adj_t is the Graph's CSR as it is
    coo = adj.to_sparse_coo()
    layer(X, coo)
    layer(X, coo)
    assert len(count_builds) == 1
    torch.testing.assert_close(layer(X, coo), first, **TOL)


def test_in_place_edit_is_seen(count_builds):
    _, layer = layers("GATConv", None, True)
    ei = EI.clone()
    before = layer(X, ei)
    src = int(ei[0, 0])
    ei[0, 0] = (src + 3) % N if (src + 3) % N != int(ei[1, 0]) else (src + 4) % N  # not a loop
    after = layer(X, ei)
    assert len(count_builds) == 2
    torch.testing.assert_close(after, layer(X, ei.clone()), rtol=0, atol=0)
    assert not torch.allclose(after, before)


def test_in_place_edit_of_sparse_indices_is_seen(count_builds):
    _, layer = layers("GATConv", None, False)
    adj = csr_of(EI).to_sparse_coo()  # coalesced COO
    before = layer(X, adj)
    adj._indices()[1, 0] = (int(adj._indices()[1, 0]) + 5) % N  # bumps the version of adj too
    after = layer(X, adj)
    fresh = torch.sparse_coo_tensor(adj._indices().clone(), adj._values().clone(), adj.shape)
    torch.testing.assert_close(after, layer(X, fresh), rtol=0, atol=0)
    assert not torch.allclose(after, before)


def test_different_node_counts_rebuild(count_builds):
    _, layer = layers("GATConv", None, True)
    ei = EI.clone()
    layer(X, ei)
    x_more = torch.cat([X, torch.randn(4, F_IN, dtype=DTYPE)])
    out = layer(x_more, ei)  # the same edges over 15 nodes: 4 more self-loops, bigger Graph
    assert out.shape[0] == N + 4 and len(count_builds) == 2
    torch.testing.assert_close(out, layer(x_more, ei.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("form", ["int64", "csr"])
@pytest.mark.parametrize("loops", [False, True])
def test_entry_dies_with_its_edge_index(form, loops):
    adjacency.clear_cache()
    _, layer = layers("GATConv", None, loops)
    ei = EI.clone() if form == "int64" else csr_of(EI)
    layer(X, ei).sum().backward()
    graph = weakref.ref(adjacency.prepare(ei, N, N, self_loops=N if loops else None).graph)
    assert graph() is not None and adjacency.cache_info()["entries"] == 1
    del ei
    gc.collect()
    assert graph() is None
    assert adjacency.cache_info() == {"entries": 0, "tensors": 0, "max_entries": adjacency.MAX_ENTRIES}


def test_cache_is_bounded():
    adjacency.clear_cache()
    keep = [EI.clone() for _ in range(adjacency.MAX_ENTRIES + 5)]
    for ei in keep:
        adjacency.prepare(ei, N, N)
    info = adjacency.cache_info()
    assert info["entries"] == adjacency.MAX_ENTRIES and info["tensors"] == adjacency.MAX_ENTRIES
    adjacency.clear_cache()


def test_two_layers_share_one_prepared_graph(count_builds):
    torch.manual_seed(0)
    model = torch.nn.ModuleList([gnn.GATConv(F_IN, 4, heads=2), gnn.GATConv(8, 3)]).double()
    ei = EI.clone()
    for _ in range(3):  # three training steps
        model[1](torch.relu(model[0](X, ei)), ei).sum().backward()
    assert len(count_builds) == 1


def test_graph_input_keeps_its_loops_on_the_graph(count_builds):
    _, layer = layers("GATv2Conv", None, True)
    graph = Graph.from_edge_index(EI, num_nodes=N)
    count_builds.clear()
    first = layer(X, graph)
    layer(X, graph)
    assert len(count_builds) == 1  # the loop-augmented pattern, built once
    assert ("graphattn.nn.self_loops", N) in graph._cache
    assert adjacency.cache_info()["entries"] == 0  # nothing of it in the process-wide table
    torch.testing.assert_close(first, layer(X, EI), **TOL)


def test_threads_get_correct_results():
    """Several threads call one layer at once on shared and private edge_index tensors, more
    tensors than the table holds (so entries are evicted and rebuilt concurrently)."""
    adjacency.clear_cache()
    _, layer = layers("GATConv", E_DIM, True)
    tensors = [make_edges(N, 30, seed) for seed in range(12)]
    attrs = [torch.randn(t.shape[1], E_DIM, dtype=DTYPE, generator=torch.Generator().manual_seed(i))
             for i, t in enumerate(tensors)]
    with torch.no_grad():
        expected = [layer(X, t.clone(), attrs[i]) for i, t in enumerate(tensors)]
    errors = []

    def work(offset):
        try:
            for step in range(30):
                i = (offset * 5 + step) % len(tensors)
                with torch.no_grad():
                    out = layer(X, tensors[i], attrs[i])
                if not torch.equal(out, expected[i]):
                    errors.append((offset, step, i))
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert adjacency.cache_info()["entries"] <= adjacency.MAX_ENTRIES
    adjacency.clear_cache()


@pytest.mark.parametrize("name", ["GATConv", "TransformerConv"])
def test_torch_compile_matches_eager_and_skips_the_table(name):
    adjacency.clear_cache()
    torch._dynamo.reset()
    _, layer = layers(name, None, True)
    compiled = torch.compile(layer, fullgraph=False, backend="aot_eager")
    ei = EI.clone()
    out = compiled(X, ei)
    assert adjacency.cache_info()["entries"] == 0
    torch.testing.assert_close(out, layer(X, EI.clone()), **TOL)
    torch._dynamo.reset()


# ---------------------------------------------------------------- torch_sparse.SparseTensor (a stand-in)
class _Storage:
    def __init__(self, rowptr, col, value):
        self._rowptr, self._col, self._value = rowptr, col, value

    def rowptr(self):
        return self._rowptr

    def col(self):
        return self._col

    def value(self):
        return self._value


class SparseTensor:
    """A stand-in for torch_sparse.SparseTensor with the members graphattn uses (the package has no
    wheel for this torch): storage.rowptr()/col()/value(), sparse_sizes(), set_value(value,
    layout='coo'), and the constructor's rowptr/col/sparse_sizes/is_sorted/trust_data keywords."""

    def __init__(self, rowptr=None, col=None, value=None, sparse_sizes=None, is_sorted=False, trust_data=False):
        self.storage = _Storage(rowptr, col, value)
        self._sizes = tuple(sparse_sizes)

    def sparse_sizes(self):
        return self._sizes

    def set_value(self, value, layout=None):
        assert layout == "coo"
        return SparseTensor(self.storage.rowptr(), self.storage.col(), value, self._sizes)


SparseTensor.__module__ = "torch_sparse.tensor"


@pytest.mark.parametrize("loops", [False, True])
def test_sparse_tensor_stand_in(loops):
    """Exercises the SparseTensor path against the stand-in above, NOT the real package."""
    _, layer = layers("GATConv", None, loops)
    csr = csr_of(EI)
    adj = SparseTensor(rowptr=csr.crow_indices(), col=csr.col_indices(), sparse_sizes=(N, N))
    out, ret = layer(X, adj, return_attention_weights=True)
    out_csr, (adj_csr, alpha_csr) = layer(X, csr, return_attention_weights=True)
    torch.testing.assert_close(out, out_csr, **TOL)
    assert isinstance(ret, SparseTensor)
    torch.testing.assert_close(ret.storage.value(), alpha_csr, **TOL)
    assert torch.equal(ret.storage.rowptr(), adj_csr.crow_indices())
    assert torch.equal(ret.storage.col(), adj_csr.col_indices())


# ---------------------------------------------------------------- errors
def test_bad_forms_name_edge_index():
    layer = gnn.GATConv(F_IN, 4).double()
    for bad, err in [(EI.float(), TypeError), (EI.t().contiguous(), TypeError), (EI.tolist(), TypeError),
                     (EI[0], TypeError), (EI.to_sparse(), ValueError)]:
        with pytest.raises(err, match="edge_index"):
            layer(X, bad)
    with pytest.raises(ValueError, match="edge_index.*segments"):
        layer(X, Graph.block_diagonal(torch.tensor([0, 5, N])))
    with pytest.raises(ValueError, match="edge_index"):  # an adjacency of other sizes than x
        layer(X, to_torch_csc_tensor(EI, size=(N + 1, N + 1)).t())
    with pytest.raises(ValueError, match="edge_index"):
        layer(X, Graph.from_edge_index(EI, num_nodes=N + 2))
    bad_csr = torch.sparse_csr_tensor(torch.tensor([0, 2, 1] + [2] * (N - 2)), torch.tensor([0, 1]),
                                      torch.ones(2), (N, N))
    with pytest.raises(IndexError, match="edge_index"):
        layer(X, bad_csr)
    out_of_range = torch.sparse_coo_tensor(torch.tensor([[0, 1], [2, N + 3]]), torch.ones(2), (N, N),
                                           check_invariants=False)
    with pytest.raises(IndexError, match="edge_index"):
        layer(X, out_of_range)
    ea_layer = gnn.GATConv(F_IN, 4, edge_dim=E_DIM).double()
    with pytest.raises(ValueError, match="edge_attr"):
        ea_layer(X, EI, EA[:-1])
