"""graphattn demo: train a small graph-attention model on a generated graph,
then time dense vs sparse attention on this machine.

    python examples/demo.py [--nodes 20000] [--steps 5]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import graphattn
import graphattn.info


def community_graph(num_nodes, num_classes, degree, gen):
    """A citation-like graph: each node cites `degree` others, mostly inside its class."""
    labels = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    dst = torch.arange(num_nodes).repeat_interleave(degree)
    same = torch.rand(dst.numel(), generator=gen) < 0.8
    by_class = torch.argsort(labels)
    class_ptr = torch.searchsorted(labels[by_class], torch.arange(num_classes + 1))
    lo, hi = class_ptr[labels[dst]], class_ptr[labels[dst] + 1]
    in_class = by_class[lo + (torch.rand(dst.numel(), generator=gen) * (hi - lo)).long().clamp_max(hi - lo - 1)]
    anywhere = torch.randint(0, num_nodes, (dst.numel(),), generator=gen)
    src = torch.where(same, in_class, anywhere)
    features = F.one_hot(labels, num_classes).float() + 2.0 * torch.randn(num_nodes, num_classes, generator=gen)
    return torch.stack([src, dst]), features, labels


class GraphAttentionLayer(torch.nn.Module):
    """Multi-head dot-product attention over the graph's edges, with a residual."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, graph):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.heads, -1).unbind(1)
        return x + self.proj(graphattn.attention(q, k, v, graph).reshape(n, -1))


class Model(torch.nn.Module):
    def __init__(self, in_dim, dim, heads, num_classes, layers=2):
        super().__init__()
        self.embed = torch.nn.Linear(in_dim, dim)
        self.layers = torch.nn.ModuleList(GraphAttentionLayer(dim, heads) for _ in range(layers))
        self.head = torch.nn.Linear(dim, num_classes)

    def forward(self, x, graph):
        x = self.embed(x)
        for layer in self.layers:
            x = F.gelu(layer(x, graph))
        return self.head(x)


def train(args):
    gen = torch.Generator().manual_seed(0)
    edge_index, features, labels = community_graph(args.nodes, 8, args.degree, gen)
    graph = graphattn.Graph.from_edge_index(edge_index, num_nodes=args.nodes)  # sorted once, reused every step
    torch.manual_seed(0)
    model = Model(features.shape[1], 64, 4, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_mask = torch.rand(args.nodes, generator=gen) < 0.5
    print(f"training on {graph}, in-degree {graph.degree_stats()}")
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        logits = model(features, graph)
        loss = F.cross_entropy(logits[train_mask], labels[train_mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracy = (logits[~train_mask].argmax(-1) == labels[~train_mask]).float().mean()
        print(f"step {step}: loss {loss.item():.4f}  held-out accuracy {accuracy:.3f}  "
              f"{1000 * (time.perf_counter() - start):.0f} ms/step")


def best_time(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timing_table():
    """Forward+backward time: all-pairs (dense) vs 16 neighbours each (sparse)."""
    heads, dim, degree = 4, 32, 16
    print(f"\nforward+backward, H={heads}, D={dim}, float32, on {torch.get_num_threads()} CPU threads")
    print(f"{'nodes':>7} {'dense (n^2 pairs)':>18} {'sparse (16 n edges)':>20}")
    for n in (512, 1024, 2048, 4096):
        q, k, v = (torch.randn(n, heads, dim, requires_grad=True) for _ in range(3))
        graph = graphattn.Graph.from_edge_index(
            torch.stack([torch.randint(0, n, (degree * n,)), torch.arange(n).repeat_interleave(degree)]), n)

        def dense():
            graphattn.attention(q[None], k[None], v[None]).sum().backward()

        def sparse():
            graphattn.attention(q, k, v, graph).sum().backward()

        print(f"{n:>7} {1000 * best_time(dense):>15.1f} ms {1000 * best_time(sparse):>17.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--degree", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(graphattn.info.report())
    train(args)
    timing_table()


if __name__ == "__main__":
    main()
