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
# What the tests, benchmarks and the demo need besides torch and triton (both environments).
TOOLS := ninja pybind11 numpy psutil tqdm matplotlib pytest pytest-benchmark hypothesis torch_geometric

# Editable install of this tree into the python $(1), which builds graphattn._C. pip's route
# (PEP 660, pyproject.toml) needs setuptools >= 70.1 or the `wheel` package; where neither is
# there (e.g. setuptools 65 alone, and no network to fetch wheel) setuptools' own
# `setup.py develop` does the same job.
editable_install = if $(1) -c 'import importlib.util as u; raise SystemExit(not (u.find_spec("wheel") or u.find_spec("setuptools.command.bdist_wheel")))' 2>/dev/null; \
	then $(1) -m pip install -q --no-build-isolation --no-deps -e .; \
	else echo "no wheel package and setuptools < 70.1: setup.py develop"; $(1) setup.py -q develop --no-deps; fi

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py
STAMP := $(VENV)/.graphattn-installed

.PHONY: demo test bench cuda-check cuda-build clean

ifeq ($(SETUP),venv)
$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -q --upgrade pip
	$(VENV_PYTHON) -m pip install -q "$(TORCH)"
	$(VENV_PYTHON) -m pip install -q "$(TRITON)" $(TOOLS)
	$(call editable_install,$(VENV_PYTHON))
	touch $@
else
$(STAMP):
	$(call editable_install,$(VENV_PYTHON))
	mkdir -p $(dir $@) && touch $@
endif

# (Re)build the extension in place whenever a C++/CUDA source changes (ninja: only what changed).
# On a fresh clone the install above has just built it: setup.py keeps the objects in one folder
# whatever the route, so here ninja finds nothing to compile and only the link runs (~2 s).
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

# ---------------------------------------------------------------------------
# make cuda-build: the CUDA build of graphattn, as the GPU machine will build it, on any
# machine with nvcc (no GPU needed). torch==2.11.0 from PyPI is the CUDA 13.0 build, the one
# the GPU image holds. It gets its own environment ($(CUDA_VENV), a few GB, installed once and
# kept like .venv) and its own copy of the tree ($(CUDA_TREE)): the extension is built in
# place, and graphattn/_C.so of this tree belongs to .venv's CPU build. The toolkit is found
# from nvcc by setup.py (no CUDA_HOME needed). Then: import it, check that the CUDA kernels are
# registered and compiled for every arch, and run the tests (CUDA_TESTS) against this build on
# the CPU, which also runs everything Python against torch 2.11.
#
# The copy is refreshed on every call (tracked and untracked, not ignored files, mtimes kept),
# its objects stay: ninja recompiles only what changed.
#
# Measured on the 2-core CI machine, clean clone (each step prints its own time):
#   environment 67 s (170 s with the download not cached and the machine busy; ~5 GB installed),
#   build for sm_80+sm_90 164 s, checks 2 s, tests (CUDA_TESTS) 138 s: 6 min 11 s in all.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH ?= torch==2.11.0
CUDA_ARCHS ?= 80;90
CUDA_TREE ?= build/cuda-tree
# Everything that runs graphattn's own code through torch 2.11 and this build: the cpu and
# reference backends, the Triton backend through graphattn.attention, autograd, torch.compile,
# opcheck, the nn layers, DDP, dispatch, errors. Left to `make test`, which runs them against the
# same sources: the CUDA kernels' emulation (it would compile them again, 1-2 min), the Triton
# kernels' own interpreter tests (same triton 3.6.0 in both environments), the fuzzer, the
# benchmark harness, the gpu-check rehearsal and the > 2**31-element CPU kernel tests (9 GB):
# none depends on torch's version, and together they take most of `make test`'s 9 minutes of tests.
CUDA_TESTS ?= tests --ignore=tests/test_cuda_emulation.py --ignore=tests/test_triton_csr_kernels.py \
	--ignore=tests/test_triton_dense_kernels.py --ignore=tests/test_fuzz.py --ignore=tests/test_benchmarks.py \
	--ignore=tests/test_gpu_check.py --ignore=tests/test_large_sizes.py
