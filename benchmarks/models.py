"""The models whose training steps benchmarks/layers.py measures, and the single layers of its
--layer mode: graphattn.nn against torch_geometric.nn with the same module code and identical
weights (DGL's counterparts are built from the same weights by benchmarks/dgl_worker.py).

Shared by the "graphattn" / "pyg" providers (benchmarks/providers.py, which run a training step
or a layer's forward + backward in a measuring process), by benchmarks/dgl_baseline.py (which
hands the same weights to DGL) and by layers.py's agreement check; importing it imports neither
graphattn.nn nor torch_geometric (`nn_module` does, when asked).
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

MODELS = ("gat", "gatv2", "transformer")
LAYER_CLASSES = {"gat": "GATConv", "gatv2": "GATv2Conv", "transformer": "TransformerConv"}


# ---------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------
class Net(torch.nn.Module):
    """One of MODELS built from `nn` (graphattn.nn or torch_geometric.nn): the same code and the
    same parameter names whichever it is."""

    def __init__(self, nn, model: str, in_channels: int, hidden: int, heads: int, num_classes: int,
                 transformer_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.model = model
        if model in ("gat", "gatv2"):
            conv = nn.GATConv if model == "gat" else nn.GATv2Conv
            self.convs = torch.nn.ModuleList([
                conv(in_channels, hidden, heads=heads, concat=True, dropout=dropout),
                conv(heads * hidden, num_classes, heads=heads, concat=False, dropout=dropout),
            ])
            self.head = None
        elif model == "transformer":
            self.convs = torch.nn.ModuleList(
                nn.TransformerConv(in_channels if i == 0 else heads * hidden, hidden, heads=heads, concat=True,
                                   dropout=dropout)
                for i in range(transformer_layers))
            self.head = torch.nn.Linear(heads * hidden, num_classes)
        else:
            raise ValueError(f"unknown model {model!r}; one of {MODELS}")

    def forward(self, x, edge_index):
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < last or self.head is not None:
                x = F.elu(x)
        return self.head(x) if self.head is not None else x


def make_layer(nn, model: str, in_channels: int, channels: int, heads: int, dropout: float = 0.0):
    """The single layer of --layer mode: nn.<GATConv|GATv2Conv|TransformerConv>(in_channels,
    channels, heads=heads, concat=True) with the library's defaults otherwise (GAT/GATv2 add
    self-loops; GATv2 share_weights=False; TransformerConv root_weight=True)."""
    if model not in LAYER_CLASSES:
        raise ValueError(f"unknown model {model!r}; one of {MODELS}")
    return getattr(nn, LAYER_CLASSES[model])(in_channels, channels, heads=heads, concat=True, dropout=dropout)


def describe_layer(model: str, in_channels: int, channels: int, heads: int, dropout: float = 0.0) -> str:
    loops = "; self-loops added (PyG's default)" if model != "transformer" else "; root weight"
    return (f"{LAYER_CLASSES[model]}({in_channels},{channels},heads={heads},concat){loops}"
            + (f"; attention dropout {dropout:g}" if dropout else "")
            + "; forward + backward of a fixed random output gradient (grads of x and the weights)")


def describe_model(model: str, in_channels: int, hidden: int, heads: int, num_classes: int,
                   transformer_layers: int = 1, dropout: float = 0.0) -> str:
    hc = heads * hidden
    if model in ("gat", "gatv2"):
        c = "GATConv" if model == "gat" else "GATv2Conv"
        text = (f"{c}({in_channels},{hidden},heads={heads},concat) > ELU > "
                f"{c}({hc},{num_classes},heads={heads},concat=False)")
    else:
        first = f"TransformerConv({in_channels},{hidden},heads={heads},concat) > ELU"
        more = f" > [TransformerConv({hc},{hidden},heads={heads},concat) > ELU] x{transformer_layers - 1}" \
            if transformer_layers > 1 else ""
        text = f"{first}{more} > Linear({hc},{num_classes})"
    return text + (f"; attention dropout {dropout:g}" if dropout else "") + \
        f"; float32 cross-entropy over all nodes, {num_classes} classes; Adam"


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Every parameter from a generator seeded by (seed, its name): glorot-uniform over the last
    two dims for matrices / [1, H, C] attention vectors, U(-0.1, 0.1) for vectors. Two models with
    the same parameter names get the same weights, whatever their init code."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            a = math.sqrt(6.0 / (p.shape[-2] + p.shape[-1])) if p.dim() >= 2 else 0.1
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float32) * 2 - 1) * a)


def nn_module(provider: str):
    if provider == "pyg":
        import torch_geometric.nn as nn
    else:
        import graphattn.nn as nn
    return nn


def make_inputs(n: int, features: int, num_classes: int, seed: int, device, dtype):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, features, generator=g).to(device=device, dtype=dtype)
    y = torch.randint(0, num_classes, (n,), generator=g).to(device)
    return x, y


def record_backends(fn) -> list:
    """Run fn() once, recording which graphattn backends dispatch chose (auto)."""
    from graphattn import dispatch

    seen, orig = [], dispatch.choose

    def choose(call, backend="auto"):
        chosen = orig(call, backend)
        if chosen.name not in seen:
            seen.append(chosen.name)
        return chosen

    dispatch.choose = choose
    try:
        fn()
    finally:
        dispatch.choose = orig
    return seen
