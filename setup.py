"""Builds graphattn and its one extension, graphattn._C.

C++ (csrc/*.cpp, csrc/cpu/*.cpp) always; CUDA (csrc/cuda/*.cu and their
*_binding.cpp) as well when torch has CUDA, nvcc is found and there are CUDA
sources. Switches (environment):
  GRAPHATTN_SKIP_CUDA=1          build the C++ part only
  GRAPHATTN_CUDA_ARCHS="80;90"   compute capabilities to compile for
  GRAPHATTN_DEBUG=1              -O0 -g
  CUDA_HOME                      the CUDA toolkit; when unset, found from the nvcc on PATH
Build against the installed torch: pip install --no-build-isolation -e .
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def is_cuda_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))


def cuda_home_from_nvcc(nvcc):
    """The toolkit root of `nvcc`, or None. `nvcc` may be a symlink, or a wrapper script outside
    the toolkit (as on some CI images: torch's guess, the parent of nvcc's folder, is then wrong),
    so ask nvcc itself: its dry run prints the folder of the real binary (_HERE_=<root>/bin)."""
    real = os.path.realpath(nvcc)
    candidates = [os.path.dirname(os.path.dirname(real))]
    try:
        run = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
        for line in (run.stdout + run.stderr).splitlines():
            m = re.match(r"#\$ (_HERE_|TOP)=(.*)$", line.strip())
            if m:
                folder = m.group(2).strip().strip('"')
                candidates.append(os.path.dirname(folder) if m.group(1) == "_HERE_" else folder)
    except (OSError, subprocess.SubprocessError):
        pass
    for home in candidates:
        if is_cuda_toolkit(home):
            return os.path.normpath(home)
    return None


def resolve_cuda_home():
    """Fix torch's guess of the CUDA toolkit when it is wrong and the user did not choose one:
    with CUDA_HOME/CUDA_PATH unset and no include/cuda_runtime_api.h under the guess, use the
    toolkit of the nvcc on PATH. Sets cpp_extension.CUDA_HOME (read when the build runs) and
    CUDA_HOME for the compilers it starts."""
    guess = cpp_extension.CUDA_HOME
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or guess is None or is_cuda_toolkit(guess):
        return  # the user's choice, no toolkit at all (C++ only), or a right guess
    nvcc = shutil.which("nvcc")
    home = cuda_home_from_nvcc(nvcc) if nvcc else None
    if home is None:
        # Better than the compiler's "cuda_runtime_api.h: No such file" halfway through the build.
        sys.exit(f"graphattn: torch has CUDA but {guess!r} is not a CUDA toolkit (no include/cuda_runtime_api.h) "
                 f"and the nvcc on PATH ({nvcc}) did not lead to one; set CUDA_HOME to the toolkit, or "
                 "GRAPHATTN_SKIP_CUDA=1 to build the C++ part only")
    print(f"graphattn: CUDA_HOME unset and torch's guess {guess!r} has no include/cuda_runtime_api.h; "
          f"using {home}, the toolkit of {nvcc}", file=sys.stderr)
    cpp_extension.CUDA_HOME = home
    os.environ["CUDA_HOME"] = home


def want_cuda(cuda_sources):
    if os.environ.get("GRAPHATTN_SKIP_CUDA") == "1" or not cuda_sources:
        return False
    import torch

    if torch.version.cuda is None:
        return False
    resolve_cuda_home()
    return cpp_extension.CUDA_HOME is not None


def extension():
    debug = os.environ.get("GRAPHATTN_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for runs rows on all cores only when compiled with OpenMP.
    cxx = opt + ["-std=c++20", "-fopenmp", "-fopenmp-simd"]
    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    cuda = sources("csrc/cuda/*.cu")
    # The headers too. With ninja (the default) the build always runs and ninja tracks headers
    # itself; without ninja setuptools rebuilds only when a file of `sources` or `depends` is newer
    # than the extension, so a change to a header alone would leave a stale build.
    headers = sources("csrc/*.h") + sources("csrc/*/*.h") + sources("csrc/cuda/*.cuh")
    if want_cuda(cuda):
        archs = os.environ.get("GRAPHATTN_CUDA_ARCHS", "80;90").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        return cpp_extension.CUDAExtension(
            "graphattn._C",
            cpp + sources("csrc/cuda/*.cpp") + cuda,
            depends=headers,
            define_macros=[("GRAPHATTN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": opt + ["-std=c++17", "--use_fast_math"] + gencode},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "graphattn._C", cpp, depends=headers, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
    )


class BuildExt(cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)):
    """One fixed object folder per torch build, whatever the install route. pip's editable and
    wheel builds otherwise compile in a fresh temporary folder, so `pip install -e .` followed by
    `setup.py build_ext --inplace` (make demo/test) compiled everything twice; with the folder
    fixed, ninja reuses the objects. Keyed by torch's version (+cpu, +cu130) so a CPU and a CUDA
    build of the same tree never share objects."""

    def finalize_options(self):
        super().finalize_options()
        import torch

        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}-torch{torch.__version__}"
        self.build_temp = os.path.join(HERE, "build", f"temp-{tag}")


setup(
    name="graphattn",
    version="0.1.0",
    description="Fused edge-softmax attention over arbitrary edge lists (sparse GAT-style and dense Transformer)",
    packages=["graphattn", "graphattn.backends", "graphattn.nn", "graphattn.kernels"],
    # The Triton kernels live in kernels/ at the top of the repo and install as graphattn.kernels.
    # (graphattn/kernels is a symlink to ../kernels, so the source tree itself, as `setup.py
    # develop` and PYTHONPATH=. use it, resolves graphattn.kernels too.)
    package_dir={"graphattn.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "numpy"]},
    zip_safe=False,
)
