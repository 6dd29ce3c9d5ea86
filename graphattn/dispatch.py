"""Which backend serves a call: a priority list per (device, pattern), first
backend with no reasons against it wins; a forced backend must serve or raise.

Priorities (fastest first):
- CPU: the fused C++ kernels for edge lists and segments; SDPA for dense
  (it is the dense contract itself, and uses torch's tiled CPU flash kernel).
- CUDA: Triton for edge lists and segments; for dense, SDPA until the Triton
  dense kernel has GPU measurements that show where it wins (no GPU data is
  committed yet: see benchmarks/results/).
- The reference is last everywhere: correct on any input, but slow.
The Triton interpreter (CPU tensors) is never chosen by auto, only forced.
"""
from __future__ import annotations

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


def priority(call: Call) -> tuple:
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
