"""GraphMultiheadAttention against GraphGPS's route: to_dense_batch padding +
torch.nn.MultiheadAttention with a key-padding mask, same parameters."""
import pytest
import torch

import graphattn
from graphattn.nn import GraphMultiheadAttention
from graphattn.nn.multihead import complete_graph_edges


def padded_route(mha, x, batch):
    """What GraphGPS does: pad each graph to the largest, attend with a key-padding mask, unpad."""
    sizes = torch.bincount(batch)
    b, n_max = sizes.numel(), int(sizes.max())
    position = torch.arange(x.shape[0]) - (torch.cumsum(sizes, 0) - sizes)[batch]
    dense = x.new_zeros(b, n_max, x.shape[1])
    dense[batch, position] = x
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    mask[batch, position] = True
    out = mha(dense, dense, dense, key_padding_mask=~mask, need_weights=False)[0]
    return out[mask]


def make(sizes, dim=12, heads=3, seed=0):
    torch.manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.randn(len(batch), dim, dtype=torch.float64), batch


@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_multihead_attention_on_padded_batches(bias):
    x, batch = make([5, 1, 9, 3])
    torch_mha = torch.nn.MultiheadAttention(12, 3, bias=bias, batch_first=True, dtype=torch.float64)
    ours = GraphMultiheadAttention(12, 3, bias=bias, dtype=torch.float64)
    ours.load_state_dict(torch_mha.state_dict())  # same names and shapes
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = ours(xa, batch)
    want = padded_route(torch_mha, xb, batch)
    torch.testing.assert_close(got, want)
    w = torch.randn_like(got)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), torch_mha.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)


def test_graph_argument_and_errors():
    x, batch = make([4, 6])
    layer = GraphMultiheadAttention(12, 3, dtype=torch.float64)
    graph = graphattn.Graph.from_batch(batch)
    torch.testing.assert_close(layer(x, graph), layer(x, batch))
    with pytest.raises(ValueError, match="divisible"):
        GraphMultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="embed_dim"):
        layer(x[:, :5], batch)
    with pytest.raises(ValueError, match="batch"):
        layer(x, graphattn.Graph.from_batch(batch[:-1]))


def test_complete_graph_edges():
    edges = complete_graph_edges(torch.tensor([0, 2, 2, 5]))
    pairs = set(map(tuple, edges.t().tolist()))
    want = {(j, i) for lo, hi in ((0, 2), (2, 5)) for i in range(lo, hi) for j in range(lo, hi)}
    assert pairs == want and edges.shape[1] == len(want)


def test_dropout_in_training_only_and_reproducible():
    x, batch = make([7, 5])
    layer = GraphMultiheadAttention(12, 3, dropout=0.5, dtype=torch.float64)
    layer.eval()
    plain = layer(x, batch)
    layer.train()
    torch.manual_seed(3)
    a = layer(x, batch)
    torch.manual_seed(3)
    b = layer(x, batch)
    assert torch.equal(a, b) and not torch.allclose(a, plain)
    # dropout off while training equals eval
    layer.dropout = 0.0
    torch.testing.assert_close(layer(x, batch), plain)
