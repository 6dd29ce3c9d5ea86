"""The sparse op with score kinds, attention dropout and returned weights.

`graphattn::attention_csr_scored` is the edge-list op of graphattn/ops.py
generalised to the extras of shared/API.md: score "dot", "gat" (the caller
passes q [N_dst, H, 1], k [N_src, H, 1]) or "gatv2" (with att [H, D]), dropout
on the attention weights with a keep mask regenerated from `seed` (see
graphattn/dropout.py), and alpha [E, H] in edge_index column order. Kernel
backends implement `csr_scored_forward` / `csr_scored_backward`.

Conventions of its backward (what every backend's csr_scored_backward computes):
with p_e = exp(s_e - lse_i), m_e the keep bit and c = 1 / (1 - dropout_p),
alpha_e = c m_e p_e and out_i = sum_e alpha_e v_j. Given grad_out, grad_alpha
(g_e, in edge_index column order, float32) and grad_lse:
    Delta_i = rowsum(dO_i * O_i) - grad_lse_i      (grad_lse already holds - sum_e alpha_e g_e)
    ds_e    = p_e (c m_e (<dO_i, v_j> + g_e) - Delta_i)
and ds_e flows into q, k (and att, bias) through the score; dV_j = sum_e alpha_e dO_i.
The term sum_e alpha_e g_e is folded into grad_lse here, once, so kernels only
add g_e to <dO_i, v_j>.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import get_backend
from .ops import _fake_out_lse, _zeros_if_none


@torch.library.custom_op("graphattn::attention_csr_scored", mutates_args=())
def attention_csr_scored(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], att: Optional[Tensor],
                         seed: Optional[Tensor], rowptr: Tensor, col: Tensor, eid: Tensor,
                         colptr: Optional[Tensor], row_t: Optional[Tensor], eid_t: Optional[Tensor],
                         plan: list[Tensor], score: str, scale: float, negative_slope: float, dropout_p: float,
                         return_alpha: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """-> (out, lse, alpha [E, H] in edge_index column order, or an empty tensor without return_alpha)."""
    out, lse, alpha = get_backend(backend).csr_scored_forward(
        q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope, dropout_p, return_alpha, plan)
    return out, lse, alpha if return_alpha else q.new_empty(0)


@attention_csr_scored.register_fake
def _(q, k, v, bias, att, seed, rowptr, col, eid, colptr, row_t, eid_t, plan, score, scale, negative_slope,
      dropout_p, return_alpha, backend):
    out, lse = _fake_out_lse(q, v, q.shape[0])
    alpha = q.new_empty((col.shape[0], q.shape[1])) if return_alpha else q.new_empty(0)
    return out, lse, alpha


@torch.library.custom_op("graphattn::attention_csr_scored_backward", mutates_args=())
def attention_csr_scored_backward(
        grad_out: Tensor, grad_lse: Optional[Tensor], grad_alpha: Optional[Tensor], q: Tensor, k: Tensor,
        v: Tensor, bias: Optional[Tensor], att: Optional[Tensor], seed: Optional[Tensor], out: Tensor, lse: Tensor,
        rowptr: Tensor, col: Tensor, eid: Tensor, colptr: Tensor, row_t: Tensor, eid_t: Tensor,
        plan: list[Tensor], score: str, scale: float, negative_slope: float, dropout_p: float, need_dbias: bool,
        need_datt: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv, dbias [E, H] or empty, datt [H, D] or empty)."""
    dq, dk, dv, dbias, datt = get_backend(backend).csr_scored_backward(
        grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t, eid_t,
        score, scale, negative_slope, dropout_p, need_dbias, need_datt, plan)
    return dq, dk, dv, dbias if need_dbias else q.new_empty(0), datt if need_datt else q.new_empty(0)


@attention_csr_scored_backward.register_fake
def _(grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t, eid_t,
      plan, score, scale, negative_slope, dropout_p, need_dbias, need_datt, backend):
    dbias = q.new_empty((col.shape[0], q.shape[1])) if need_dbias else q.new_empty(0)
    datt = q.new_empty(att.shape) if need_datt else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias, datt


def _setup(ctx, inputs, output):
    (q, k, v, bias, att, seed, rowptr, col, eid, colptr, row_t, eid_t, plan, score, scale, negative_slope,
     dropout_p, return_alpha, backend) = inputs
    out, lse, alpha = output
    ctx.save_for_backward(q, k, v, bias, att, seed, out, lse, alpha, rowptr, col, eid, colptr, row_t, eid_t, *plan)
    ctx.args = (score, scale, negative_slope, dropout_p, backend)


def alpha_grad_into_lse(grad_lse, grad_alpha, alpha, rowptr, eid, lse):
    """grad_lse - sum_e alpha_e g_e per target (see the module docstring), in the dtype of lse."""
    num_edges = eid.shape[0]
    position = torch.arange(num_edges, device=rowptr.device)
    target_of_position = torch.searchsorted(rowptr, position, right=True) - 1
    weighted = (alpha.to(lse.dtype) * grad_alpha)[eid]  # CSR order
    total = lse.new_zeros(lse.shape).index_add_(0, target_of_position, weighted)
    return -total if grad_lse is None else grad_lse.to(lse.dtype) - total


def _backward(ctx, grad_out, grad_lse, grad_alpha):
    q, k, v, bias, att, seed, out, lse, alpha, rowptr, col, eid, colptr, row_t, eid_t, *plan = ctx.saved_tensors
    score, scale, negative_slope, dropout_p, backend = ctx.args
    if colptr is None:
        raise RuntimeError("graphattn: backward needs the Graph's transposed CSR, which was not passed "
                           "because no input required grad when attention() was called")
    if grad_alpha is not None and alpha.numel():
        grad_alpha = grad_alpha.to(lse.dtype).contiguous()
        grad_lse = alpha_grad_into_lse(grad_lse, grad_alpha, alpha, rowptr, eid, lse)
    else:
        grad_alpha = None
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    need_datt = att is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias, datt = attention_csr_scored_backward(
        _zeros_if_none(grad_out, out), grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t, eid_t,
        plan, score, scale, negative_slope, dropout_p, need_dbias, need_datt, backend)
    return (dq, dk, dv, dbias if need_dbias else None, datt if need_datt else None, None, None, None, None, None,
            None, None, [None] * len(plan), None, None, None, None, None, None)


attention_csr_scored.register_autograd(_backward, setup_context=_setup)


def attention_scored(backend, call, q, k, v, graph, bias, scale, *, negative_slope, att, dropout_p, seed):
    """Run `backend`'s scored kernels through the op: -> (out, lse, alpha or None)."""
    if call.score == "gat":  # one scalar per node and head: the additive score with D = 1 and att = 1
        q, k = q.unsqueeze(-1), k.unsqueeze(-1)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, bias, att))
    t = graph.transposed() if needs_grad else None
    out, lse, alpha = attention_csr_scored(
        q, k, v, bias, att, seed if dropout_p > 0 else None, graph.rowptr, graph.col, graph.eid,
        None if t is None else t.colptr, None if t is None else t.row, None if t is None else t.eid,
        backend.csr_plan(graph, needs_grad), call.score, scale, negative_slope, dropout_p,
        call.return_attention, backend.name)
    return out, lse, alpha if call.return_attention else None
