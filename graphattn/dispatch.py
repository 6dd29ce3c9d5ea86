"""Which backend serves a call: a priority list per (device, pattern), first
backend with no reasons against it wins; a forced backend must serve or raise.

Priorities (fastest first):
- CPU: the fused C++ kernels for edge lists and segments; SDPA for dense
  (it is the dense contract itself, and uses torch's tiled CPU flash kernel).
  Segments go to SDPA over padded blocks instead (the sdpa backend) when their mean
  size E / N reaches the crossover measured for the dtype and for forward or
  forward+backward (graphattn/segment_crossover.py, written by
  `python -m benchmarks.segment_crossover`); calls asking for lse, calls under
  torch.compile and dtypes or modes without a measured crossover stay on the kernel.
- CUDA: Triton for edge lists and segments; for dense, SDPA until the Triton
  dense kernel has GPU measurements that show where it wins (no GPU data is
  committed yet: see benchmarks/results/).
- The reference is last everywhere: correct on any input, but slow.
The Triton interpreter (CPU tensors) is never chosen by auto, only forced.
"""
from __future__ import annotations

from . import segment_crossover
from .backends import BACKENDS, Backend, Call

_PRIORITY = {
    ("cpu", "csr"): ("cpu", "reference"),
    ("cpu", "segments"): ("cpu", "reference"),
    ("cpu", "dense"): ("sdpa", "reference"),
    ("cuda", "csr"): ("cuda", "triton", "reference"),
    ("cuda", "segments"): ("triton", "reference"),
    ("cuda", "dense"): ("sdpa", "triton", "reference"),
}


class BackendError(ValueError):
    """No backend (or not the forced one) can serve this call; the message says why."""


def segment_degree(graph) -> float:
    """E / N of a segments Graph: the mean over nodes of the size of the node's segment
    (sum(n_s^2) / sum(n_s)); 0 without nodes. Computed once per Graph."""
    return graph.cached("segment_degree", lambda: graph.num_edges / graph.num_dst if graph.num_dst else 0.0)


def segments_by_sdpa(call: Call) -> bool:
    """Whether auto sends this segments call to SDPA over padded blocks rather than the segment kernel."""
    if call.pattern != "segments" or call.device_type != "cpu" or call.return_lse or call.segment_degree <= 0:
        return False
    key = (str(call.dtype).replace("torch.", ""), "fwdbwd" if call.needs_grad else "fwd")
    threshold = segment_crossover.THRESHOLDS.get(key)
    return threshold is not None and call.segment_degree >= threshold


def priority(call: Call) -> tuple:
    if segments_by_sdpa(call):
        return ("sdpa", "cpu", "reference")
    return _PRIORITY.get((call.device_type, call.pattern), ("reference",))


def choose(call: Call, backend: str = "auto") -> Backend:
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
        reasons = BACKENDS[backend].not_supported_reasons(call)
        if reasons:
            raise BackendError(f"backend={backend!r} cannot serve this call: {'; '.join(reasons)}")
        return BACKENDS[backend]
    for name in priority(call):
        if name in BACKENDS and not BACKENDS[name].not_supported_reasons(call):
            return BACKENDS[name]
    lines = [f"  {name}: {'; '.join(b.not_supported_reasons(call)) or 'not in the auto priority for this call'}"
             for name, b in BACKENDS.items()]
    raise BackendError(f"no graphattn backend can serve this {call.pattern} call on {call.device_type} "
                       f"({call.dtype}):\n" + "\n".join(lines))


def available_backends(device="cpu") -> list:
    """Names of the backends whose code can run on tensors of `device` on this machine."""
    import torch

    device_type = torch.device(device).type
    return [name for name, b in BACKENDS.items()
            if device_type in b.devices and b.unavailable_reason(device_type) is None
            and (device_type != "cuda" or torch.cuda.is_available())]
