"""Checks a CUDA build of graphattn without a GPU (make cuda-build runs it from outside the tree).

usage: python check_cuda_build.py TREE ARCHS     e.g. build/cuda-tree "80;90"

- torch is a CUDA build; graphattn and graphattn.kernels import from TREE (the installed route,
  not the current directory);
- graphattn._C registers CUDA kernels for the ops the cuda backend calls, and the backend
  reports no reason against itself;
- the extension holds machine code for every arch of ARCHS (cuobjdump, where it is found).
"""
import os
import shutil
import subprocess
import sys

tree, archs = os.path.realpath(sys.argv[1]), [a for a in sys.argv[2].split(";") if a]
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


import torch  # noqa: E402

check(torch.version.cuda is not None, f"torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda})")

import graphattn  # noqa: E402
import graphattn.kernels  # noqa: E402

for mod in (graphattn, graphattn.kernels):
    where = os.path.realpath(os.path.dirname(mod.__file__))
    check(where.startswith(tree + os.sep), f"{mod.__name__} imports from the CUDA tree ({where})")

from graphattn import _C  # noqa: E402

for op in ("graphattn::csr_attention_forward", "graphattn::csr_attention_backward"):
    check(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has a CUDA kernel")

from graphattn.backends.cuda import CudaBackend  # noqa: E402

reason = CudaBackend().unavailable_reason("cuda")
check(reason is None, f"the cuda backend finds its kernels ({reason or 'no reason against it'})")

# The arch list: cuobjdump beside the real nvcc (the nvcc on PATH may be a wrapper elsewhere).
nvcc = shutil.which("nvcc")
cuobjdump = shutil.which("cuobjdump")
if cuobjdump is None and nvcc is not None:
    dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ _HERE_="):
            candidate = os.path.join(line.split("=", 1)[1].strip(), "cuobjdump")
            cuobjdump = candidate if os.path.exists(candidate) else None
if cuobjdump is None:
    print("skip  no cuobjdump: the archs of the machine code are not checked")
else:
    listing = subprocess.run([cuobjdump, "--list-elf", _C.__file__], capture_output=True, text=True).stdout
    for arch in archs:
        check(f".sm_{arch}." in listing, f"machine code for sm_{arch} in {os.path.basename(_C.__file__)}")

sys.exit(f"{len(failures)} check(s) failed" if failures else 0)
