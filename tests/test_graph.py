"""Graph: CSR construction, the lazy transpose, segments, sizes and statistics."""
import pytest
import torch

from graphattn import Graph

from conftest import DEVICE, random_edges


def test_csr_groups_each_targets_edges_and_keeps_their_columns():
    edge_index = torch.tensor([[4, 0, 2, 1, 3, 0], [2, 0, 2, 1, 0, 2]])
    g = Graph.from_edge_index(edge_index)
    assert (g.num_src, g.num_dst, g.num_edges) == (5, 5, 6)  # one node count for both sides by default
    assert g.rowptr.tolist() == [0, 2, 3, 6, 6, 6]
    # Stable: edges into one target keep their edge_index order.
    assert g.eid.tolist() == [1, 4, 3, 0, 2, 5]
    assert g.col.tolist() == edge_index[0, g.eid].tolist()
    assert g.sorted_targets().tolist() == [0, 0, 1, 2, 2, 2]


def test_transposed_groups_edges_by_source_and_is_cached():
    edge_index = random_edges(13, 17, 90, seed=3).cpu()
    g = Graph.from_edge_index(edge_index, num_nodes=(13, 17))
    t = g.transposed()
    assert t is g.transposed()
    assert t.colptr.shape == (14,) and int(t.colptr[-1]) == 90
    for j in range(13):
        edges = t.eid[t.colptr[j]:t.colptr[j + 1]]
        assert sorted(edges.tolist()) == sorted((edge_index[0] == j).nonzero().flatten().tolist())
        assert torch.equal(edge_index[1, edges], t.row[t.colptr[j]:t.colptr[j + 1]])
    assert torch.equal(g.out_degree(), torch.bincount(edge_index[0], minlength=13))


def test_num_nodes_forms():
    edge_index = torch.tensor([[0, 1], [1, 2]])
    assert (Graph.from_edge_index(edge_index).num_src, Graph.from_edge_index(edge_index).num_dst) == (3, 3)
    assert Graph.from_edge_index(edge_index, num_nodes=10).num_dst == 10
    g = Graph.from_edge_index(edge_index, num_nodes=(2, 7))
    assert (g.num_src, g.num_dst, g.rowptr.numel()) == (2, 7, 8)
    empty = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long))
    assert (empty.num_src, empty.num_dst, empty.num_edges) == (0, 0, 0)


def test_degree_statistics():
    g = Graph.from_edge_index(torch.tensor([[0, 1, 2, 3], [0, 0, 0, 2]]), num_nodes=4)
    assert g.in_degree().tolist() == [3, 0, 1, 0]
    assert g.degree_stats() == {"min": 0, "max": 3, "mean": 1.0, "isolated": 2}


def test_block_diagonal_and_from_batch_agree():
    ptr = torch.tensor([0, 3, 3, 7])
    a = Graph.block_diagonal(ptr)
    b = Graph.from_batch(torch.tensor([0, 0, 0, 2, 2, 2, 2]))
    assert a.kind == b.kind == "segments"
    assert torch.equal(a.ptr, b.ptr) and a.num_segments == 3
    assert a.num_edges == 9 + 16 and a.num_dst == 7
    assert a.in_degree().tolist() == [3, 3, 3, 4, 4, 4, 4]


def test_to_moves_everything_including_the_cached_transpose():
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]))
    g.transposed()
    h = g.to(DEVICE)
    assert h.device.type == DEVICE and h._transposed.colptr.device.type == DEVICE
    assert torch.equal(h.col.cpu(), g.col)


@pytest.mark.parametrize("bad, error, words", [
    (torch.tensor([[0, 1, 2]]), ValueError, "[2, E]"),
    (torch.tensor([0, 1]), ValueError, "[2, E]"),
    (torch.tensor([[0.0], [1.0]]), TypeError, "int64 or int32"),
    ([[0], [1]], TypeError, "torch.Tensor"),
    (torch.tensor([[0, -1], [0, 0]]), IndexError, "edge_index[0]"),
])
def test_bad_edge_index(bad, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        Graph.from_edge_index(bad)


def test_index_beyond_num_nodes():
    with pytest.raises(IndexError, match=r"edge_index\[1\].*outside \[0, 3\)"):
        Graph.from_edge_index(torch.tensor([[0, 1], [1, 5]]), num_nodes=3)


@pytest.mark.parametrize("ptr, words", [
    (torch.tensor([1, 3]), "start with 0"),
    (torch.tensor([0, 3, 2]), "non-decreasing"),
    (torch.tensor([[0, 3]]), "1-D"),
])
def test_bad_ptr(ptr, words):
    with pytest.raises(ValueError, match=words):
        Graph.block_diagonal(ptr)


def test_unsorted_batch_is_rejected():
    with pytest.raises(ValueError, match="sorted"):
        Graph.from_batch(torch.tensor([0, 1, 0]))


def test_graph_survives_deepcopy_and_pickle_with_its_caches():
    """A model holding a Graph is deep-copied (copy.deepcopy, DDP) and saved (torch.save): the
    Graph's lock must not stop that, and the copy gets a lock of its own."""
    import copy
    import pickle

    g = Graph.from_edge_index(random_edges(7, 5, 20, seed=4).cpu(), num_nodes=(7, 5))
    t = g.transposed()
    for h in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        assert h._lock is not None and h._lock is not g._lock
        assert torch.equal(h.col, g.col) and torch.equal(h.transposed().colptr, t.colptr)
        assert h.cached("k", lambda: 1) == 1


def test_cached_builds_once_per_key_and_keeps_it():
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 0]]))
    calls = []
    assert g.cached("a", lambda: calls.append(1) or [1]) is g.cached("a", lambda: calls.append(1) or [2])
    assert calls == [1]
    assert g.is_complete() is False and g.cached("is_complete", lambda: True) is False
