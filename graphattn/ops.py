"""graphattn's differentiable ops, registered with torch.library.

One custom op per pattern (edge list, segments, dense), each with a fake
(meta) implementation and an autograd formula, so `torch.compile(fullgraph=True)`
traces through `graphattn.attention` without a graph break. The `backend`
argument names the kernel backend (graphattn/backends/) whose entry points do
the work; the autograd wiring is shared by all of them.

Every backend follows one convention: the forward returns `out` (input dtype)
and `lse` (float32; float64 for float64 inputs), and the backward recomputes
the attention weights from them, so nothing of size [E, H] or [L, L] is saved.
`lse` is differentiable: its gradient enters the backward through
Delta = rowsum(dO * O) - dlse.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .backends import get_backend
from .backends.base import stats_dtype


def _fake_out_lse(q, v, rows: int):
    out = q.new_empty((rows, q.shape[1], v.shape[-1]))
    lse = q.new_empty((rows, q.shape[1]), dtype=stats_dtype(q.dtype))
    return out, lse


def _zeros_if_none(grad_out, out):
    return torch.zeros_like(out) if grad_out is None else grad_out


# ---------------------------------------------------------------------------
# Edge list (target-sorted CSR)
# ---------------------------------------------------------------------------
@torch.library.custom_op("graphattn::attention_csr", mutates_args=())
def attention_csr(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], rowptr: Tensor, col: Tensor,
                  eid: Tensor, colptr: Optional[Tensor], row_t: Optional[Tensor], eid_t: Optional[Tensor],
                  plan: list[Tensor], scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """Forward over the CSR; colptr/row_t/eid_t (the transposed CSR) are kept for the backward only.
    `plan`: the backend's cached schedule for this graph (Backend.csr_plan), possibly empty."""
    return get_backend(backend).csr_forward(q, k, v, rowptr, col, eid, bias, scale, plan)


@attention_csr.register_fake
def _(q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, plan, scale, backend):
    return _fake_out_lse(q, v, q.shape[0])


@torch.library.custom_op("graphattn::attention_csr_backward", mutates_args=())
def attention_csr_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                           bias: Optional[Tensor], out: Tensor, lse: Tensor, rowptr: Tensor, col: Tensor,
                           eid: Tensor, colptr: Tensor, row_t: Tensor, eid_t: Tensor, plan: list[Tensor],
                           scale: float, need_dbias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv, dbias [E, H], or an empty tensor when need_dbias is False)."""
    dq, dk, dv, dbias = get_backend(backend).csr_backward(
        grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias,
        plan)
    return dq, dk, dv, dbias if need_dbias else q.new_empty(0)


@attention_csr_backward.register_fake
def _(grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, plan, scale,
      need_dbias, backend):
    dbias = q.new_empty((col.shape[0], q.shape[1])) if need_dbias else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _csr_setup(ctx, inputs, output):
    q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, plan, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, *plan)
    ctx.scale, ctx.backend = scale, backend


def _csr_backward(ctx, grad_out, grad_lse):
    q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, *plan = ctx.saved_tensors
    if colptr is None:
        raise RuntimeError("graphattn: backward needs the Graph's transposed CSR, which was not passed "
                           "because no input required grad when attention() was called")
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = attention_csr_backward(
        _zeros_if_none(grad_out, out), grad_lse, q, k, v, bias, out, lse, rowptr, col, eid,
        colptr, row_t, eid_t, plan, ctx.scale, need_dbias, ctx.backend)
    no_grad_for_plan = [None] * len(plan)  # a list input takes a list of (no) gradients
    return dq, dk, dv, (dbias if need_dbias else None), None, None, None, None, None, None, no_grad_for_plan, None, None


attention_csr.register_autograd(_csr_backward, setup_context=_csr_setup)


# ---------------------------------------------------------------------------
# Segments (a batch of complete graphs)
# ---------------------------------------------------------------------------
@torch.library.custom_op("graphattn::attention_segments", mutates_args=())
def attention_segments(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, plan: list[Tensor], scale: float,
                       backend: str) -> tuple[Tensor, Tensor]:
    """`plan`: the backend's cached schedule for these segments (Backend.segment_plan), possibly empty."""
    return get_backend(backend).segment_forward(q, k, v, ptr, scale, plan)


@attention_segments.register_fake
def _(q, k, v, ptr, plan, scale, backend):
    return _fake_out_lse(q, v, q.shape[0])


@torch.library.custom_op("graphattn::attention_segments_backward", mutates_args=())
def attention_segments_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                                out: Tensor, lse: Tensor, ptr: Tensor, plan: list[Tensor], scale: float,
                                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(get_backend(backend).segment_backward(grad_out, grad_lse, q, k, v, out, lse, ptr, scale, plan))


@attention_segments_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, ptr, plan, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _segment_setup(ctx, inputs, output):
    q, k, v, ptr, plan, scale, backend = inputs
    ctx.save_for_backward(q, k, v, *output, ptr, *plan)
    ctx.scale, ctx.backend = scale, backend


