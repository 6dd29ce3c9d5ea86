"""The hand-written CUDA kernels of csrc/cuda/ (edge list): warp-per-row fused
edge softmax, block-per-row for hub rows, deterministic backward (dK/dV over
the transposed CSR, no atomics on values)."""
from __future__ import annotations

import torch

from .compiled import CompiledBackend, extension_error

_OP = "graphattn::csr_attention_forward"


def _cuda_kernels_error():
    """None when graphattn._C loads and holds the CUDA kernels, else why not."""
    why = extension_error()
    if why:
        return why
    try:
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(_OP, "CUDA")
    except RuntimeError as e:  # the op itself is missing: a stale build
        return f"graphattn._C does not define {_OP} ({e}); rebuild it"
    if not has_cuda:
        return ("graphattn._C was built without its CUDA kernels (needs a CUDA build of torch, nvcc, and "
                "GRAPHATTN_SKIP_CUDA unset); rebuild with pip install --no-build-isolation -e .")
    return None


class CudaBackend(CompiledBackend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    patterns = ("csr",)
    max_head_dim = 256
    supports_causal = False
    deterministic_on = ("cuda",)  # fixed summation orders; no atomics on values

    def unavailable_reason(self, device_type):
        return _cuda_kernels_error()
