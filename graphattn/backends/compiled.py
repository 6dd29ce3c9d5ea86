"""Shared entry points of the backends whose kernels live in graphattn._C
(csrc/): the torch ops dispatch on the tensors' device to the CPU or CUDA
implementation, so the cpu and cuda backends differ only in what they declare."""
from __future__ import annotations

import torch

from .base import Backend

# The C++ kernels take the score kind as this int (kDotScore, kGatScore, kGatv2Score in csrc/params.h).
SCORE_CODES = {"dot": 0, "gat": 1, "gatv2": 2}


def extension_error():
    """None when graphattn._C (the compiled kernels) loads, else why not."""
    try:
        from .. import _C  # noqa: F401  (loading it registers the torch.ops.graphattn kernels)
    except ImportError as e:
        return f"the C++ extension graphattn._C is not built ({e}); reinstall with pip install --no-build-isolation -e ."
    return None


class CompiledBackend(Backend):
    def csr_forward(self, q, k, v, rowptr, col, eid, bias, scale, plan):
        return torch.ops.graphattn.csr_attention_forward(q, k, v, rowptr, col, eid, bias, scale)

    def csr_backward(self, grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid,
                     colptr, row_t, eid_t, scale, need_dbias, plan):
        return torch.ops.graphattn.csr_attention_backward(
            grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias)

    def csr_scored_forward(self, q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope,
                           dropout_p, return_alpha, plan):
        out, lse, alpha = torch.ops.graphattn.csr_scored_attention_forward(
            q, k, v, rowptr, col, eid, bias, att, seed, SCORE_CODES[score], scale, negative_slope, dropout_p,
            return_alpha)
        return out, lse, alpha if return_alpha else None

    def csr_scored_backward(self, grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col,
                            eid, colptr, row_t, eid_t, score, scale, negative_slope, dropout_p, need_dbias,
                            need_datt, plan):
        dq, dk, dv, dbias, datt = torch.ops.graphattn.csr_scored_attention_backward(
            grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t,
            eid_t, SCORE_CODES[score], scale, negative_slope, dropout_p, need_dbias, need_datt)
        return dq, dk, dv, dbias if need_dbias else None, datt if need_datt else None

    def segment_forward(self, q, k, v, ptr, scale, plan):
        return torch.ops.graphattn.segment_attention_forward(q, k, v, ptr, scale)

    def segment_backward(self, grad_out, grad_lse, q, k, v, out, lse, ptr, scale, plan):
        return torch.ops.graphattn.segment_attention_backward(grad_out, grad_lse, q, k, v, out, lse, ptr, scale)