def _segment_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, ptr, *plan = ctx.saved_tensors
    dq, dk, dv = attention_segments_backward(_zeros_if_none(grad_out, out), grad_lse, q, k, v, out, lse,
                                             ptr, plan, ctx.scale, ctx.backend)
    return dq, dk, dv, None, [None] * len(plan), None, None


attention_segments.register_autograd(_segment_backward, setup_context=_segment_setup)


# ---------------------------------------------------------------------------
# Dense, q [B, Lq, H, D] (leading dims flattened by dense_attention below)
# ---------------------------------------------------------------------------
@torch.library.custom_op("graphattn::attention_dense", mutates_args=())
def attention_dense(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                     backend: str) -> tuple[Tensor, Tensor]:
    return get_backend(backend).dense_forward(q, k, v, scale, causal)


@attention_dense.register_fake
def _(q, k, v, scale, causal, backend):
    out = q.new_empty(q.shape[:-1] + v.shape[-1:])
    return out, q.new_empty(q.shape[:-1], dtype=stats_dtype(q.dtype))


@torch.library.custom_op("graphattn::attention_dense_backward", mutates_args=())
def attention_dense_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                              out: Tensor, lse: Tensor, scale: float, causal: bool,
                              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(get_backend(backend).dense_backward(grad_out, grad_lse, q, k, v, out, lse, scale, causal))


@attention_dense_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, scale, causal, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _dense_setup(ctx, inputs, output):
    q, k, v, scale, causal, backend = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.causal, ctx.backend = scale, causal, backend


def _dense_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_dense_backward(_zeros_if_none(grad_out, out), grad_lse, q, k, v, out, lse,
                                           ctx.scale, ctx.causal, ctx.backend)
    return dq, dk, dv, None, None, None


attention_dense.register_autograd(_dense_backward, setup_context=_dense_setup)


def attention(backend, call, q, k, v, graph, bias, scale: float, causal: bool):
    """Run kernel backend `backend` on `call` through the op of its pattern: -> (out, lse); differentiable."""
    if call.pattern == "csr":
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
        t = graph.transposed() if needs_grad else None  # dK/dV walk edges by source
        return attention_csr(
            q, k, v, bias, graph.rowptr, graph.col, graph.eid,
            None if t is None else t.colptr, None if t is None else t.row, None if t is None else t.eid,
            backend.csr_plan(graph, needs_grad), scale, backend.name)
    if call.pattern == "segments":
        return attention_segments(q, k, v, graph.ptr, backend.segment_plan(graph), scale, backend.name)
    return attention_dense_nd(q, k, v, scale, causal, backend.name)


def attention_dense_nd(q, k, v, scale: float, causal: bool, backend: str):
    """q [*B, Lq, H, D] -> (out [*B, Lq, H, Dv], lse [*B, Lq, H]); kernels see one batch dim."""
    lead = q.shape[:-3]
    batch = math.prod(lead)  # not -1: reshape cannot infer it when a length is 0
    flat = lambda t: t.reshape((batch,) + t.shape[-3:])  # noqa: E731
    out, lse = attention_dense(flat(q), flat(k), flat(v), scale, causal, backend)
    return out.reshape(lead + out.shape[1:]), lse.reshape(lead + lse.shape[1:])


# ---------------------------------------------------------------------------
# Fake implementations of the compiled kernel ops (csrc/graphattn.cpp), so
# they too can be traced and opchecked. Absent when graphattn._C is not built.
# ---------------------------------------------------------------------------
def _register_kernel_fakes():
    try:
        from . import _C  # noqa: F401
    except ImportError:
        return

    @torch.library.register_fake("graphattn::csr_attention_forward")
    def _(q, k, v, rowptr, col, eid, bias, scale):
        return _fake_out_lse(q, v, q.shape[0])

    @torch.library.register_fake("graphattn::csr_attention_backward")
    def _(grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias):
        dbias = q.new_empty((col.shape[0], q.shape[1])) if need_dbias else q.new_empty(0)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias

    @torch.library.register_fake("graphattn::csr_scored_attention_forward")
    def _(q, k, v, rowptr, col, eid, bias, att, seed, score_kind, scale, negative_slope, dropout_p, return_alpha):
        out, lse = _fake_out_lse(q, v, q.shape[0])
        return out, lse, q.new_empty((col.shape[0], q.shape[1])) if return_alpha else q.new_empty(0)

    @torch.library.register_fake("graphattn::csr_scored_attention_backward")
    def _(grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col, eid, colptr, row_t, eid_t,
          score_kind, scale, negative_slope, dropout_p, need_dbias, need_datt):
        dbias = q.new_empty((col.shape[0], q.shape[1])) if need_dbias else q.new_empty(0)
        datt = q.new_empty(att.shape) if need_datt and att is not None else q.new_empty(0)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias, datt

    @torch.library.register_fake("graphattn::segment_attention_forward")
    def _(q, k, v, ptr, scale):
        return _fake_out_lse(q, v, q.shape[0])

    @torch.library.register_fake("graphattn::segment_attention_backward")
    def _(grad_out, grad_lse, q, k, v, out, lse, ptr, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_register_kernel_fakes()
