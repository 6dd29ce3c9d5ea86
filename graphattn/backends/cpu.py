"""The fused C++ CPU kernels of csrc/cpu/ (edge list and segments)."""
from __future__ import annotations

from .compiled import CompiledBackend, extension_error


class CpuBackend(CompiledBackend):
    name = "cpu"
    devices = ("cpu",)
    patterns = ("csr", "segments")
    supports_causal = False
    # csr only: the segment kernels take plain dot scores (attention() allows the extras on edge lists only).
    score_kinds = ("dot", "gat", "gatv2")
    supports_dropout = True
    supports_return_attention = True

    def unavailable_reason(self, device_type):
        return extension_error()
