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

from typing import Optional

import torch
from torch import Tensor

from .backends import get_backend


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of lse and of every softmax statistic for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
def sparse_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], rowptr: Tensor, col: Tensor,
                     eid: Tensor, colptr: Optional[Tensor], row_t: Optional[Tensor], eid_t: Optional[Tensor],
                     scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """Forward over the CSR; colptr/row_t/eid_t (the transposed CSR) are kept for the backward only."""
    return get_backend(backend).csr_forward(q, k, v, rowptr, col, eid, bias, scale)


@sparse_attention.register_fake
def _(q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, scale, backend):
    return _fake_out_lse(q, v, q.shape[0])


@torch.library.custom_op("graphattn::attention_csr_backward", mutates_args=())
def sparse_attention_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                              bias: Optional[Tensor], out: Tensor, lse: Tensor, rowptr: Tensor, col: Tensor,
                              eid: Tensor, colptr: Tensor, row_t: Tensor, eid_t: Tensor, scale: float,
                              need_dbias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv, dbias [E, H], or an empty tensor when need_dbias is False)."""
    dq, dk, dv, dbias = get_backend(backend).csr_backward(
        grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias)
    return dq, dk, dv, dbias if need_dbias else q.new_empty(0)


@sparse_attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t, scale, need_dbias,
      backend):
    dbias = q.new_empty((col.shape[0], q.shape[1])) if need_dbias else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias


def _sparse_setup(ctx, inputs, output):
    q, k, v, bias, rowptr, col, eid, colptr, row_t, eid_t, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t)
    ctx.scale, ctx.backend = scale, backend


def _sparse_backward(ctx, grad_out, grad_lse):
    q, k, v, bias, out, lse, rowptr, col, eid, colptr, row_t, eid_t = ctx.saved_tensors
    if colptr is None:
        raise RuntimeError("graphattn: backward needs the Graph's transposed CSR, which was not passed "
                           "because no input required grad when attention() was called")
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = sparse_attention_backward(
        _zeros_if_none(grad_out, out), grad_lse, q, k, v, bias, out, lse, rowptr, col, eid,
        colptr, row_t, eid_t, ctx.scale, need_dbias, ctx.backend)
    return dq, dk, dv, (dbias if need_dbias else None), None, None, None, None, None, None, None, None


sparse_attention.register_autograd(_sparse_backward, setup_context=_sparse_setup)


# ---------------------------------------------------------------------------
# Segments (a batch of complete graphs)
# ---------------------------------------------------------------------------
@torch.library.custom_op("graphattn::attention_segments", mutates_args=())
def segment_attention(q: Tensor, k: Tensor, v: Tensor, ptr: Tensor, scale: float,
                      backend: str) -> tuple[Tensor, Tensor]:
    return get_backend(backend).segment_forward(q, k, v, ptr, scale)


@segment_attention.register_fake
def _(q, k, v, ptr, scale, backend):
    return _fake_out_lse(q, v, q.shape[0])


@torch.library.custom_op("graphattn::attention_segments_backward", mutates_args=())
def segment_attention_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                               out: Tensor, lse: Tensor, ptr: Tensor, scale: float,
                               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(get_backend(backend).segment_backward(grad_out, grad_lse, q, k, v, out, lse, ptr, scale))


@segment_attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, ptr, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _segment_setup(ctx, inputs, output):
    q, k, v, ptr, scale, backend = inputs
    ctx.save_for_backward(q, k, v, *output, ptr)
    ctx.scale, ctx.backend = scale, backend


def _segment_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, ptr = ctx.saved_tensors
    dq, dk, dv = segment_attention_backward(_zeros_if_none(grad_out, out), grad_lse, q, k, v, out, lse,
                                            ptr, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None


segment_attention.register_autograd(_segment_backward, setup_context=_segment_setup)


# ---------------------------------------------------------------------------
# Dense, q [B, Lq, H, D] (leading dims flattened by dense_attention below)
# ---------------------------------------------------------------------------
@torch.library.custom_op("graphattn::attention_dense", mutates_args=())
def _dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                     backend: str) -> tuple[Tensor, Tensor]:
    return get_backend(backend).dense_forward(q, k, v, scale, causal)


@_dense_attention.register_fake
def _(q, k, v, scale, causal, backend):
    out = q.new_empty(q.shape[:-1] + v.shape[-1:])
    return out, q.new_empty(q.shape[:-1], dtype=stats_dtype(q.dtype))


@torch.library.custom_op("graphattn::attention_dense_backward", mutates_args=())
def _dense_attention_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                              out: Tensor, lse: Tensor, scale: float, causal: bool,
                              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(get_backend(backend).dense_backward(grad_out, grad_lse, q, k, v, out, lse, scale, causal))


@_dense_attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, scale, causal, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _dense_setup(ctx, inputs, output):
    q, k, v, scale, causal, backend = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.causal, ctx.backend = scale, causal, backend


def _dense_backward_formula(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _dense_attention_backward(_zeros_if_none(grad_out, out), grad_lse, q, k, v, out, lse,
                                           ctx.scale, ctx.causal, ctx.backend)
    return dq, dk, dv, None, None, None


_dense_attention.register_autograd(_dense_backward_formula, setup_context=_dense_setup)


def dense_attention(q, k, v, scale: float, causal: bool, backend: str):
    """q [*B, Lq, H, D] -> (out [*B, Lq, H, Dv], lse [*B, Lq, H]); kernels see one batch dim."""
    lead = q.shape[:-3]
    flat = lambda t: t.reshape((-1,) + t.shape[-3:])  # noqa: E731
    out, lse = _dense_attention(flat(q), flat(k), flat(v), scale, causal, backend)
    return out.reshape(lead + out.shape[1:]), lse.reshape(lead + lse.shape[1:])
