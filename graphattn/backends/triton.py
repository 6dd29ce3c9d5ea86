"""The Triton kernels of kernels/ (installed as graphattn.kernels).

On CUDA tensors they compile for the GPU. On CPU tensors they run only in
Triton's interpreter, which must be switched on with TRITON_INTERPRET=1 before
triton is first imported: that is how CPU-only machines (and CI) test them.
`auto` never picks this backend for CPU tensors: the interpreter is slow.
"""
from __future__ import annotations

import importlib
import os

import torch

from .base import Backend


def _import(module):
    return importlib.import_module(f"graphattn.kernels.{module}")


class TritonBackend(Backend):
    name = "triton"
    devices = ("cuda", "cpu")
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    patterns = ("csr", "segments", "dense")
    max_head_dim = 256
    # The sparse-path extras: the same CSR kernels behind constexpr switches (kernels/csr_attention.py).
    score_kinds = ("dot", "gat", "gatv2")
    supports_dropout = True
    supports_return_attention = True

    def unavailable_reason(self, device_type):
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"triton is not installed ({e})"
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing triton"
        return None

    def not_supported_reasons(self, call):
        reasons = super().not_supported_reasons(call)
        if not reasons:  # triton is importable
            kernels = _import("csr_attention" if call.pattern == "csr" else "dense_attention")
            row = call.num_heads * max(call.head_dim, call.value_dim)
            if row > kernels.MAX_ROW_ELEMENTS:  # offsets within a row (or tile) are int32
                reasons.append(f"H * head dim = {row} > {kernels.MAX_ROW_ELEMENTS}")
        return reasons

    def csr_plan(self, graph, with_transposed):
        """The degree-bucketed, hub-splitting schedule (kernels/csr_attention.py), built once per graph."""
        kernels = _import("csr_attention")

        def build():
            # The kernels trust the CSR (no bounds check per edge on the GPU): check it once per
            # graph, here, where the schedule is built from it.
            graph.check_edges(with_transposed)
            colptr = graph.transposed().colptr if with_transposed else None
            return kernels.pack_plan(kernels.build_csr_plan(graph.rowptr, colptr))

        return graph.cached(("triton.csr_plan", with_transposed), build)

    def csr_forward(self, q, k, v, rowptr, col, eid, bias, scale, plan):
        kernels = _import("csr_attention")
        return kernels.csr_attention_forward(q, k, v, rowptr, col, eid, bias, scale, plan=kernels.unpack_plan(plan))

    def csr_backward(self, grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid,
                     colptr, row_t, eid_t, scale, need_dbias, plan):
        kernels = _import("csr_attention")
        dq, dk, dv, dbias = kernels.csr_attention_backward(
            grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias,
            plan=kernels.unpack_plan(plan))
        return dq, dk, dv, dbias

    def csr_scored_forward(self, q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope,
                           dropout_p, return_alpha, plan):
        kernels = _import("csr_attention")
        return kernels.csr_scored_attention_forward(
            q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope, dropout_p, return_alpha,
            plan=kernels.unpack_plan(plan))

    def csr_scored_backward(self, grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col,
                            eid, colptr, row_t, eid_t, score, scale, negative_slope, dropout_p, need_dbias,
                            need_datt, plan):
        kernels = _import("csr_attention")
        return kernels.csr_scored_attention_backward(
            grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t,
            eid_t, score, scale, negative_slope, dropout_p, need_dbias, need_datt, plan=kernels.unpack_plan(plan))

    def segment_plan(self, graph):
        """Query tiles per segment (kernels/dense_attention.py), built once per graph."""
        kernels = _import("dense_attention")
        return graph.cached("triton.segment_plan", lambda: [kernels.build_segment_plan(graph.ptr)])

    def segment_forward(self, q, k, v, ptr, scale, plan):
        kernels = _import("dense_attention")
        return kernels.segment_attention_forward(q, k, v, ptr, scale, plan=plan[0] if plan else None)

    def segment_backward(self, grad_out, grad_lse, q, k, v, out, lse, ptr, scale, plan):
        kernels = _import("dense_attention")
        return kernels.segment_attention_backward(grad_out, grad_lse, q, k, v, out, lse, ptr, scale,
                                                  plan=plan[0] if plan else None)

    def dense_forward(self, q, k, v, scale, causal):
        return _import("dense_attention").dense_attention_forward(q, k, v, scale, causal)

    def dense_backward(self, grad_out, grad_lse, q, k, v, out, lse, scale, causal):
        return _import("dense_attention").dense_attention_backward(grad_out, grad_lse, q, k, v, out, lse, scale,
                                                                   causal)
