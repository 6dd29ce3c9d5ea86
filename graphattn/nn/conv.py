"""GATConv, GATv2Conv and TransformerConv over graphattn.attention (see graphattn/nn/__init__.py).

`edge_index` is any form graphattn/nn/adjacency.py takes (an integer tensor [2, E], a torch
sparse adj_t [N_dst, N_src] in CSR/CSC/COO, a torch_sparse.SparseTensor, a graphattn.Graph);
`adjacency.prepare` turns it into the Graph to attend over (prepared once per pattern, self-loops
included), the edges in that Graph's column order, edge features in that order, and the form the
attention weights are returned in (PyG's for each form).

Where PyG puts an edge-feature term inside the LeakyReLU (GAT / GATv2 with
`edge_dim`), the score is not of the fused "gat"/"gatv2" form: the layer then
computes the per-edge score `[E, H]` itself and hands it to graphattn.attention
as the whole additive `bias` of a score="dot" call with zero-width-equivalent
q/k (all zeros), so the softmax, dropout and aggregation still run in the op.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from ..attention import attention
from ..graph import Graph
from . import adjacency


# ---------------------------------------------------------------- helpers
def _glorot(t: Optional[Tensor]) -> None:
    if t is not None:
        a = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
        with torch.no_grad():
            t.uniform_(-a, a)


def _linear(in_channels: int, out_channels: int, bias: bool, glorot: bool) -> torch.nn.Linear:
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int (lazy -1 is not supported), got {in_channels!r}")
    lin = torch.nn.Linear(in_channels, out_channels, bias=bias)
    lin._graphattn_glorot = glorot
    return lin


def _reset_linear(lin: torch.nn.Linear) -> None:
    if getattr(lin, "_graphattn_glorot", False):
        _glorot(lin.weight)
        if lin.bias is not None:
            torch.nn.init.zeros_(lin.bias)
    else:
        lin.reset_parameters()


def _attention_by_score(scores: Tensor, v: Tensor, graph: Graph, n_dst: int, dropout_p: float, need_alpha: bool):
    """Softmax over each target's edges of precomputed `scores [E, H]`, aggregation of v, in the op:
    a score="dot" call whose q, k are zero (so s = bias = scores)."""
    heads = scores.shape[1]
    q = scores.new_zeros(n_dst, heads, 1)
    k = scores.new_zeros(v.shape[0], heads, 1)
    res = attention(q, k, v, graph, bias=scores, scale=1.0, dropout_p=dropout_p, return_attention=need_alpha)
    return res if need_alpha else (res, None)


def _split(x) -> Tuple[Tensor, Optional[Tensor]]:
    if isinstance(x, Tensor):
        return x, x
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    raise TypeError(f"x must be a tensor [N, F] or a pair (x_src, x_dst), got {type(x).__name__}")


class _GATBase(torch.nn.Module):
    def _add_residual_and_bias(self, in_channels, total: int, residual: bool, bias: bool) -> None:
        """PyG's `res` (a Linear from the target features) and `bias` parameters, or None of each."""
        if residual:
            in_dst = in_channels if isinstance(in_channels, int) else in_channels[1]
            self.res = _linear(in_dst, total, False, True)
        else:
            self.register_parameter("res", None)
        if bias:
            self.bias = Parameter(torch.empty(total))
        else:
            self.register_parameter("bias", None)

    def _finish(self, out: Tensor, res: Optional[Tensor]) -> Tensor:
        if self.concat:
            out = out.reshape(-1, self.heads * self.out_channels)
        else:
            out = out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        return out

    def _edge_features(self, edge_attr: Optional[Tensor]) -> Optional[Tensor]:
        if edge_attr is None or self.lin_edge is None:
            return None
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        return self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"


