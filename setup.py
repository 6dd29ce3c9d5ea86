"""Builds graphattn and its one extension, graphattn._C.

C++ (csrc/*.cpp, csrc/cpu/*.cpp) always; CUDA (csrc/cuda/*.cu and their
*_binding.cpp) as well when torch has CUDA, nvcc is found and there are CUDA
sources. Switches (environment):
  GRAPHATTN_SKIP_CUDA=1          build the C++ part only
  GRAPHATTN_CUDA_ARCHS="80;90"   compute capabilities to compile for
  GRAPHATTN_DEBUG=1              -O0 -g
Build against the installed torch: pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def want_cuda(cuda_sources):
    if os.environ.get("GRAPHATTN_SKIP_CUDA") == "1" or not cuda_sources:
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    debug = os.environ.get("GRAPHATTN_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for runs rows on all cores only when compiled with OpenMP.
    cxx = opt + ["-std=c++20", "-fopenmp", "-fopenmp-simd"]
    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    cuda = sources("csrc/cuda/*.cu")
    if want_cuda(cuda):
        archs = os.environ.get("GRAPHATTN_CUDA_ARCHS", "80;90").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        return cpp_extension.CUDAExtension(
            "graphattn._C",
            cpp + sources("csrc/cuda/*.cpp") + cuda,
            define_macros=[("GRAPHATTN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": opt + ["-std=c++17", "--use_fast_math"] + gencode},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "graphattn._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
    )


setup(
    name="graphattn",
    version="0.1.0",
    description="Fused edge-softmax attention over arbitrary edge lists (sparse GAT-style and dense Transformer)",
    packages=["graphattn", "graphattn.backends", "graphattn.nn", "graphattn.kernels"],
    # The Triton kernels live in kernels/ at the top of the repo and install as graphattn.kernels.
    package_dir={"graphattn.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "numpy"]},
    zip_safe=False,
)