CUDA_PYTHON := $(abspath $(CUDA_VENV))/bin/python
CUDA_STAMP := $(CUDA_VENV)/.graphattn-tools-installed
# $(call timed,NAME,COMMAND): COMMAND, then how long it took (CI logs keep each step's time).
timed = start=$$(date +%s); ( $(2) ); rc=$$?; echo "cuda-build: $(1) took $$(($$(date +%s) - start)) s"; exit $$rc

# pip and setuptools stay as the venv brings them (pip 23.2 / setuptools 65 with Python 3.11,
# no wheel): the old install route (setup.py develop) is then built on every CI run, .venv's
# current pip (PEP 660) being the new one.
$(CUDA_STAMP):
	$(call timed,environment,$(PYTHON) -m venv $(CUDA_VENV) && \
		$(CUDA_PYTHON) -m pip install -q "$(CUDA_TORCH)" "$(TRITON)" $(TOOLS))
	touch $@

cuda-build: $(CUDA_STAMP)
	@command -v nvcc >/dev/null || { echo "cuda-build: no nvcc on PATH"; exit 1; }
	mkdir -p $(CUDA_TREE)
	find $(CUDA_TREE) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(CUDA_TREE)
	$(call timed,build,cd $(CUDA_TREE) && export GRAPHATTN_CUDA_ARCHS="$(CUDA_ARCHS)" && \
		$(call editable_install,$(CUDA_PYTHON)))
	$(call timed,checks,cd / && $(CUDA_PYTHON) $(CURDIR)/.ci/check_cuda_build.py $(abspath $(CUDA_TREE)) "$(CUDA_ARCHS)")
	$(call timed,tests,cd $(CUDA_TREE) && $(CUDA_PYTHON) -m pytest $(CUDA_TESTS) -q -p no:cacheprovider $(PYTEST_ARGS))

clean:
	rm -rf build *.egg-info graphattn/_C*.so

# ---- GPU readiness without a GPU (benchmarks/README.md: "Kernel resources", "make gpu-check") ----
# kernel-resources: registers, spills, shared memory, occupancy on sm_90 of every CUDA kernel and
# of the Triton variants the launchers choose; rewrites benchmarks/results/kernel-resources-sm90.csv
# and its README table. kernel-resources-check (CI): fails on a spill of more than KERNEL_SPILL_LIMIT
# bytes, a compile error or a stale CSV, writes nothing. The limit is not 0: a few CUDA and Triton CSR
# variants spill 4-36 bytes of cold values at an occupancy step, which only GPU timing can weigh
# against the lost occupancy of forcing them out (benchmarks/README.md, "Spills").
# Compiles are cached in ~/.cache/graphattn/kernel-resources (GRAPHATTN_CACHE_DIR moves it).
# gpu-check OUT=dir: the one command a GPU session runs, in the GPU image's python3 (no venv).
# gpu-check DRY=1 OUT=dir: its CPU rehearsal in this venv (CI), printing the GPU commands.
.PHONY: kernel-resources kernel-resources-check gpu-check
GPU_PYTHON ?= python3

kernel-resources: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.kernel_resources

KERNEL_SPILL_LIMIT ?= 64
kernel-resources-check: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.kernel_resources --check --max-spill-bytes $(KERNEL_SPILL_LIMIT)

ifeq ($(DRY),1)
gpu-check: graphattn/_C.so
	@test -n "$(OUT)" || { echo "make gpu-check DRY=1 OUT=dir: name the output directory"; exit 2; }
	$(VENV_PYTHON) -m benchmarks.gpu_check --dry --out $(OUT) --gpu-python $(GPU_PYTHON)
else
gpu-check:
	@test -n "$(OUT)" || { echo "make gpu-check OUT=dir: name the output directory"; exit 2; }
	$(GPU_PYTHON) -m benchmarks.gpu_check --out $(OUT)
endif

