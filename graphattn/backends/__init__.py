"""The backends, by name. Priority order lives in graphattn/dispatch.py."""
from __future__ import annotations

from .base import Backend, Call
from .cpu import CpuBackend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .sdpa import SdpaBackend
from .triton import TritonBackend

BACKENDS = {b.name: b for b in (CpuBackend(), CudaBackend(), TritonBackend(), SdpaBackend(), ReferenceBackend())}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}") from None


__all__ = ["Backend", "Call", "BACKENDS", "get_backend"]
