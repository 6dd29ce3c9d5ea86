"""The pure-PyTorch oracle (graphattn/reference.py) as a backend: any device,
any pattern, gradients by autograd. Slow and memory-hungry ([E, H, Dv] and
[L, L] temporaries): auto picks it only when nothing else can serve."""
from __future__ import annotations

from .. import reference
from .base import Backend, stats_dtype


class ReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    patterns = ("csr", "segments", "dense")
    # index_add / scatter on CUDA use atomics: not bitwise reproducible there.
    deterministic_on = ("cpu",)

    def attention(self, call, q, k, v, graph, bias, scale, causal):
        # The contract: float32 (float64) accumulation, output in the input dtype, lse in float32 (float64).
        acc = stats_dtype(q.dtype)
        out, lse = self._attention(call, q.to(acc), k.to(acc), v.to(acc), graph,
                                   None if bias is None else bias.to(acc), scale, causal)
        return out.to(q.dtype), lse

    def _attention(self, call, q, k, v, graph, bias, scale, causal):
        if call.pattern == "csr":
            edge_bias = None if bias is None else bias[graph.eid]
            return reference.sparse_attention(q, k, v, graph.col, graph.sorted_targets(), edge_bias, scale)
        if call.pattern == "segments":
            return reference.segment_attention(q, k, v, graph.ptr, scale)
        return reference.dense_attention(q, k, v, scale, causal)