# ---------------------------------------------------------------- GATConv
class GATConv(_GATBase):
    r"""GAT (Veličković et al.): :math:`\alpha_{ij} = \mathrm{softmax}_j(\mathrm{LeakyReLU}(a_s^\top W x_j +
    a_d^\top W x_i [+ a_e^\top W_e e_{ij}]))`, computed by graphattn.attention(score="gat")."""

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int, heads: int = 1,
                 concat: bool = True, negative_slope: float = 0.2, dropout: float = 0.0,
                 add_self_loops: bool = True, edge_dim: Optional[int] = None,
                 fill_value: Union[float, Tensor, str] = "mean", bias: bool = True, residual: bool = False,
                 **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"GATConv got unsupported keyword arguments {sorted(kwargs)}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope, self.dropout = concat, negative_slope, dropout
        self.add_self_loops, self.edge_dim, self.fill_value, self.residual = (
            add_self_loops, edge_dim, fill_value, residual)
        self.lin = self.lin_src = self.lin_dst = None
        if isinstance(in_channels, int):
            self.lin = _linear(in_channels, heads * out_channels, False, True)
        else:
            self.lin_src = _linear(in_channels[0], heads * out_channels, False, True)
            self.lin_dst = _linear(in_channels[1], heads * out_channels, False, True)
        self.att_src = Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = Parameter(torch.empty(1, heads, out_channels))
        if edge_dim is not None:
            self.lin_edge = _linear(edge_dim, heads * out_channels, False, True)
            self.att_edge = Parameter(torch.empty(1, heads, out_channels))
        else:
            self.lin_edge = None
            self.register_parameter("att_edge", None)
        self._add_residual_and_bias(in_channels, out_channels * (heads if concat else 1), residual, bias)
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if lin is not None:
                _reset_linear(lin)
        _glorot(self.att_src)
        _glorot(self.att_dst)
        _glorot(self.att_edge)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None, size=None,
                return_attention_weights: Optional[bool] = None):
        H, C = self.heads, self.out_channels
        x_src, x_dst = _split(x)
        res = self.res(x_dst) if (self.res is not None and x_dst is not None) else None
        if self.lin is not None:
            h_src = self.lin(x_src).view(-1, H, C)
            h_dst = None if x_dst is None else (h_src if x_dst is x_src else self.lin(x_dst).view(-1, H, C))
        else:
            h_src = self.lin_src(x_src).view(-1, H, C)
            h_dst = None if x_dst is None else self.lin_dst(x_dst).view(-1, H, C)
        n_src = h_src.shape[0]
        if size is not None:
            n_dst = size[1]
        elif h_dst is not None:
            n_dst = h_dst.shape[0]
        else:  # no target features: a sparse adjacency or Graph states the targets, else as many as sources
            n_dst = (adjacency.num_nodes(edge_index) or (n_src, n_src))[1]
        loops = (min(size) if size is not None else min(n_src, n_dst)) if self.add_self_loops else None
        adj = adjacency.prepare(edge_index, n_src, n_dst, self_loops=loops, device=h_src.device)
        a_src = (h_src * self.att_src).sum(-1)  # [N_src, H]
        a_dst = (h_dst * self.att_dst).sum(-1) if h_dst is not None else h_src.new_zeros(n_dst, H)
        p = self.dropout if self.training else 0.0
        need = bool(return_attention_weights)
        e = None
        if self.lin_edge is not None:
            e = self._edge_features(adj.edge_attr(edge_attr, self.fill_value, use_values=True))
        if e is None:
            out = attention(a_dst, a_src, h_src, adj.graph, score="gat", negative_slope=self.negative_slope,
                            dropout_p=p, return_attention=need)
            out, alpha = out if need else (out, None)
        else:
            src, dst = adj.edges()
            s = F.leaky_relu(a_src[src] + a_dst[dst] + (e * self.att_edge).sum(-1), self.negative_slope)
            out, alpha = _attention_by_score(s, h_src, adj.graph, n_dst, p, need)
        out = self._finish(out, res)
        if return_attention_weights:
            return out, adj.weights(alpha)
        return out


# ---------------------------------------------------------------- GATv2Conv
class GATv2Conv(_GATBase):
    r"""GATv2 (Brody et al.): :math:`\alpha_{ij} = \mathrm{softmax}_j(a^\top \mathrm{LeakyReLU}(W_s x_j +
    W_t x_i [+ W_e e_{ij}]))`, computed by graphattn.attention(score="gatv2")."""

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int, heads: int = 1,
                 concat: bool = True, negative_slope: float = 0.2, dropout: float = 0.0,
                 add_self_loops: bool = True, edge_dim: Optional[int] = None,
                 fill_value: Union[float, Tensor, str] = "mean", bias: bool = True, share_weights: bool = False,
                 residual: bool = False, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"GATv2Conv got unsupported keyword arguments {sorted(kwargs)}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope, self.dropout = concat, negative_slope, dropout
        self.add_self_loops, self.edge_dim, self.fill_value = add_self_loops, edge_dim, fill_value
        self.residual, self.share_weights = residual, share_weights
        ins = (in_channels, in_channels) if isinstance(in_channels, int) else tuple(in_channels)
        self.lin_l = _linear(ins[0], heads * out_channels, bias, True)
        self.lin_r = self.lin_l if share_weights else _linear(ins[1], heads * out_channels, bias, True)
        self.att = Parameter(torch.empty(1, heads, out_channels))
        self.lin_edge = _linear(edge_dim, heads * out_channels, False, True) if edge_dim is not None else None
        self._add_residual_and_bias(in_channels, out_channels * (heads if concat else 1), residual, bias)
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.lin_l, self.lin_r, self.lin_edge, self.res):
            if lin is not None:
                _reset_linear(lin)
        _glorot(self.att)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None,
                return_attention_weights: Optional[bool] = None):
        H, C = self.heads, self.out_channels
        x_src, x_dst = _split(x)
        if x_dst is None:
            raise ValueError("GATv2Conv needs target features: x_dst must not be None")
        res = self.res(x_dst) if self.res is not None else None
        x_l = self.lin_l(x_src).view(-1, H, C)
        if isinstance(x, Tensor):
            x_r = x_l if self.share_weights else self.lin_r(x_src).view(-1, H, C)
        else:
            x_r = self.lin_r(x_dst).view(-1, H, C)
        if edge_attr is not None and self.lin_edge is None:
            raise ValueError("edge_attr was given but the layer was built without edge_dim")
        n_src, n_dst = x_l.shape[0], x_r.shape[0]
        adj = adjacency.prepare(edge_index, n_src, n_dst, device=x_l.device,
                                self_loops=min(n_src, n_dst) if self.add_self_loops else None)
        p = self.dropout if self.training else 0.0
        need = bool(return_attention_weights)
        e = None
        if self.lin_edge is not None:
            e = self._edge_features(adj.edge_attr(edge_attr, self.fill_value, use_values=True))
        if e is None:
            out = attention(x_r, x_l, x_l, adj.graph, score="gatv2", att=self.att.view(H, C),
                            negative_slope=self.negative_slope, dropout_p=p, return_attention=need)
            out, alpha = out if need else (out, None)
        else:
            src, dst = adj.edges()
            s = (F.leaky_relu(x_r[dst] + x_l[src] + e, self.negative_slope) * self.att).sum(-1)
            out, alpha = _attention_by_score(s, x_l, adj.graph, n_dst, p, need)
        out = self._finish(out, res)
        if return_attention_weights:
            return out, adj.weights(alpha)
        return out


