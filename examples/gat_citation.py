"""Train a 2-layer GAT (graphattn.nn.GATConv) end to end on a generated citation-like graph.

The graph: nodes in `num_classes` communities (papers of one field), most citations inside
a community, bag-of-words-like features whose mean depends on the class. Node split into
train / val / test like Planetoid. Runs in seconds on a CPU:

    python examples/gat_citation.py [--epochs 30] [--nodes 2000] [--backend-check]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import graphattn
from graphattn.nn import GATConv


def make_citation_graph(num_nodes=2000, num_classes=5, num_features=64, avg_degree=8, p_intra=0.85, seed=0):
    """-> dict(x [N, F], edge_index [2, E] (both directions), y [N], train/val/test masks)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes,), generator=g)
    num_edges = num_nodes * avg_degree // 2
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    # intra-class citations: pick a target of the same class, else any node
    by_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    same = torch.rand(num_edges, generator=g) < p_intra
    dst = torch.randint(0, num_nodes, (num_edges,), generator=g)
    for c in range(num_classes):
        sel = same & (y[src] == c)
        pool = by_class[c]
        dst[sel] = pool[torch.randint(0, len(pool), (int(sel.sum()),), generator=g)]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    centers = torch.randn(num_classes, num_features, generator=g)
    x = 0.6 * centers[y] + torch.randn(num_nodes, num_features, generator=g)
    perm = torch.randperm(num_nodes, generator=g)
    n_train, n_val = num_classes * 20, num_nodes // 6
    masks = {}
    for name, idx in (("train_mask", perm[:n_train]), ("val_mask", perm[n_train:n_train + n_val]),
                      ("test_mask", perm[n_train + n_val:])):
        m = torch.zeros(num_nodes, dtype=torch.bool)
        m[idx] = True
        masks[name] = m
    return dict(x=x, edge_index=edge_index, y=y, num_classes=num_classes, **masks)


class GAT(torch.nn.Module):
    def __init__(self, in_channels, hidden, out_channels, heads=8, dropout=0.6):
        super().__init__()
        self.dropout = dropout
        self.conv1 = GATConv(in_channels, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, out_channels, heads=1, concat=False, dropout=dropout)

    def forward(self, x, edge_index):
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


def accuracy(logits, y, mask):
    return float((logits[mask].argmax(-1) == y[mask]).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    data = make_citation_graph(num_nodes=args.nodes, seed=args.seed)
    model = GAT(data["x"].shape[1], 8, data["num_classes"])
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    print(f"graph: {data['x'].shape[0]} nodes, {data['edge_index'].shape[1]} edges, "
          f"{data['num_classes']} classes; backends on cpu: {graphattn.available_backends('cpu')}")
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        opt.zero_grad()
        logits = model(data["x"], data["edge_index"])
        loss = F.cross_entropy(logits[data["train_mask"]], data["y"][data["train_mask"]])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(data["x"], data["edge_index"])
        print(f"epoch {epoch:3d}  loss {loss.item():.4f}  train {accuracy(logits, data['y'], data['train_mask']):.3f}"
              f"  val {accuracy(logits, data['y'], data['val_mask']):.3f}"
              f"  test {accuracy(logits, data['y'], data['test_mask']):.3f}")
    print(f"{args.epochs} epochs in {time.perf_counter() - t0:.1f} s")
    return accuracy(logits, data["y"], data["test_mask"])


if __name__ == "__main__":
    main()
