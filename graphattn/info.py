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


def report() -> str:
    from . import __version__

    lines = [
        f"graphattn {__version__}",
        f"python    {platform.python_version()} ({platform.machine()})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton    {_triton_version()} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})",
        f"threads   {torch.get_num_threads()}",
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
