"""The fused C++ CPU kernels of csrc/cpu/ (edge list and segments)."""
from __future__ import annotations

from .compiled import CompiledBackend, extension_error


class CpuBackend(CompiledBackend):
    name = "cpu"
    devices = ("cpu",)
    patterns = ("csr", "segments")
    supports_causal = False

    def unavailable_reason(self, device_type):
        return extension_error()
