"""python -m graphattn.info: versions, devices, and which backends can run here (and why not)."""
from __future__ import annotations

import os
import platform

import torch

from .backends import BACKENDS


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def cpu_isa_line() -> str:
    """Which instruction-set level the fused CPU kernels run at (csrc/cpu/isa.h): the best this
    CPU and build have, unless GRAPHATTN_CPU_ISA=baseline|avx2 asks for another."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.graphattn.cpu_isa)

        active, *levels = torch.ops.graphattn.cpu_isa()
    except (ImportError, OSError, AttributeError) as e:  # not built, or built before the op existed
        return f"cpu isa   unknown ({type(e).__name__}: {e})"
    except (ValueError, RuntimeError) as e:  # a bad GRAPHATTN_CPU_ISA
        return f"cpu isa   error: {str(e).splitlines()[0]}"
    forced = os.environ.get("GRAPHATTN_CPU_ISA")
    how = f"forced by GRAPHATTN_CPU_ISA={forced}" if forced and forced != "auto" else "the best available"
    return f"cpu isa   {active} ({how}; this CPU runs: {', '.join(levels)})"


def report() -> str:
    from . import __version__

    lines = [
        f"graphattn {__version__}",
        f"python    {platform.python_version()} ({platform.machine()})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton    {_triton_version()} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})",
        f"threads   {torch.get_num_threads()}",
        cpu_isa_line(),
    ]
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}    {torch.cuda.get_device_name(i)}")
        devices.append("cuda")
    else:
        lines.append("cuda      not available")
    for device in devices:
        lines.append(f"\nbackends for {device} tensors:")
        for name, backend in BACKENDS.items():
            if device not in backend.devices:
                why = f"serves {'/'.join(backend.devices)} only"
            else:
                why = backend.unavailable_reason(device)
            patterns = "/".join(backend.patterns)
            lines.append(f"  {name:<10} {'available' if why is None else 'unavailable'}  [{patterns}]"
                         + ("" if why is None else f"  -- {why}"))
    return "\n".join(lines)


def main():
    print(report())


if __name__ == "__main__":
    main()
