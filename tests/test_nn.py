"""graphattn.nn layers against torch_geometric.nn's layers of the same name: same parameters
(a PyG state_dict loads as is), same outputs, attention weights and gradients (dropout off)."""
import subprocess
import sys

import pytest
import torch

import graphattn
from graphattn import nn as gnn

pyg = pytest.importorskip("torch_geometric.nn", reason="torch_geometric is needed to compare with PyG's layers")

DTYPE = torch.float64


def graph(n_src, n_dst, num_edges, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (num_edges,), generator=g)
    dst = torch.randint(0, n_dst, (num_edges,), generator=g)
    ei = torch.stack([src, dst])
    if n_src == n_dst:  # a few explicit self-loops and a duplicate edge
        ei = torch.cat([ei, torch.tensor([[0, 3], [0, 3]]), ei[:, :1]], 1)
    return ei


def feats(n, f, seed, dtype=DTYPE):
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def compare(name, ctor_args, ctor_kw, x, edge_index, edge_attr=None, fwd_kw=None, dtype=DTYPE, tol=1e-9):
    fwd_kw = dict(fwd_kw or {})
    torch.manual_seed(0)
    ref = getattr(pyg, name)(*ctor_args, **ctor_kw).to(dtype)
    ours = getattr(gnn, name)(*ctor_args, **ctor_kw).to(dtype)
    sd = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    ours.load_state_dict(sd, strict=True)
    ref.eval()
    ours.eval()

    def run(layer):
        xs = tuple(t.detach().clone().requires_grad_(True) for t in (x if isinstance(x, tuple) else (x,)))
        ea = None if edge_attr is None else edge_attr.detach().clone().requires_grad_(True)
        args = (xs if isinstance(x, tuple) else xs[0], edge_index)
        kw = dict(fwd_kw)
        if ea is not None:
            kw["edge_attr"] = ea
        res = layer(*args, **kw)
        out, extra = (res if isinstance(res, tuple) else (res, None))
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)
        loss = (out * g).sum()
        if extra is not None:
            loss = loss + (extra[1] * torch.linspace(0.5, 1.5, extra[1].numel(), dtype=dtype).view_as(
                extra[1])).sum()
        loss.backward()
        grads = {k: p.grad for k, p in layer.named_parameters()}
        return out, extra, grads, [t.grad for t in xs], None if ea is None else ea.grad

    r_out, r_extra, r_grads, r_xg, r_eg = run(ref)
    o_out, o_extra, o_grads, o_xg, o_eg = run(ours)
    torch.testing.assert_close(o_out, r_out, rtol=tol, atol=tol)
    if r_extra is not None:
        assert torch.equal(o_extra[0], r_extra[0]), "edge_index returned with the weights"
        torch.testing.assert_close(o_extra[1], r_extra[1], rtol=tol, atol=tol)
    else:
        assert o_extra is None
    assert r_grads.keys() == o_grads.keys()
    for k in r_grads:
        if r_grads[k] is None:
            assert o_grads[k] is None or not o_grads[k].any(), k
        else:
            torch.testing.assert_close(o_grads[k], r_grads[k], rtol=tol, atol=tol, msg=f"grad {k}")
    for a, b in zip(o_xg, r_xg):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg="grad x")
    if r_eg is not None:
        torch.testing.assert_close(o_eg, r_eg, rtol=tol, atol=tol, msg="grad edge_attr")


N, F_IN, F_DST, E_DIM = 12, 8, 5, 3
EI = graph(N, N, 40)
EI_BI = graph(10, 7, 30, seed=1)
X = feats(N, F_IN, 1)
EA = feats(EI.shape[1], E_DIM, 2)
EA_BI = feats(EI_BI.shape[1], E_DIM, 3)
X_BI = (feats(10, F_IN, 4), feats(7, F_DST, 5))
X_BI_SAME = (feats(10, F_IN, 4), feats(7, F_IN, 6))

GAT_CASES = [
    ("basic", (F_IN, 4), dict(heads=3), X, EI, None, {}),
    ("concat=False", (F_IN, 4), dict(heads=2, concat=False), X, EI, None, {}),
    ("slope, no self loops, no bias", (F_IN, 6), dict(heads=2, negative_slope=0.05, add_self_loops=False,
                                                      bias=False), X, EI, None, {}),
    ("edge_dim mean", (F_IN, 4), dict(heads=2, edge_dim=E_DIM), X, EI, EA, {}),
    ("edge_dim add", (F_IN, 4), dict(heads=2, edge_dim=E_DIM, fill_value="add"), X, EI, EA, {}),
    ("edge_dim float", (F_IN, 4), dict(heads=2, edge_dim=E_DIM, fill_value=0.5), X, EI, EA, {}),
    ("edge_dim max no loops", (F_IN, 4), dict(heads=2, edge_dim=E_DIM, fill_value="max", add_self_loops=False),
     X, EI, EA, {}),
    ("residual", (F_IN, 4), dict(heads=2, residual=True), X, EI, None, {}),
    ("dropout (eval)", (F_IN, 4), dict(heads=2, dropout=0.5), X, EI, None, {}),
    ("bipartite", ((F_IN, F_DST), 4), dict(heads=2, add_self_loops=False), X_BI, EI_BI, None, {}),
    ("bipartite loops edge_dim", ((F_IN, F_DST), 4), dict(heads=2, edge_dim=E_DIM), X_BI, EI_BI, EA_BI, {}),
    ("int in_channels, pair input", (F_IN, 4), dict(heads=2), X_BI_SAME, EI_BI, None, {}),
    ("attention weights", (F_IN, 4), dict(heads=3), X, EI, None, dict(return_attention_weights=True)),
    ("attention weights edge_dim", (F_IN, 4), dict(heads=2, edge_dim=E_DIM), X, EI, EA,
     dict(return_attention_weights=True)),
]


