# graphattn: `make demo` and `make test` set up everything they need on a fresh machine.
#
# They create .venv/, install torch (TORCH, default the CPU build torch==2.13.0 on a
# machine without a GPU), triton and the test tools, and build graphattn's C++ (and,
# where torch has CUDA and nvcc is found, CUDA) extension into the source tree.
# On a machine whose python already has a CUDA torch, use it instead of a venv:
#     make test VENV_PYTHON=python3 SETUP=skip

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TRITON ?= triton==3.6.0
VENV_PYTHON ?= $(VENV)/bin/python
SETUP ?= venv
PYTEST_ARGS ?=

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py
STAMP := $(VENV)/.graphattn-installed

.PHONY: demo test bench cuda-check clean

ifeq ($(SETUP),venv)
$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -q --upgrade pip
	$(VENV_PYTHON) -m pip install -q "$(TORCH)"
	$(VENV_PYTHON) -m pip install -q "$(TRITON)" ninja pybind11 numpy psutil tqdm matplotlib \
		pytest pytest-benchmark torch_geometric
	$(VENV_PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@
else
$(STAMP):
	$(VENV_PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	mkdir -p $(dir $@) && touch $@
endif

# (Re)build the extension in place whenever a C++/CUDA source changes (ninja: only what changed).
graphattn/_C.so: $(STAMP) $(CSRC)
	$(VENV_PYTHON) setup.py -q build_ext --inplace
	touch $@

demo: graphattn/_C.so
	$(VENV_PYTHON) examples/demo.py

test: graphattn/_C.so
	$(VENV_PYTHON) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

bench: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.cpu_vs_pyg

# Compile every CUDA source for sm_80 and sm_90 with plain nvcc (no GPU needed).
cuda-check:
	@srcs="$$(ls csrc/cuda/*.cu 2>/dev/null)"; \
	if [ -z "$$srcs" ]; then echo "cuda-check: no CUDA sources yet"; exit 0; fi; \
	for f in $$srcs; do \
		echo "nvcc $$f (sm_80, sm_90)"; \
		nvcc -std=c++17 -O3 -Icsrc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
			-c $$f -o /tmp/graphattn-cuda-check.o || exit 1; \
	done

clean:
	rm -rf build *.egg-info graphattn/_C*.so

# ---- GPU readiness without a GPU (benchmarks/README.md: "Kernel resources", "make gpu-check") ----
# kernel-resources: registers, spills, shared memory, occupancy on sm_90 of every CUDA kernel and
# of the Triton variants the launchers choose; rewrites benchmarks/results/kernel-resources-sm90.csv
# and its README table. kernel-resources-check (CI): fails on a spill or a stale CSV, writes nothing.
# Compiles are cached in ~/.cache/graphattn/kernel-resources (GRAPHATTN_CACHE_DIR moves it).
# gpu-check OUT=dir: the one command a GPU session runs, in the GPU image's python3 (no venv).
# gpu-check DRY=1 OUT=dir: its CPU rehearsal in this venv (CI), printing the GPU commands.
.PHONY: kernel-resources kernel-resources-check gpu-check
GPU_PYTHON ?= python3

kernel-resources: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.kernel_resources

kernel-resources-check: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.kernel_resources --check

ifeq ($(DRY),1)
gpu-check: graphattn/_C.so
	@test -n "$(OUT)" || { echo "make gpu-check DRY=1 OUT=dir: name the output directory"; exit 2; }
	$(VENV_PYTHON) -m benchmarks.gpu_check --dry --out $(OUT) --gpu-python $(GPU_PYTHON)
else
gpu-check:
	@test -n "$(OUT)" || { echo "make gpu-check OUT=dir: name the output directory"; exit 2; }
	$(GPU_PYTHON) -m benchmarks.gpu_check --out $(OUT)
endif
