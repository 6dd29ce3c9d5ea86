"""graphattn.attention: validate the call, normalise the pattern to a Graph,
pick a backend, run it through graphattn's autograd ops.

Every bad call raises ValueError / TypeError / IndexError naming the argument
and the expected form before any kernel reads memory.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import dispatch, dropout, ops, scored_ops
from .backends import Call
from .graph import Graph

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them with .to()")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.dtype == torch.float64 and q.device.type != "cpu":
        raise TypeError("float64 is supported on CPU only; use float32 on the GPU")


def _check_rows(q, k, v, lead: str):
    """Shared shape checks: q [.., Lq, H, D], k [.., Lk, H, D], v [.., Lk, H, Dv]."""
    if q.shape[-2] != k.shape[-2] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"q, k, v must have the same number of heads H (dim -2), "
                         f"got {q.shape[-2]}, {k.shape[-2]}, {v.shape[-2]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim D (dim -1), got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-3] != v.shape[-3]:
        raise ValueError(f"k and v must have the same number of {lead} (dim -3), got {k.shape[-3]} and {v.shape[-3]}")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError("head dims must be at least 1")


def _as_graph(edge_index, q, k) -> Graph:
    if isinstance(edge_index, Graph):
        graph = edge_index
    elif isinstance(edge_index, torch.Tensor):
        if edge_index.device != q.device:
            raise ValueError(f"edge_index is on {edge_index.device} but q is on {q.device}; move it with .to()")
        graph = Graph.from_edge_index(edge_index, num_nodes=(k.shape[0], q.shape[0]))
    else:
        raise TypeError("edge_index must be None (dense), an integer tensor [2, E] or a graphattn.Graph, "
                        f"got {type(edge_index).__name__}")
    if graph.device != q.device:
        raise ValueError(f"the Graph is on {graph.device} but q is on {q.device}; move it with graph.to(q.device)")
    if graph.num_dst != q.shape[0] or graph.num_src != k.shape[0]:
        raise ValueError(f"the Graph has {graph.num_src} sources and {graph.num_dst} targets, but k has "
                         f"{k.shape[0]} rows and q {q.shape[0]}; build it with num_nodes=(N_src, N_dst)")
    return graph


def _check_bias(bias, q, graph: Graph):
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if graph.kind != "csr":
        raise ValueError("bias is taken on the sparse (edge_index) path only; it is not defined for dense "
                         "or segment attention")
    e, h = graph.num_edges, q.shape[1]
    if tuple(bias.shape) not in ((e, h), (e,)):
        raise ValueError(f"bias must be [E, H] = [{e}, {h}] or [E] = [{e}] in edge_index column order, "
                         f"got {list(bias.shape)}")
    if bias.dtype != q.dtype:
        raise TypeError(f"bias must have the dtype of q ({q.dtype}), got {bias.dtype}")
    if bias.device != q.device:
        raise ValueError(f"bias is on {bias.device} but q is on {q.device}")
    return bias[:, None].expand(e, h) if bias.dim() == 1 else bias


_SCORES = ("dot", "gat", "gatv2")


def _check_extras(q, k, v, edge_index, *, score, negative_slope, att, dropout_p, generator, return_attention,
                  scale):
    """Validate the sparse-path extras; returns (negative_slope, dropout_p) as floats."""
    if not isinstance(score, str) or score not in _SCORES:
        raise ValueError(f"score must be one of 'dot', 'gat', 'gatv2', got {score!r}")
    if not isinstance(return_attention, bool):
        raise TypeError(f"return_attention must be a bool, got {type(return_attention).__name__}")
    if (not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool)
            or not math.isfinite(negative_slope)):
        raise TypeError(f"negative_slope must be a finite float, got {negative_slope!r}")
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool):
        raise TypeError(f"dropout_p must be a float in [0, 1], got {dropout_p!r}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != q.device.type:
            raise ValueError(f"generator is on {generator.device} but q is on {q.device}")
    extras = score != "dot" or dropout_p > 0 or return_attention or att is not None
    if extras:
        sparse = edge_index is not None and (isinstance(edge_index, torch.Tensor)
                                             or (isinstance(edge_index, Graph) and edge_index.kind == "csr"))
        if not sparse:
            what = ("score=" + repr(score) if score != "dot" else "dropout_p" if dropout_p > 0
                    else "return_attention" if return_attention else "att")
            raise ValueError(f"{what} is taken on the sparse (edge_index) path only, not on dense or "
                             "segment attention")
    if score == "gatv2":
        if att is None:
            raise ValueError("score='gatv2' needs att, a tensor [H, D]")
        if not isinstance(att, torch.Tensor):
            raise TypeError(f"att must be a torch.Tensor [H, D], got {type(att).__name__}")
    elif att is not None:
        raise ValueError(f"att is taken with score='gatv2' only, not score={score!r}")
    if score in ("gat", "gatv2") and scale is not None:
        raise ValueError(f"scale is taken with score='dot' only; score={score!r} has no scale")
    if score == "gat":
        if q.dim() != 2 or k.dim() != 2 or v.dim() != 3:
            raise ValueError("score='gat' takes q [N_dst, H] (each target's term), k [N_src, H] (each source's "
                             f"term) and v [N_src, H, Dv], got ranks {q.dim()}, {k.dim()}, {v.dim()}")
        if not (q.shape[1] == k.shape[1] == v.shape[1]):
            raise ValueError(f"q, k, v must have the same number of heads H (dim 1), "
                             f"got {q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"k and v must have the same number of source rows (dim 0), "
                             f"got {k.shape[0]} and {v.shape[0]}")
        if v.shape[-1] == 0:
            raise ValueError("head dims must be at least 1")
    if score == "gatv2":
        if q.dim() == 3 and tuple(att.shape) != (q.shape[1], q.shape[2]):
            raise ValueError(f"att must be [H, D] = [{q.shape[1]}, {q.shape[2]}], got {list(att.shape)}")
        if att.dtype != q.dtype:
            raise TypeError(f"att must have the dtype of q ({q.dtype}), got {att.dtype}")
        if att.device != q.device:
            raise ValueError(f"att is on {att.device} but q is on {q.device}")
    return float(negative_slope), float(dropout_p)


def attention(q, k, v, edge_index=None, *, bias=None, scale: Optional[float] = None, causal: bool = False,
              return_lse: bool = False, backend: str = "auto", score: str = "dot", negative_slope: float = 0.2,
              att=None, dropout_p: float = 0.0, generator=None, return_attention: bool = False):
    """Fused attention of q over k, v along `edge_index` (see shared/API.md).

    edge_index None: dense, q [*B, Lq, H, D], k [*B, Lk, H, D], v [*B, Lk, H, Dv].
    edge_index [2, E] (j = edge_index[0] -> i = edge_index[1]) or a Graph: q [N_dst, H, D],
    k [N_src, H, D], v [N_src, H, Dv]. Returns out (and lse with return_lse=True).

    Sparse path only: `score` "dot" (default), "gat" (q [N_dst, H], k [N_src, H]) or "gatv2"
    (with `att [H, D]`), `negative_slope` of their LeakyReLU; `dropout_p` on the attention
    weights (drawn from `generator`, or torch's default one); `return_attention=True` also
    returns alpha [E, H] in edge_index column order (after dropout). Results come as
    out, then lse (return_lse), then alpha (return_attention).
    """
    _check_qkv(q, k, v)
    negative_slope, dropout_p = _check_extras(
        q, k, v, edge_index, score=score, negative_slope=negative_slope, att=att, dropout_p=dropout_p,
        generator=generator, return_attention=return_attention, scale=scale)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string ('auto' or a backend name), got {type(backend).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() and q.shape[-1] else 1.0
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    scale = float(scale)

    if edge_index is None:
        if q.dim() < 3 or k.dim() != q.dim() or v.dim() != q.dim():
            raise ValueError("dense attention takes q [*B, Lq, H, D], k [*B, Lk, H, D], v [*B, Lk, H, Dv] "
                             f"of one rank >= 3, got ranks {q.dim()}, {k.dim()}, {v.dim()}")
        if not (q.shape[:-3] == k.shape[:-3] == v.shape[:-3]):
            raise ValueError(f"q, k, v must have the same leading dims, got {list(q.shape[:-3])}, "
                             f"{list(k.shape[:-3])}, {list(v.shape[:-3])}")
        _check_rows(q, k, v, "keys")
        if bias is not None:
            raise ValueError("bias is taken on the sparse (edge_index) path only, not on dense attention")
        graph, pattern = None, "dense"
    else:
        if score != "gat":  # gat's q [N_dst, H], k [N_src, H] were checked by _check_extras
            if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
                raise ValueError(f"graph attention (score={score!r}) takes q [N_dst, H, D], k [N_src, H, D], "
                                 f"v [N_src, H, Dv], got ranks {q.dim()}, {k.dim()}, {v.dim()}")
            _check_rows(q, k, v, "source rows")
        graph = _as_graph(edge_index, q, k)
        pattern = graph.kind
        if causal:
            raise ValueError("causal is taken on the dense path only (edge_index=None); on a graph, leave out "
                             "the edges you do not want")
        if bias is not None:
            bias = _check_bias(bias, q, graph)

    # A complete graph given as an edge list is dense attention: the dense path computes it
    # without gathering rows edge by edge. On CPU, at N=4096 with every pair an edge, even SDPA
    # with a boolean mask ran several times faster than the fused edge kernel, forward and
    # backward (benchmarks/results/cpu-amd-epyc-2c.csv, scaling/density, density 1). Only for auto,
    # plain dot scores without bias, and outside torch.compile (the check reads the edges).
    plain = score == "dot" and dropout_p == 0 and not return_attention
    to_dense = (pattern == "csr" and backend == "auto" and plain and bias is None
                and not torch.compiler.is_compiling() and graph.is_complete())
    if to_dense:
        q, k, v = q[None], k[None], v[None]
        graph, pattern = None, "dense"

    # Segments on CPU: auto picks the segment kernel or SDPA over padded blocks by the mean segment
    # size and whether a backward follows (graphattn/dispatch.py). Outside torch.compile only (the
    # size is read from ptr); under it the segment kernel's op serves, as before.
    segment_degree, needs_grad = 0.0, False
    if (pattern == "segments" and backend == "auto" and q.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        segment_degree = dispatch.segment_degree(graph)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    call = Call(
        pattern=pattern, device_type=q.device.type, dtype=q.dtype,
        num_heads=v.shape[-2], head_dim=1 if score == "gat" else q.shape[-1], value_dim=v.shape[-1],
        has_bias=bias is not None, causal=bool(causal),
        deterministic=torch.are_deterministic_algorithms_enabled(), return_lse=bool(return_lse),
        score=score, dropout=dropout_p > 0, return_attention=return_attention,
        segment_degree=segment_degree, needs_grad=needs_grad,
    )
    chosen = dispatch.choose(call, backend)
    if call.score == "dot" and not call.dropout and not call.return_attention:
        # Kernel backends run through graphattn's autograd ops; the others (reference, SDPA)
        # differentiate by torch's autograd.
        if chosen.autograd_by_ops:
            out, lse = ops.attention(chosen, call, q, k, v, graph, bias, scale, bool(causal))
        else:
            out, lse = chosen.attention(call, q, k, v, graph, bias, scale, bool(causal))
        if to_dense:  # back from the batch of one; lse is None where the backend was not asked for it
            out, lse = out[0], None if lse is None else lse[0]
        return (out, lse) if return_lse else out
    # One seed per call, drawn from torch's generator: the keep mask is a hash of (seed, edge, head),
    # the same on every backend (graphattn/dropout.py).
    seed = dropout.draw_seed(generator, q.device) if dropout_p > 0 else None
    extras = dict(negative_slope=negative_slope, att=att, dropout_p=dropout_p, seed=seed)
    if chosen.autograd_by_ops:
        out, lse, alpha = scored_ops.attention_scored(chosen, call, q, k, v, graph, bias, scale, **extras)
    else:
        out, lse, alpha = chosen.attention_extra(call, q, k, v, graph, bias, scale, **extras)
    result = (out,) + ((lse,) if return_lse else ()) + ((alpha,) if return_attention else ())
    return result if len(result) > 1 else out
