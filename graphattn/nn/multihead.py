"""Multi-head self-attention within each graph of a batch: GraphGPS's global
attention without padding.

GraphGPS pads a PyG batch to [B, N_max, F] with `to_dense_batch` and runs
`torch.nn.MultiheadAttention` with a key-padding mask: O(B N_max^2) memory and
time spent on padding. `GraphMultiheadAttention` holds the same parameters
(`in_proj_weight`, `in_proj_bias`, `out_proj`; a `torch.nn.MultiheadAttention`
state_dict loads as is) and computes the same result on the nodes as they are,
[N, F], with the segments pattern of graphattn.attention: each node attends to
every node of its own graph, and nothing of size B x N_max is built.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from ..attention import attention
from ..graph import Graph


def complete_graph_edges(ptr: Tensor) -> Tensor:
    """edge_index [2, sum n_s^2] of every (source, target) pair inside each segment of `ptr`."""
    sizes = ptr[1:] - ptr[:-1]
    node_segment = torch.repeat_interleave(torch.arange(sizes.numel(), device=ptr.device), sizes)
    dst = torch.repeat_interleave(torch.arange(int(ptr[-1]), device=ptr.device), sizes[node_segment])
    # For each target, its segment's nodes in order: start + 0, 1, ..., n - 1.
    starts = ptr[:-1][node_segment].repeat_interleave(sizes[node_segment])
    first_edge = torch.cumsum(sizes[node_segment], 0) - sizes[node_segment]
    offset = torch.arange(dst.numel(), device=ptr.device) - first_edge.repeat_interleave(sizes[node_segment])
    return torch.stack([starts + offset, dst])


class GraphMultiheadAttention(torch.nn.Module):
    """`torch.nn.MultiheadAttention`'s self-attention, restricted to each graph of a batch.

    forward(x [N, embed_dim], batch) -> [N, embed_dim], where `batch` is PyG's sorted graph-id
    vector [N] or a segments `graphattn.Graph` (Graph.from_batch / block_diagonal; pass one to
    build it once for several layers). `dropout` is on the attention weights while training, as
    in torch's layer; it runs on the edge-list path (the segment kernels have no dropout), which
    holds an edge list of sum n_s^2 entries for the batch.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        factory = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        if bias:
            self.in_proj_bias = Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self):
        # torch.nn.MultiheadAttention's initialisation.
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            torch.nn.init.zeros_(self.in_proj_bias)
            torch.nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, batch) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"x must be [N, embed_dim={self.embed_dim}], got {list(x.shape)}")
        graph = batch if isinstance(batch, Graph) else Graph.from_batch(batch)
        if graph.kind != "segments" or graph.num_dst != x.shape[0]:
            raise ValueError(f"batch must be a graph-id vector of the {x.shape[0]} nodes or a segments Graph of "
                             "them (Graph.from_batch / Graph.block_diagonal)")
        n = x.shape[0]
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, 3, self.num_heads,
                                                                            self.head_dim).unbind(1)
        p = self.dropout if self.training else 0.0
        if p > 0:
            edges = graph.cached("nn.complete_graph_edges", lambda: Graph.from_edge_index(
                complete_graph_edges(graph.ptr), num_nodes=n))
            out = attention(q, k, v, edges, dropout_p=p)
        else:
            out = attention(q, k, v, graph)
        return self.out_proj(out.reshape(n, self.embed_dim))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout})"
