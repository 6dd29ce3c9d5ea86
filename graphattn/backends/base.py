"""What a backend is: the capabilities it declares and the entry points it implements.

A backend declares devices, dtypes, patterns, head-dim limit, bias support and
determinism; `not_supported_reasons(call)` turns those (plus whether its code
can run on this machine at all) into the list of reasons it cannot serve a call.
Kernel backends implement the `*_forward` / `*_backward` entry points of the
patterns they serve; graphattn's autograd ops (graphattn/ops.py) call them, so
every kernel backend shares one autograd wiring and one lse convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of lse and of every softmax statistic for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Call:
    """The facts about one attention call that decide which backend may serve it."""

    pattern: str  # "csr" (edge list), "segments" (batch of complete graphs) or "dense"
    device_type: str
    dtype: torch.dtype
    num_heads: int
    head_dim: int
    value_dim: int
    has_bias: bool
    causal: bool
    deterministic: bool  # torch.use_deterministic_algorithms(True) is on
    return_lse: bool
    # The sparse-path extras (shared/API.md, "Score kinds, attention dropout, attention weights").
    score: str = "dot"  # "dot", "gat" or "gatv2"
    dropout: bool = False  # attention dropout with dropout_p > 0
    return_attention: bool = False  # the caller wants alpha [E, H]
    # Segments under auto on CPU (0 / False elsewhere): the mean segment size seen by a node,
    # E / N = sum(n_s^2) / sum(n_s), and whether a backward will follow; dispatch compares them
    # with the measured crossover of graphattn/segment_crossover.py.
    segment_degree: float = 0.0
    needs_grad: bool = False


class Backend:
    name = "?"
    devices: tuple = ()
    dtypes: tuple = ALL_DTYPES
    patterns: tuple = ()
    max_head_dim: Optional[int] = None
    supports_bias = True
    supports_causal = True
    # Bitwise identical results run to run on the given device type.
    deterministic_on: tuple = ("cpu", "cuda")
    # Score kinds, attention dropout and returning alpha (the sparse-path extras):
    # a backend that declares them implements csr_scored_forward/backward.
    score_kinds: tuple = ("dot",)
    supports_dropout = False
    supports_return_attention = False

    def unavailable_reason(self, device_type: str) -> Optional[str]:
        """Why this backend's code cannot run here at all, or None."""
        return None

    def not_supported_reasons(self, call: Call) -> list:
        reasons = []
        if call.device_type not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices)} tensors, not {call.device_type}")
        else:
            why = self.unavailable_reason(call.device_type)
            if why:
                reasons.append(why)
        if call.pattern not in self.patterns:
            reasons.append(f"serves the {'/'.join(self.patterns)} pattern(s), not {call.pattern}")
        if call.dtype not in self.dtypes:
            reasons.append(f"does not take {call.dtype}")
        if call.dtype == torch.float64 and call.device_type != "cpu":
            reasons.append("float64 is served on CPU only")
        if self.max_head_dim is not None and max(call.head_dim, call.value_dim) > self.max_head_dim:
            reasons.append(f"head dim {max(call.head_dim, call.value_dim)} > {self.max_head_dim}")
        if call.has_bias and not self.supports_bias:
            reasons.append("does not take bias")
        if call.causal and not self.supports_causal:
            reasons.append("does not take causal")
        if call.score not in self.score_kinds:
            reasons.append(f"serves score={'/'.join(repr(s) for s in self.score_kinds)} only, not {call.score!r}")
        if call.dropout and not self.supports_dropout:
            reasons.append("does not take attention dropout (dropout_p > 0)")
        if call.return_attention and not self.supports_return_attention:
            reasons.append("does not return attention weights (return_attention=True)")
        if call.deterministic and call.device_type not in self.deterministic_on:
            reasons.append(f"is not bitwise deterministic on {call.device_type} "
                           "(torch.use_deterministic_algorithms(True) is on)")
        return reasons

    # ---- kernel entry points (see graphattn/ops.py for the contract) ----
    def csr_plan(self, graph, with_transposed: bool) -> list:
        """This backend's schedule for `graph` as a list of tensors (cached on the graph), or []."""
        return []

    def csr_forward(self, q, k, v, rowptr, col, eid, bias, scale, plan):
        raise NotImplementedError(self.name)

    def csr_backward(self, grad_out, grad_lse, q, k, v, bias, out, lse, rowptr, col, eid,
                     colptr, row_t, eid_t, scale, need_dbias, plan):
        raise NotImplementedError(self.name)

    def segment_plan(self, graph) -> list:
        """This backend's schedule for a segments graph as a list of tensors (cached on the graph), or []."""
        return []

    def segment_forward(self, q, k, v, ptr, scale, plan):
        raise NotImplementedError(self.name)

    def segment_backward(self, grad_out, grad_lse, q, k, v, out, lse, ptr, scale, plan):
        raise NotImplementedError(self.name)

    def dense_forward(self, q, k, v, scale, causal):
        raise NotImplementedError(self.name)

    def dense_backward(self, grad_out, grad_lse, q, k, v, out, lse, scale, causal):
        raise NotImplementedError(self.name)

    def csr_scored_forward(self, q, k, v, rowptr, col, eid, bias, att, seed, score, scale, negative_slope,
                           dropout_p, return_alpha, plan):
        """-> (out, lse, alpha [E, H] in edge_index column order or None); see graphattn/scored_ops.py."""
        raise NotImplementedError(self.name)

    def csr_scored_backward(self, grad_out, grad_lse, grad_alpha, q, k, v, bias, att, seed, out, lse, rowptr, col,
                            eid, colptr, row_t, eid_t, score, scale, negative_slope, dropout_p, need_dbias,
                            need_datt, plan):
        """-> (dq, dk, dv, dbias or None, datt or None); see graphattn/scored_ops.py."""
        raise NotImplementedError(self.name)

    # ---- the differentiable entry points of backends outside graphattn's ops ----
    # A kernel backend (autograd_by_ops) implements the *_forward / *_backward entry points
    # above and graphattn.attention runs them through graphattn/ops.py and scored_ops.py. A
    # backend differentiated by torch's autograd (the reference, SDPA) sets autograd_by_ops =
    # False and implements these instead.
    autograd_by_ops = True

    def attention(self, call: Call, q, k, v, graph, bias, scale: float, causal: bool):
        """-> (out, lse or None when call.return_lse is False); differentiable."""
        raise NotImplementedError(self.name)

    def attention_extra(self, call: Call, q, k, v, graph, bias, scale: float, *, negative_slope: float,
                        att, dropout_p: float, seed):
        """-> (out, lse, alpha or None); differentiable. Only given calls whose score kind, dropout and
        return_attention the backend declares. `seed`: the dropout seed [2] (graphattn/dropout.py), or None."""
        raise NotImplementedError(self.name)
