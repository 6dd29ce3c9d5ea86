"""The pure-PyTorch oracle (graphattn/reference.py) as a backend: any device,
any pattern, gradients by autograd. Slow and memory-hungry ([E, H, Dv] and
[L, L] temporaries): auto picks it only when nothing else can serve."""
from __future__ import annotations

from .. import dropout, reference
from .base import Backend, stats_dtype


def _checked_sources(graph):
    """graph.col, after checking the Graph: torch's indexing would wrap a negative index to the
    last rows silently (a Graph whose tensors were altered after it was built)."""
    graph.check_edges()
    return graph.col


class ReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    patterns = ("csr", "segments", "dense")
    # index_add / scatter on CUDA use atomics: not bitwise reproducible there.
    deterministic_on = ("cpu",)
    score_kinds = ("dot", "gat", "gatv2")
    supports_dropout = True
    supports_return_attention = True
    autograd_by_ops = False  # differentiated by torch's autograd

    def attention_extra(self, call, q, k, v, graph, bias, scale, *, negative_slope, att, dropout_p, seed):
        """Score kinds, attention dropout and alpha on the edge list (csr pattern only), by autograd."""
        acc = stats_dtype(q.dtype)
        keep = None
        if dropout_p > 0:
            # The kernels' mask (graphattn/dropout.py), in edge_index column order, taken
            # into the target-sorted order.
            keep = dropout.keep_mask(seed, graph.num_edges, q.shape[1], dropout_p)[graph.eid]
        edge_bias = None if bias is None else bias[graph.eid].to(acc)
        out, lse, alpha = reference.sparse_attention(
            q.to(acc), k.to(acc), v.to(acc), _checked_sources(graph), graph.sorted_targets(), edge_bias, scale,
            score=call.score, negative_slope=negative_slope, att=None if att is None else att.to(acc),
            dropout_p=dropout_p, dropout_mask=keep, return_attention=True)
        if call.return_attention:
            # Back to edge_index column order.
            alpha_cols = alpha.new_empty(alpha.shape).index_copy(0, graph.eid, alpha)
            alpha_cols = alpha_cols.to(q.dtype)
        else:
            alpha_cols = None
        return out.to(q.dtype), lse, alpha_cols

    def attention(self, call, q, k, v, graph, bias, scale, causal):
        # The contract: float32 (float64) accumulation, output in the input dtype, lse in float32 (float64).
        acc = stats_dtype(q.dtype)
        out, lse = self._attention(call, q.to(acc), k.to(acc), v.to(acc), graph,
                                   None if bias is None else bias.to(acc), scale, causal)
        return out.to(q.dtype), lse

    def _attention(self, call, q, k, v, graph, bias, scale, causal):
        if call.pattern == "csr":
            edge_bias = None if bias is None else bias[graph.eid]
            return reference.sparse_attention(q, k, v, _checked_sources(graph), graph.sorted_targets(), edge_bias, scale)
        if call.pattern == "segments":
            return reference.segment_attention(q, k, v, graph.ptr, scale)
        return reference.dense_attention(q, k, v, scale, causal)
