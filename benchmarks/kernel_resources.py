"""Registers, spills, shared memory and theoretical occupancy of every GPU kernel, for sm_90
(H100 / H200), without a GPU.

    python -m benchmarks.kernel_resources              # writes benchmarks/results/kernel-resources-sm90.csv
                                                       # and the table in benchmarks/README.md
    python -m benchmarks.kernel_resources --check      # CI: non-zero exit on any spill, compile error or
                                                       # a committed CSV that no longer matches the code
    python -m benchmarks.kernel_resources --list       # the Triton variants it would compile, no compile

CUDA kernels (csrc/cuda/*.cu): each file is compiled for sm_90 alone with nvcc, with the flags
setup.py gives nvcc (plus those torch's CUDAExtension adds), `--resource-usage` reports each
entry function's registers, stack frame, spill stores/loads and static shared memory, and
`cuobjdump -elf` gives its `__launch_bounds__` (EIATTR_MAX_THREADS), which is the block size every
launcher in csr_attention.cuh launches it with. Every instantiated CUDA kernel is reachable by
some input shape (csr_attention.cuh's with_config dispatch), so every one is reported.

Triton kernels (kernels/*.py): the launchers themselves are called on small CPU tensors with
`JITFunction.run` and `Autotuner.run` replaced by recorders, so the variants recorded are exactly
the (constexpr, num_warps, num_stages) choices the launchers and the autotuner's pruning make for
those calls; each is then compiled by Triton's own compiler for GPUTarget("cuda", 90, 32) and
the ptxas report (`-v`, which Triton always passes) is read. Autotuned kernels contribute every
configuration that survives pruning: on the GPU the autotuner compiles and runs all of them.
The calls (CASES below) cover every kernel of kernels/*.py; the variant space itself is
unbounded (head dims and head counts are compile-time constants), so they cover it at its
register-heavy corners: each padded head dim at the full per-program row budget, a small row,
GAT's D = 1, every score kind / bias / dropout / alpha switch, bfloat16 and float32 (float16
compiles to the same register allocation as bfloat16 up to conversion instructions; --full
adds it), every degree class and the hub merge kernels, every dense and segment autotuning entry
at each head-dim bucket, causal and not.

Theoretical occupancy follows CUDA's cuda_occupancy.h for compute capability 9.0: 65,536
registers per SM in 4 sub-partitions, allocated per warp in units of 256; 228 KiB of shared
memory per SM (the largest carveout), 1 KiB reserved per block, allocated in units of 128 bytes,
227 KiB at most per block; 64 warps and 32 blocks per SM.

Results are cached (``--cache-dir``, default ~/.cache/graphattn/kernel-resources): a CUDA file by
the hash of csrc/ and the compiler, a Triton variant by Triton's own compilation key (source,
constexprs, options, compiler versions), so an unchanged kernel is not compiled twice.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from .readme_block import replace_block
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "kernel-resources-sm90.csv"
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- kernel-resources:begin -->", "<!-- kernel-resources:end -->"
ARCH = 90

# ---------------------------------------------------------------------------
# sm_90 occupancy (cuda_occupancy.h: cudaOccMaxBlocksPerSMRegsLimit / SmemLimit / WarpsLimit)
# ---------------------------------------------------------------------------
SM90 = dict(
    regs_per_sm=65536, regs_per_block=65536, reg_granularity=256, sub_partitions=4, max_regs_per_thread=255,
    smem_per_sm=233472, smem_per_block_optin=232448, smem_reserved_per_block=1024, smem_granularity=128,
    max_warps_per_sm=64, max_blocks_per_sm=32, warp_size=32,
)
LOW_OCCUPANCY = 0.25  # the README lists the kernels below this


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(registers: int, threads: int, smem_bytes: int, sm: dict = SM90) -> dict:
    """Blocks and warps per SM, occupancy (active warps / max warps) and what limits it, for a
    kernel of `registers` per thread launched with `threads` per block and `smem_bytes` of shared
    memory per block (static + dynamic, without the driver's reserved KiB)."""
    warps = -(-threads // sm["warp_size"])
    limits = {"blocks": sm["max_blocks_per_sm"], "warps": sm["max_warps_per_sm"] // warps}
    reg_per_warp = _round_up(max(registers, 1) * sm["warp_size"], sm["reg_granularity"])
    if (registers > sm["max_regs_per_thread"] or reg_per_warp * warps > sm["regs_per_block"]
            or reg_per_warp * _round_up(warps, sm["sub_partitions"]) > sm["regs_per_block"]):
        limits["registers"] = 0
    else:
        per_sub = (sm["regs_per_sm"] // sm["sub_partitions"]) // reg_per_warp
        limits["registers"] = per_sub * sm["sub_partitions"] // warps
    smem = _round_up(smem_bytes + sm["smem_reserved_per_block"], sm["smem_granularity"])
    if smem > sm["smem_per_block_optin"] + sm["smem_reserved_per_block"]:
        limits["shared memory"] = 0
    else:
        limits["shared memory"] = sm["smem_per_sm"] // smem
    blocks = min(limits.values())
    # The hardware's own per-SM limits first: when one of them binds, the resources are not the cause.
    limiter = next(k for k in ("warps", "blocks", "registers", "shared memory") if limits[k] == blocks)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "occupancy": blocks * warps / sm["max_warps_per_sm"], "limiter": limiter}


# ---------------------------------------------------------------------------
# ptxas reports
# ---------------------------------------------------------------------------
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """{entry function: {registers, stack_bytes, spill_stores_bytes, spill_loads_bytes, static_smem_bytes}}
    from ptxas -v / nvcc --resource-usage output (device functions that are not entries are ignored)."""
    entries, current, props_of = {}, None, None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = m.group(1)
            entries[current] = {"registers": None, "stack_bytes": 0, "spill_stores_bytes": 0,
                                "spill_loads_bytes": 0, "static_smem_bytes": 0}
            continue
        m = _PROPS.search(line)
        if m:
            props_of = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and props_of in entries:
            e = entries[props_of]
            e["stack_bytes"], e["spill_stores_bytes"], e["spill_loads_bytes"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m and current in entries:
            entries[current]["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            entries[current]["static_smem_bytes"] = int(s.group(1)) if s else 0
    return entries


# ---------------------------------------------------------------------------
# CUDA kernels
# ---------------------------------------------------------------------------
# What setup.py passes nvcc (extra_compile_args["nvcc"], without -gencode) and what torch's
# CUDAExtension adds to every nvcc call; they change code generation, hence the registers.
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-DGRAPHATTN_WITH_CUDA=1",
              "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
              f"-gencode=arch=compute_{ARCH},code=sm_{ARCH}"]


def find_tool(name: str):
    """`name` (nvcc, cuobjdump) on PATH, else beside the real nvcc, else the copy Triton ships."""
    path = shutil.which(name)
    if path:
        return path
    toolkit = cuda_home()
    if toolkit and (Path(toolkit) / "bin" / name).exists():
        return str(Path(toolkit) / "bin" / name)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return None


def cuda_home():
    """The toolkit root: CUDA_HOME, else the TOP= that `nvcc --dryrun` reports (nvcc on PATH may be
    a wrapper script outside the toolkit, so its own location says nothing)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return os.path.realpath(m.group(1).strip()) if m else None


def _demangle(names):
    filt = shutil.which("c++filt")
    if not filt or not names:
        return dict(zip(names, names))
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else dict(zip(names, names))


def _short_cuda_name(demangled: str) -> tuple:
    """'ns::(anonymous namespace)::forward_rows_kernel<ns::Cfg<float, 8, 1, 2> >(args)' ->
    ('forward_rows_kernel', 'Cfg<float, 8, 1, 2>')."""
    text = re.sub(r"\b[\w]+::|\(anonymous namespace\)::", "", demangled)
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):  # the argument list is the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    head = re.sub(r"^void\s+", "", text[:cut].strip())  # a template kernel's name carries its return type
    if "<" in head:
        name, targs = head.split("<", 1)
        return name, targs[:-1].strip()
    return head, ""


def _max_threads(cubin: Path, cuobjdump: str) -> dict:
    """{mangled entry: x*y*z of EIATTR_MAX_THREADS} from the cubin's .nv.info.<entry> sections."""
    text = subprocess.run([cuobjdump, "-elf", str(cubin)], capture_output=True, text=True, check=True).stdout
    out, current, want = {}, None, False
    for line in text.splitlines():
        if line.startswith(".nv.info."):
            current, want = line[len(".nv.info."):].strip(), False
        elif "EIATTR_MAX_THREADS" in line:
            want = True
        elif want and line.strip().startswith("Value:") and current:
            dims = [int(v, 16) for v in line.split(":", 1)[1].split()]
            prod = 1
            for d in dims:
                prod *= d
            out[current] = prod
            want = False
    return out


def _local_includes(sources) -> list:
    """The sources and every file they #include "..." from the repository, recursively (what the
    compile depends on besides the toolkit; CPU-only headers do not invalidate the cache)."""
    seen, todo = set(), [Path(p).resolve() for p in sources]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(errors="replace"), re.M):
            for base in (path.parent, ROOT / "csrc"):
                if (base / inc).exists():
                    todo.append((base / inc).resolve())
                    break
    return sorted(seen)


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(Path(p).relative_to(ROOT)).encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _compile_cuda_file(cu: Path, workdir: Path, nvcc: str, cuobjdump: str) -> dict:
    cubin = workdir / (cu.stem + ".cubin")
    cmd = [nvcc, *NVCC_FLAGS, f"-I{ROOT / 'csrc'}", "--resource-usage", "-cubin", str(cu), "-o", str(cubin)]
    env = dict(os.environ)
    home = cuda_home()
    if home:
        env.setdefault("CUDA_HOME", home)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"file": cu.name, "error": (proc.stdout + proc.stderr)[-3000:], "seconds": seconds, "cmd": cmd}
    entries = parse_ptxas(proc.stdout + proc.stderr)
    threads = _max_threads(cubin, cuobjdump) if entries else {}
    return {"file": cu.name, "entries": entries, "threads": threads, "seconds": seconds}


def cuda_rows(cache_dir: Path, jobs: int, log=print) -> tuple:
    """(rows, errors) for every entry function of csrc/cuda/*.cu compiled for sm_90."""
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if not nvcc or not cuobjdump:  # reported, not an error: the committed rows are still checked
        log(f"CUDA kernels not compiled here: {'nvcc' if not nvcc else 'cuobjdump'} not found")
        return [], []
    lines = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    version = next((x.split("release", 1)[1].strip() for x in lines if "release" in x), lines[-1] if lines else "?")
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    deps = _local_includes(sources)
    key = hashlib.sha256((_hash_files(deps) + version + " ".join(NVCC_FLAGS)).encode()).hexdigest()[:24]
    cached = cache_dir / "cuda" / f"{key}.json"
    if cached.exists():
        results = json.loads(cached.read_text())
        log(f"CUDA: {len(sources)} files from the cache ({cached})")
    else:
        work = cache_dir / "cuda" / key
        work.mkdir(parents=True, exist_ok=True)
        t0, cpu0 = time.perf_counter(), _children_cpu_s()
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(lambda cu: _compile_cuda_file(cu, work, nvcc, cuobjdump), sources))
        each = ", ".join(f"{r['file']} {r['seconds']:.0f} s" for r in results)
        log(f"CUDA: compiled {len(sources)} files for sm_{ARCH} in {time.perf_counter() - t0:.0f} s, "
            f"{_children_cpu_s() - cpu0:.0f} CPU-s ({each})")
        if not any("error" in r for r in results):
            cached.write_text(json.dumps(results))
        shutil.rmtree(work, ignore_errors=True)
    rows, errors = [], []
    for r in results:
        if "error" in r:
            errors.append(f"nvcc failed on {r['file']}:\n{r['error']}")
            continue
        names = _demangle(list(r["entries"]))
        for mangled, e in r["entries"].items():
            kernel, variant = _short_cuda_name(names[mangled])
            threads = r["threads"].get(mangled)
            row = {"kind": "cuda", "family": "csr", "kernel": kernel,
                   "dtype": _cuda_dtype(r["file"], variant), "variant": variant, "num_warps": "",
                   "num_stages": "", "threads": threads or "", **e, "dynamic_smem_bytes": 0,
                   "case": f"csrc/cuda/{r['file']}", "toolchain": f"nvcc {version}"}
            if threads:
                row["num_warps"] = -(-threads // 32)
                row.update(occupancy(e["registers"], threads, e["static_smem_bytes"]))
            else:  # no __launch_bounds__: the block size is not in the binary
                row["limiter"] = "block size unknown (no __launch_bounds__)"
            rows.append(row)
    return rows, errors


def _cuda_dtype(filename: str, variant: str) -> str:
    for token, name in (("__nv_bfloat16", "bfloat16"), ("__half", "float16"), ("float", "float32")):
        if variant.startswith(f"Cfg<{token}"):
            return name
    m = re.match(r"\w+_(float|half|bfloat16)\.cu$", filename)
    return {"float": "float32", "half": "float16", "bfloat16": "bfloat16"}.get(m.group(1), "") if m else ""


# ---------------------------------------------------------------------------
# Triton kernels: the calls whose launches are recorded
# ---------------------------------------------------------------------------
# (H, D, Dv): D_PAD at the full per-program row budget (heads x padded head dim = 512, the
# heuristic's cap: the largest tiles and rows a program ever holds), one small row, and GAT's D = 1.
CSR_GEOMETRIES = [(32, 16, 16), (16, 32, 32), (8, 64, 64), (4, 128, 128), (2, 256, 256), (1, 32, 32)]
# The dot product with bias sits between the plain dot product and the full additive-score case
# (which has bias, dropout and alpha too): checked at the typical and the widest rows only, to keep
# the cold compile within CI's minutes.
CSR_BIAS_GEOMETRIES = [(8, 64, 64), (16, 32, 32), (2, 256, 256)]
GAT_GEOMETRY = (8, 1, 64)
DENSE_HEAD_DIMS = (64, 128, 256)  # one per autotuning bucket, at its largest (the most registers)
DENSE_LEN = 8192  # long enough that the autotuner's pruning keeps every table entry


def cases(full: bool = False) -> list:
    """(family, description, callable(kernels) -> None): each calls one launcher pair."""
    dtypes = ("bfloat16", "float32") + (("float16",) if full else ())
    out = []
    for dt in dtypes:
        for h, d, dv in CSR_GEOMETRIES:
            out.append(("csr", f"csr dot {dt} H={h} D={d}", _csr_call(dt, h, d, dv, "dot")))
            if (h, d, dv) in CSR_BIAS_GEOMETRIES:
                out.append(("csr", f"csr dot+bias+lse {dt} H={h} D={d}", _csr_call(dt, h, d, dv, "dot", bias=True)))
            out.append(("csr", f"csr gatv2+bias+dropout+alpha {dt} H={h} D={d}",
                        _csr_call(dt, h, d, dv, "gatv2", bias=True, dropout=True, alpha=True)))
        h, d, dv = GAT_GEOMETRY
        out.append(("csr", f"csr gat+dropout+alpha {dt} H={h} Dv={dv}",
                    _csr_call(dt, h, d, dv, "gat", dropout=True, alpha=True)))
        for d in DENSE_HEAD_DIMS:
            for causal in (False, True):
                out.append(("dense", f"dense {dt} D={d}{' causal' if causal else ''}", _dense_call(dt, d, causal)))
            out.append(("segment", f"segment {dt} D={d}", _segment_call(dt, d)))
    return out


def _torch_dtype(name):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def _csr_graph():
    """A small CSR with rows in every degree class, an empty row and hub rows (degree > HUB_CHUNK,
    so the hub chunks and merge kernels run), and its transpose."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = 48
    deg = torch.tensor([0, 2, 3, 9, 15, 30, 200, 700] + [5] * (n - 8))
    dst = torch.repeat_interleave(torch.arange(n), deg)
    src = torch.randint(0, n, (dst.numel(),), generator=g)
    src[: 600] = 7  # a source hub too, for the dK/dV pass
    e = dst.numel()
    order = torch.argsort(dst, stable=True)
    rowptr = torch.zeros(n + 1, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(deg, 0)
    t_order = torch.argsort(src, stable=True)
    colptr = torch.zeros(n + 1, dtype=torch.int64)
    colptr[1:] = torch.cumsum(torch.bincount(src, minlength=n), 0)
    return dict(n=n, e=e, rowptr=rowptr, col=src[order], eid=order, colptr=colptr, row_t=dst[t_order],
                eid_t=t_order)


def _csr_call(dtype, h, d, dv, score, bias=False, dropout=False, alpha=False):
    def call(kern):
        import torch

        ca = kern["csr_attention"]
        gr = _csr_graph()
        dt, n, e = _torch_dtype(dtype), gr["n"], gr["e"]
        plan = ca.build_csr_plan(gr["rowptr"], gr["colptr"])
        q = torch.randn(n, h, d).to(dt)
        k, v = torch.randn(n, h, d).to(dt), torch.randn(n, h, dv).to(dt)
        b = torch.randn(e, h).to(dt) if bias else None
        csr = (gr["rowptr"], gr["col"], gr["eid"])
        csr_t = (gr["colptr"], gr["row_t"], gr["eid_t"])
        if score == "dot" and not dropout and not alpha:
            out, lse = ca.csr_attention_forward(q, k, v, *csr, b, 0.125, plan=plan)
            glse = torch.randn(n, h) if bias else None
            ca.csr_attention_backward(torch.randn(n, h, dv).to(dt), glse, q, k, v, b, out, lse, *csr, *csr_t,
                                      0.125, bias, plan=plan)
            return
        att = torch.randn(h, d) if score == "gatv2" else None
        seed = torch.tensor([1, 2], dtype=torch.int64) if dropout else None
        p = 0.1 if dropout else 0.0
        out, lse, _ = ca.csr_scored_attention_forward(q, k, v, *csr, b, att, seed, score, 1.0, 0.2, p, alpha,
                                                      plan=plan)
        ga = torch.randn(e, h) if alpha else None
        ca.csr_scored_attention_backward(torch.randn(n, h, dv).to(dt), torch.randn(n, h), ga, q, k, v, b, att, seed,
                                         out, lse, *csr, *csr_t, score, 1.0, 0.2, p, bias, score == "gatv2",
                                         plan=plan)
    return call


def _dense_call(dtype, d, causal):
    def call(kern):
        import torch

        da = kern["dense_attention"]
        dt = _torch_dtype(dtype)
        q = torch.empty(1, DENSE_LEN, 2, d, dtype=dt)  # H = 2: an H of 1 would be compiled in as a constant
        out, lse = da.dense_attention_forward(q, q, q, None, causal)
        da.dense_attention_backward(torch.empty_like(out), None, q, q, q, out, lse, None, causal)
    return call


def _segment_call(dtype, d):
    def call(kern):
        import torch

        da = kern["dense_attention"]
        dt = _torch_dtype(dtype)
        ptr = torch.tensor([0, 100, 356, 420], dtype=torch.int64)
        q = torch.empty(420, 2, d, dtype=dt)
        plan = da.build_segment_plan(ptr)
        out, lse = da.segment_attention_forward(q, q, q, ptr, None, plan=plan)
        da.segment_attention_backward(torch.empty_like(out), torch.zeros_like(lse), q, q, q, out, lse, ptr, None,
                                      plan=plan)
    return call


# ---------------------------------------------------------------------------
# Triton: recording the launches, compiling them
# ---------------------------------------------------------------------------
def _import_kernels():
    """graphattn.kernels.* compiled for the GPU (not through Triton's interpreter)."""
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton" in sys.modules:
        raise RuntimeError("triton was imported with TRITON_INTERPRET=1: run this script in its own process")
    os.environ.pop("TRITON_INTERPRET", None)
    import importlib

    names = [p.stem for p in sorted((ROOT / "kernels").glob("*.py")) if not p.stem.startswith("_")]
    return {n: importlib.import_module(f"graphattn.kernels.{n}") for n in names}


def launched_kernels(src: str) -> list:
    """Names of the @triton.jit functions of a kernels/*.py source that are launched (fn[grid], or
    wrapped by triton.autotune(...)(fn)), not only called from other kernels."""
    names = re.findall(r"@triton\.jit\s*(?:\([^)]*\))?\s*def\s+(\w+)", src)
    return [n for n in names if re.search(rf"\b{re.escape(n)}\s*\[", src)
            or re.search(rf"\)\(\s*{re.escape(n)}\s*\)", src)]


def jit_kernels(kern: dict) -> dict:
    """{(module stem, name): JITFunction} of every launched kernel of kernels/*.py."""
    return {(stem, name): getattr(mod, name) for stem, mod in kern.items()
            for name in launched_kernels(Path(mod.__file__).read_text())}


def record_variants(full: bool = False, log=print) -> tuple:
    """Run every case's launchers with recording hooks: ({variant key: spec}, errors)."""
    kern = _import_kernels()
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", ARCH, 32))
    names = {id(fn): key for key, fn in jit_kernels(kern).items()}
    specs, errors, current = {}, [], {"case": None, "family": None}

    def jit_run(self, *args, grid, warmup, **kwargs):
        # JITFunction.run up to the compile (triton 3.6), with this target instead of the driver's.
        kwargs["debug"] = kwargs.get("debug", self.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        stem, name = names.get(id(self), (self.__module__.rsplit(".", 1)[-1], self.__name__))
        # Declared tl.constexpr parameters name the variant; an int argument equal to 1 is also
        # compiled in as a constant (Triton's specialisation), which the signature key keeps.
        const = {self.arg_names[path[0]]: val for path, val in constexprs.items()
                 if len(path) == 1 and self.params[path[0]].is_constexpr}
        spec = {"module": stem, "fn": name, "signature": signature, "constexprs": constexprs, "attrs": attrs,
                "options": dict(options.__dict__), "const_names": const, "case": current["case"],
                "family": current["family"]}
        key = json.dumps([stem, name, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                          sorted((str(k), repr(v)) for k, v in attrs.items()),
                          sorted((k, repr(v)) for k, v in options.__dict__.items())])
        if key in specs:
            specs[key]["cases"] += 1
        else:
            spec["cases"] = 1
            specs[key] = spec
        return None

    def autotune_run(self, *args, **kwargs):
        # Every configuration that survives the pruning is compiled (and timed) on the device.
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
        for config in configs:
            self.fn.run(*args, **kwargs, **config.all_kwargs())
        self.nargs = None

    saved = (JITFunction.run, Autotuner.run)
    JITFunction.run, Autotuner.run = jit_run, autotune_run
    try:
        for family, desc, call in cases(full):
            current.update(case=desc, family=family)
            try:
                call(kern)
            except Exception as exc:  # noqa: BLE001  (reported; the other cases go on)
                errors.append(f"{desc}: {type(exc).__name__}: {exc}")
    finally:
        JITFunction.run, Autotuner.run = saved
    launched = {(s["module"], s["fn"]) for s in specs.values()}
    for key in jit_kernels(kern):
        if key not in launched:
            errors.append(f"Triton kernel {key[0]}.{key[1]} is launched by kernels/{key[0]}.py but by none of "
                          "the cases of benchmarks/kernel_resources.py: add a case that reaches it")
    return specs, errors


_WORKER_KERNELS = {}


def _compile_spec(spec: dict, cache_dir: str) -> dict:
    """Compile one variant for sm_90 (in a worker process); its ptxas report and Triton metadata."""
    os.environ.pop("TRITON_INTERPRET", None)
    # Triton's own cache (every IR of every variant, ~0.5 MB each) is not kept: the results are.
    os.environ["TRITON_CACHE_DIR"] = str(Path(cache_dir) / "triton-tmp" / str(os.getpid()))
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.compiler.compiler import get_cache_key
    from triton._C.libtriton import get_cache_invalidating_env_vars

    if not _WORKER_KERNELS:
        _WORKER_KERNELS.update(_import_kernels())
    fn = getattr(_WORKER_KERNELS[spec["module"]], spec["fn"])
    target = GPUTarget("cuda", ARCH, 32)
    backend = make_backend(target)
    src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
    options = backend.parse_options(spec["options"])
    # Triton's own compilation key (source and dependencies, constexprs, options, ptxas version, env).
    key = hashlib.sha256(get_cache_key(src, backend, options, get_cache_invalidating_env_vars()).encode()).hexdigest()
    result_file = Path(cache_dir) / "triton-results" / f"{key}.json"
    if result_file.exists():
        return {**json.loads(result_file.read_text()), "cached": True}
    t0 = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # so that ptxas runs and reports (its log is not cached)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
    shutil.rmtree(os.environ["TRITON_CACHE_DIR"], ignore_errors=True)  # this variant's IRs, as they come
    entries = parse_ptxas(buf.getvalue())
    if len(entries) != 1:
        return {"error": f"expected one entry in the ptxas report, got {list(entries)}"}
    md = compiled.metadata
    out = {**next(iter(entries.values())), "kernel": spec["fn"], "num_warps": md.num_warps, "num_stages": md.num_stages,
           "dynamic_smem_bytes": md.shared, "ptxas_target": _ENTRY.search(buf.getvalue()).group(2),
           "seconds": time.perf_counter() - t0}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(out))
    return {**out, "cached": False}


def _children_cpu_s() -> float:
    """CPU seconds of the finished child processes (the compile workers): a measure of the compile
    cost that does not depend on how busy the machine is."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _variant_text(spec: dict) -> str:
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in spec["const_names"].items())


def _triton_dtype(spec: dict) -> str:
    """The input dtype of a variant: its 16-bit float pointers if any (float32 scratch and statistics
    pointers sit beside them), else float32."""
    kinds = {t[1:] for t in spec["signature"].values() if isinstance(t, str) and t.startswith("*")}
    for t, name in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        if t in kinds:
            return name
    return ""


def triton_rows(cache_dir: Path, jobs: int, full: bool = False, log=print) -> tuple:
    import triton

    t0 = time.perf_counter()
    specs, errors = record_variants(full, log)
    log(f"Triton: {len(specs)} variants recorded from {len(cases(full))} launcher calls in "
        f"{time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    items = list(specs.values())
    import multiprocessing as mp

    # spawn: the parent ran torch ops (OpenMP) and is not safe to fork
    cpu0 = _children_cpu_s()
    try:
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_compile_spec, items, [str(cache_dir)] * len(items)))
    finally:
        shutil.rmtree(cache_dir / "triton-tmp", ignore_errors=True)
    fresh = sum(1 for r in results if not r.get("cached") and "error" not in r)
    log(f"Triton: {len(items)} variants for sm_{ARCH} in {time.perf_counter() - t1:.0f} s with {jobs} processes, "
        f"{_children_cpu_s() - cpu0:.0f} CPU-s ({fresh} compiled, {len(items) - fresh} from the cache)")
    rows = []
    for spec, r in zip(items, results):
        if "error" in r:
            errors.append(f"{spec['module']}.{spec['fn']} [{_variant_text(spec)}] ({spec['case']}): {r['error']}")
            continue
        threads = r["num_warps"] * 32
        row = {"kind": "triton", "family": spec["family"], "kernel": spec["fn"], "dtype": _triton_dtype(spec),
               "variant": _variant_text(spec), "num_warps": r["num_warps"], "num_stages": r["num_stages"],
               "threads": threads,
               **{k: r[k] for k in ("registers", "stack_bytes", "spill_stores_bytes", "spill_loads_bytes",
                                    "static_smem_bytes", "dynamic_smem_bytes")},
               "case": spec["case"] + (f" (+{spec['cases'] - 1} more)" if spec["cases"] > 1 else ""),
               "toolchain": f"triton {triton.__version__} ({r['ptxas_target']})"}
        row.update(occupancy(r["registers"], threads, r["static_smem_bytes"] + r["dynamic_smem_bytes"]))
        rows.append(row)
    return rows, errors


# ---------------------------------------------------------------------------
# CSV, README, check
# ---------------------------------------------------------------------------
COLUMNS = ["kind", "family", "kernel", "dtype", "variant", "num_warps", "num_stages", "threads", "registers",
           "spill_stores_bytes", "spill_loads_bytes", "stack_bytes", "static_smem_bytes", "dynamic_smem_bytes",
           "blocks_per_sm", "warps_per_sm", "occupancy", "limiter", "case", "toolchain"]
# The columns a code change moves; --check compares these with the committed file.
COMPARED = ["registers", "spill_stores_bytes", "spill_loads_bytes", "stack_bytes", "static_smem_bytes",
            "dynamic_smem_bytes", "threads"]
IDENTITY = ["kind", "family", "kernel", "dtype", "variant", "num_warps", "num_stages", "case"]


def _sort_key(r):
    return (r["kind"], r["family"], r["kernel"], r["dtype"], str(r["variant"]), str(r["num_warps"]),
            str(r["num_stages"]))


def write_csv(rows, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in sorted(rows, key=_sort_key):
            w.writerow({k: (f"{r[k]:.4f}" if k == "occupancy" and r.get(k) != "" and k in r else r.get(k, ""))
                        for k in COLUMNS})


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _identity(r):
    return tuple(str(r.get(k, "")) for k in IDENTITY if k != "case")


def compare(new_rows, old_rows) -> list:
    """Differences between freshly computed rows and the committed CSV (a stale table). Rows are
    matched by kernel and variant; where several share those (a variant specialised on an argument
    value, e.g. H = 1), their resource values are compared as a multiset."""
    def index(rows):
        out = {}
        for r in rows:
            out.setdefault(_identity(r), []).append(tuple(str(r.get(c, "")) for c in COMPARED))
        return {k: sorted(v) for k, v in out.items()}

    old, new = index(old_rows), index(new_rows)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            diffs.append(f"new variant not in the committed CSV: {' | '.join(key)}")
        elif key not in new:
            diffs.append(f"committed variant no longer produced: {' | '.join(key)}")
        elif old[key] != new[key]:
            changed = [f"{c} {a} -> {b}" for o, n in zip(old[key], new[key]) for c, a, b in zip(COMPARED, o, n)
                       if a != b] or [f"{len(old[key])} -> {len(new[key])} rows"]
            diffs.append(f"{' | '.join(key)}: {', '.join(changed)}")
    return diffs


def spills(rows, max_bytes: int = 0) -> list:
    """Rows whose spill stores or loads exceed `max_bytes` (the issue's rule: any spill, 0)."""
    return [r for r in rows if max(int(r.get("spill_stores_bytes") or 0), int(r.get("spill_loads_bytes") or 0))
            > max_bytes]


def readme_block(rows, csv_path: Path) -> str:
    """The README table: per kernel family the worst variant, and every kernel below 25% occupancy."""
    rel = csv_path.relative_to(ROOT) if csv_path.is_relative_to(ROOT) else csv_path
    rows = [dict(r) for r in rows]
    for r in rows:
        for k in ("registers", "spill_stores_bytes", "spill_loads_bytes", "threads", "dynamic_smem_bytes",
                  "static_smem_bytes", "warps_per_sm"):
            r[k] = int(r[k]) if str(r.get(k, "")) != "" else 0
        r["occupancy"] = float(r["occupancy"]) if str(r.get("occupancy", "")) != "" else float("nan")
    tools = sorted({r["toolchain"] for r in rows})
    lines = [f"Generated by `python -m benchmarks.kernel_resources` from `{rel}` ({len(rows)} kernel variants; "
             f"{', '.join(tools)}). Occupancy is theoretical: resident warps per SM / 64.", ""]
    n_spill = len(spills(rows))
    lines.append(f"Variants that spill: **{n_spill}**." + ("" if n_spill else " (none)"))
    lines.append("")
    lines += ["| kind | kernel | variants | spilling | registers (max) | worst variant (most registers, then most "
              "spilled) | its occupancy (limiter) | lowest occupancy | below 25% |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], r["kernel"]), []).append(r)
    for (kind, kernel), rs in sorted(groups.items()):
        worst = max(rs, key=lambda r: (r["registers"], r["spill_stores_bytes"] + r["spill_loads_bytes"]))
        low = min(r["occupancy"] for r in rs)
        below = sum(r["occupancy"] < LOW_OCCUPANCY for r in rs)
        spilling = len(spills(rs))
        what = f"{worst['dtype']} {worst['variant']}".strip() + (
            f", {worst['num_warps']} warps" if kind == "triton" else f", {worst['threads']} threads") + (
            f"; spills {worst['spill_stores_bytes']} B stored / {worst['spill_loads_bytes']} B loaded"
            if spills([worst]) else "")
        lines.append(f"| {kind} | `{kernel}` | {len(rs)} | {spilling} | {worst['registers']} | {what} | "
                     f"{worst['occupancy']:.1%} ({worst['limiter']}) | {low:.1%} | {below} |")
    return "\n".join(lines)


def update_readme(rows, csv_path: Path, readme: Path = README) -> bool:
    return replace_block(readme, BEGIN, END, readme_block(rows, csv_path))


def readme_in_sync(rows, csv_path: Path, readme: Path = README) -> bool:
    text = readme.read_text()
    return f"{BEGIN}\n{readme_block(rows, csv_path)}\n{END}" in text


def default_cache_dir() -> Path:
    base = os.environ.get("GRAPHATTN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphattn")
    return Path(base) / "kernel-resources"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=str(DEFAULT_CSV), help="CSV to write (default %(default)s)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 on a spill, a compile error, a Triton kernel no case reaches, or a "
                        "committed CSV / README table that differs from what the code compiles to")
    p.add_argument("--allow-stale", action="store_true", help="with --check: report a stale CSV without failing")
    p.add_argument("--max-spill-bytes", type=int, default=0,
                   help="with --check: tolerate spills up to this many bytes per variant (default 0: none)")
    p.add_argument("--list", action="store_true", help="print the Triton variants the cases launch; compile nothing")
    p.add_argument("--full", action="store_true", help="also float16 (slower; not what CI checks)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: all cores)")
    p.add_argument("--cache-dir", default=None, help=f"default {default_cache_dir()} (GRAPHATTN_CACHE_DIR/...)")
    p.add_argument("--readme", default=str(README), help="README whose kernel-resources block is rewritten")
    args = p.parse_args(argv)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    out = Path(args.out)
    t0 = time.perf_counter()

    if args.list:
        specs, errors = record_variants(args.full)
        for s in sorted(specs.values(), key=lambda s: (s["module"], s["fn"], _variant_text(s))):
            print(f"{s['module']}.{s['fn']:<24} {_triton_dtype(s):<9} warps={s['options']['num_warps']} "
                  f"stages={s['options']['num_stages']} {_variant_text(s)}   [{s['case']}]")
        print(f"{len(specs)} Triton variants from {len(cases(args.full))} launcher calls")
        for e in errors:
            print(f"ERROR: {e}")
        return 1 if errors else 0

    rows, errors = [], []
    if not args.no_cuda:
        r, e = cuda_rows(cache_dir, args.jobs)
        rows += r
        errors += e
    if not args.no_triton:
        r, e = triton_rows(cache_dir, args.jobs, args.full)
        rows += r
        errors += e
    print(f"{len(rows)} kernel variants in {time.perf_counter() - t0:.0f} s")

    worst = max(rows, key=lambda r: r["registers"]) if rows else None
    if worst:
        print(f"most registers: {worst['kind']} {worst['kernel']} {worst['dtype']} {worst['variant']}: "
              f"{worst['registers']} registers, occupancy {worst.get('occupancy', float('nan')):.1%} "
              f"({worst.get('limiter', '')})")
    low = [r for r in rows if r.get("occupancy", 1) < LOW_OCCUPANCY]
    print(f"below {LOW_OCCUPANCY:.0%} occupancy: {len(low)} variants of "
          f"{len({(r['kind'], r['kernel']) for r in low})} kernels")
    bad = spills(rows, args.max_spill_bytes if args.check else 0)
    for r in bad:
        print(f"SPILL: {r['kind']} {r['kernel']} {r['dtype']} {r['variant']} warps={r['num_warps']}: "
              f"{r['spill_stores_bytes']} B stores, {r['spill_loads_bytes']} B loads ({r['case']})")
    for e in errors:
        print(f"ERROR: {e}")

    if args.check:
        failed = bool(bad or errors)
        if out.exists() and not args.no_cuda and not args.no_triton and not args.full:
            old = read_csv(out)
            # Rows of a kind this machine could not compile (no nvcc) are compared only where present.
            kinds = {r["kind"] for r in rows}
            diffs = compare(rows, [r for r in old if r["kind"] in kinds])
            bad_old = spills(old, args.max_spill_bytes)
            for r in bad_old:
                print(f"SPILL in the committed CSV: {r['kind']} {r['kernel']} {r['variant']}")
            if diffs:
                print(f"{out} is stale ({len(diffs)} differences); regenerate it with "
                      "`make kernel-resources` and commit it:")
                for d in diffs[:40]:
                    print(f"  {d}")
            if not readme_in_sync(old, out, Path(args.readme)):
                print(f"the table in {args.readme} does not match {out}: `make kernel-resources` rewrites it")
                diffs.append("readme")
            failed = failed or bool(bad_old) or (bool(diffs) and not args.allow_stale)
        elif not out.exists():
            print(f"{out} does not exist: `make kernel-resources` writes it")
            failed = True
        print("kernel-resources check: " + ("FAILED" if failed else "ok"))
        return 1 if failed else 0

    if errors:
        print(f"not writing {out}: fix the errors above first")
        return 1
    write_csv(rows, out)
    print(f"wrote {out}")
    readme = Path(args.readme)
    if readme.exists() and update_readme(read_csv(out), out, readme):
        print(f"updated the kernel-resources table in {readme}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