# ---------------------------------------------------------------- TransformerConv
class TransformerConv(torch.nn.Module):
    r"""The graph transformer of Shi et al.: :math:`\alpha_{ij} = \mathrm{softmax}_j((W_q x_i)^\top
    (W_k x_j + W_e e_{ij}) / \sqrt{C})`, :math:`x'_i = W_s x_i + \sum_j \alpha_{ij} (W_v x_j + W_e e_{ij})`.

    Computed by graphattn.attention(score="dot"); the edge term of the keys is the op's `bias`
    `<q_i, W_e e_ij> / sqrt(C)`, that of the values `sum_j alpha_ij W_e e_ij` is added from the
    returned weights.
    """

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int, heads: int = 1,
                 concat: bool = True, beta: bool = False, dropout: float = 0.0, edge_dim: Optional[int] = None,
                 bias: bool = True, root_weight: bool = True, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"TransformerConv got unsupported keyword arguments {sorted(kwargs)}")
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.beta = beta and root_weight
        self.root_weight, self.concat, self.dropout, self.edge_dim = root_weight, concat, dropout, edge_dim
        ins = (in_channels, in_channels) if isinstance(in_channels, int) else tuple(in_channels)
        self.lin_key = _linear(ins[0], heads * out_channels, bias, False)
        self.lin_query = _linear(ins[1], heads * out_channels, bias, False)
        self.lin_value = _linear(ins[0], heads * out_channels, bias, False)
        if edge_dim is not None:
            self.lin_edge = _linear(edge_dim, heads * out_channels, False, False)
        else:
            self.register_parameter("lin_edge", None)
        skip_out = heads * out_channels if concat else out_channels
        self.lin_skip = _linear(ins[1], skip_out, bias, False)
        if self.beta:
            self.lin_beta = _linear(3 * skip_out, 1, False, False)
        else:
            self.register_parameter("lin_beta", None)
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip, self.lin_beta):
            if lin is not None:
                _reset_linear(lin)

    def forward(self, x, edge_index, edge_attr: Optional[Tensor] = None,
                return_attention_weights: Optional[bool] = None):
        H, C = self.heads, self.out_channels
        x_src, x_dst = _split(x)
        query = self.lin_query(x_dst).view(-1, H, C)
        key = self.lin_key(x_src).view(-1, H, C)
        value = self.lin_value(x_src).view(-1, H, C)
        p = self.dropout if self.training else 0.0
        scale = 1.0 / math.sqrt(C)
        if edge_attr is not None and self.lin_edge is None:
            raise ValueError("edge_attr was given but the layer was built without edge_dim")
        adj = adjacency.prepare(edge_index, key.shape[0], query.shape[0], device=query.device)
        graph = adj.graph
        edge_attr = adj.edge_attr(edge_attr, use_values=True) if self.lin_edge is not None else None
        if edge_attr is not None:
            e = self.lin_edge(edge_attr).view(-1, H, C)
            dst = adj.edges()[1]
            bias = scale * (query[dst] * e).sum(-1)
            out, alpha = attention(query, key, value, graph, bias=bias, scale=scale, dropout_p=p,
                                   return_attention=True)
            out = out + out.new_zeros(out.shape).index_add(0, dst, alpha[..., None] * e)
        elif isinstance(return_attention_weights, bool):
            out, alpha = attention(query, key, value, graph, scale=scale, dropout_p=p, return_attention=True)
        else:
            out, alpha = attention(query, key, value, graph, scale=scale, dropout_p=p), None
        if self.concat:
            out = out.reshape(-1, H * C)
        else:
            out = out.mean(dim=1)
        if self.root_weight:
            x_r = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                b = self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1)).sigmoid()
                out = b * x_r + (1 - b) * out
            else:
                out = out + x_r
        # PyG returns the weights whenever return_attention_weights is a bool (True or False).
        # Note: with dropout in training these are after dropout (PyG's are before).
        if isinstance(return_attention_weights, bool):  # PyG returns a torch sparse adj_t as it is here
            return out, adj.weights(alpha, sparse_value=False)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"