# ---- DGL baseline (benchmarks/README.md, "DGL baseline") ----
# make dgl-env: .venv-dgl/, the environment of benchmarks/dgl_worker.py (graphattn's extension
# is built for .venv's torch and cannot load there). A script's environment, not a CI dependency.
# DGL 2.1.0 is the newest DGL on PyPI, a CPU-only build; it needs torch 2.2.x (PyPI's torch 2.2.1
# is the CUDA 12.1 build with its nvidia-* packages, ~5 GB installed, and runs on the CPU),
# torchdata 0.7.1 (`import dgl` imports graphbolt, which needs torchdata's datapipes, gone in
# torchdata >= 0.8), and pandas, pydantic and pyyaml, which it imports without declaring them;
# numpy 1.x (torch 2.2 was built against it). Working set, resolved on 2026-11 (besides those):
# numpy 1.26.4, pandas 3.0.6, pydantic 2.14.4, PyYAML 6.0.4, scipy 1.17.1, psutil 7.2.2.
DGL_VENV ?= .venv-dgl
DGL_PACKAGES ?= dgl==2.1.0 torch==2.2.1 torchdata==0.7.1 numpy==1.26.4 pandas pydantic pyyaml psutil
.PHONY: dgl-env
dgl-env: $(DGL_VENV)/.dgl-installed

$(DGL_VENV)/.dgl-installed:
	$(PYTHON) -m venv $(DGL_VENV)
	$(DGL_VENV)/bin/python -m pip install -q $(DGL_PACKAGES)
	cd / && DGLBACKEND=pytorch $(abspath $(DGL_VENV))/bin/python -c 'import dgl, torch; print("dgl", dgl.__version__, "torch", torch.__version__)'
	touch $@

# make bench-layers: issue 14's comparison in one command, graphattn.nn vs PyG vs DGL (DGL's
# environment is made first if absent): `benchmarks.layers --layer` (GATConv, GATv2Conv,
# TransformerConv forward + backward, N = 100,000, E = 1.6M uniform, F = 128, 4 heads x 32 channels)
# and the training steps of `benchmarks.layers` at ogbn-arxiv size, float32 and bfloat16, ROUNDS
# rounds each (the providers alternate; every measurement in a fresh process; the summaries and
# the README take each provider's best round); rows appended to benchmarks/results/<device>.csv,
# then the README's figures regenerated from it. Run it on a quiet machine. LAYERS_ARGS adds flags
# to both runs (e.g. --device cpu, --threads 2, --models gat,gatv2).
ROUNDS ?= 3
LAYERS_ARGS ?=
.PHONY: bench-layers
bench-layers: graphattn/_C.so $(DGL_VENV)/.dgl-installed
	$(VENV_PYTHON) -m benchmarks.layers --layer --rounds $(ROUNDS) --dgl-python $(DGL_VENV)/bin/python $(LAYERS_ARGS)
	$(VENV_PYTHON) -m benchmarks.layers --rounds $(ROUNDS) --dgl-python $(DGL_VENV)/bin/python $(LAYERS_ARGS)
	$(VENV_PYTHON) -m benchmarks.readme_figures

# make bench-dense-segments: issue 14's dense and segment measurements in one command, on a quiet CPU
# machine (benchmarks/README.md, "make bench-dense-segments"): the segment crossover (rewrites
# graphattn/segment_crossover.py from benchmarks/results/crossover/<device>.csv), the dense cases of
# the N and dtype sweeps (graphattn vs SDPA on the same data, SDPA on its own layout, FlexAttention),
# the density and segments sweeps, into benchmarks/results/<device>.csv; then the PNGs and the
# README's figures. BENCH_ARGS adds flags to the scaling runs (e.g. --threads 2).
BENCH_ARGS ?=
.PHONY: bench-dense-segments
bench-dense-segments: graphattn/_C.so
	$(VENV_PYTHON) -m benchmarks.segment_crossover --measure
	$(VENV_PYTHON) -m benchmarks.scaling --device cpu --sweep n,dtype \
		--providers graphattn-sdpa,torch-sdpa-blhd,torch-sdpa,flex $(BENCH_ARGS)
	$(VENV_PYTHON) -m benchmarks.scaling --device cpu --sweep density,segments $(BENCH_ARGS)
	$(VENV_PYTHON) -c "from benchmarks import common, plot; plot.plot_all(common.default_csv('cpu'))"
	$(VENV_PYTHON) -m benchmarks.readme_figures