@pytest.mark.parametrize("case", GAT_CASES, ids=[c[0] for c in GAT_CASES])
def test_gatconv(case):
    _, args, kw, x, ei, ea, fkw = case
    compare("GATConv", args, kw, x, ei, ea, fkw)


GATV2_CASES = [c for c in GAT_CASES if c[0] != "int in_channels, pair input"] + [
    ("share_weights", (F_IN, 4), dict(heads=2, share_weights=True), X, EI, None, {}),
    ("share_weights pair", (F_IN, 4), dict(heads=2, share_weights=True), X_BI_SAME, EI_BI, None, {}),
]


@pytest.mark.parametrize("case", GATV2_CASES, ids=[c[0] for c in GATV2_CASES])
def test_gatv2conv(case):
    _, args, kw, x, ei, ea, fkw = case
    compare("GATv2Conv", args, kw, x, ei, ea, fkw)


TRANSFORMER_CASES = [
    ("basic", (F_IN, 4), dict(heads=3), X, EI, None, {}),
    ("concat=False", (F_IN, 4), dict(heads=2, concat=False), X, EI, None, {}),
    ("beta", (F_IN, 4), dict(heads=2, beta=True), X, EI, None, {}),
    ("beta concat=False", (F_IN, 4), dict(heads=2, beta=True, concat=False), X, EI, None, {}),
    ("no root weight, no bias", (F_IN, 4), dict(heads=2, root_weight=False, bias=False), X, EI, None, {}),
    ("edge_dim", (F_IN, 4), dict(heads=2, edge_dim=E_DIM), X, EI, EA, {}),
    ("edge_dim beta weights", (F_IN, 4), dict(heads=2, edge_dim=E_DIM, beta=True), X, EI, EA,
     dict(return_attention_weights=True)),
    ("bipartite edge_dim", ((F_IN, F_DST), 4), dict(heads=2, edge_dim=E_DIM), X_BI, EI_BI, EA_BI, {}),
    ("dropout (eval)", (F_IN, 4), dict(heads=2, dropout=0.3), X, EI, None, {}),
    ("attention weights", (F_IN, 4), dict(heads=2), X, EI, None, dict(return_attention_weights=True)),
]


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=[c[0] for c in TRANSFORMER_CASES])
def test_transformerconv(case):
    _, args, kw, x, ei, ea, fkw = case
    compare("TransformerConv", args, kw, x, ei, ea, fkw)


@pytest.mark.parametrize("name", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_float32(name):
    compare(name, (F_IN, 4), dict(heads=2), X.float(), EI, dtype=torch.float32, tol=1e-5)


@pytest.mark.parametrize("name", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_dropout_training(name):
    torch.manual_seed(0)
    layer = getattr(gnn, name)(F_IN, 4, heads=2, dropout=0.5).double()
    layer.train()
    torch.manual_seed(1)
    a, (_, w1) = layer(X, EI, return_attention_weights=True)
    torch.manual_seed(1)
    b, (_, w2) = layer(X, EI, return_attention_weights=True)
    assert torch.equal(a, b) and torch.equal(w1, w2)
    frac = (w1 == 0).double().mean().item()
    assert 0.3 < frac < 0.7
    layer.eval()
    c = layer(X, EI)
    assert not torch.allclose(a, c)
    a.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_no_pyg_import():
    code = ("import sys, graphattn, graphattn.nn, torch; "
            "l = graphattn.nn.GATConv(4, 2); l(torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])); "
            "assert 'torch_geometric' not in sys.modules, 'torch_geometric imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors():
    layer = gnn.GATConv(F_IN, 4)
    with pytest.raises(TypeError, match="edge_index"):
        layer(X.float(), EI.t())
    with pytest.raises(TypeError, match="edge_index"):
        layer(X.float(), EI.float())
    with pytest.raises(ValueError, match="in_channels"):
        gnn.GATConv(-1, 4)
    with pytest.raises(ValueError, match="edge_dim"):
        gnn.TransformerConv(F_IN, 4)(X.float(), EI, edge_attr=EA.float())
    assert graphattn.nn.GATConv is gnn.GATConv
