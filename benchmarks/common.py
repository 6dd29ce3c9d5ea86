"""Shared pieces of the graphattn benchmarks.

- the environment row (device, versions, commit, date) written with every measurement;
- timing (warmup, then repeats: median / p20 / p80 seconds, synchronised on the GPU);
- peak-memory measurement of one call (CPU: peak RSS increase via VmHWM; GPU: the caching
  allocator's peak minus what was allocated before the call);
- the results CSV (one row per measurement, appended; header written when the file is new);
- graph generators with a fixed seed (uniform, power-law, one hub, given density, complete,
  batches of complete graphs);
- FLOP and byte counts.

Nothing here imports graphattn or torch_geometric: the worker (benchmarks/worker.py) and the
providers (benchmarks/providers.py) do, inside the measured process.
"""
from __future__ import annotations

import csv
import ctypes
import datetime
import gc
import math
import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# ---------------------------------------------------------------------------
# CSV schema
# ---------------------------------------------------------------------------
# The measurement, then extra columns, then the environment. Blank = not applicable.
MEASURE_COLUMNS = [
    "benchmark", "case", "provider", "mode", "N", "E", "H", "D", "dtype", "density", "degree", "skew",
    "time_median_s", "time_p20_s", "time_p80_s", "tflops", "gbps", "peak_mem_bytes",
]
EXTRA_COLUMNS = [
    "status", "reason", "repeats", "max_degree", "num_segments", "prep_s", "prep_mem_bytes", "total_mem_bytes",
    "mem_method",
    "threads", "note", "python",
]
ENV_COLUMNS = ["device", "torch", "triton", "cuda", "commit", "date"]
COLUMNS = MEASURE_COLUMNS + EXTRA_COLUMNS + ENV_COLUMNS

DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def dtype_name(dtype) -> str:
    """'float32' for torch.float32 or any alias of it ('fp32')."""
    if not isinstance(dtype, torch.dtype):
        dtype = parse_dtype(dtype)
    return str(dtype).replace("torch.", "")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float16, bfloat16, float32, float64") from None


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------
def resolve_device(device: Optional[str]) -> str:
    """'cpu' or 'cuda'; None picks cuda when a GPU is visible."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device).type
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    if device not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {device!r}")
    return device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"{cpu_model()} ({cpu_count()} cores)"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device: str) -> str:
    """File-name form of the device: 'cpu-amd-epyc-2c', 'nvidia-h100-80gb-hbm3'."""
    if device == "cuda":
        return slugify(device_name("cuda"))
    return f"cpu-{slugify(cpu_model())}-{cpu_count()}c"


def default_csv(device: str, quick: bool = False) -> Path:
    """benchmarks/results/<device-slug>.csv; quick runs go to the temp dir, never into results/."""
    if quick:
        import tempfile

        return Path(tempfile.gettempdir()) / "graphattn-bench" / f"{device_slug(device)}-quick.csv"
    return RESULTS_DIR / f"{device_slug(device)}.csv"


def git_commit() -> str:
    """Short HEAD, + '-dirty' when tracked files other than benchmarks/results/ (which the
    benchmarks themselves append to) differ from it; GRAPHATTN_COMMIT overrides."""
    if os.environ.get("GRAPHATTN_COMMIT"):
        return os.environ["GRAPHATTN_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no",
                                 "--", ".", ":(exclude)benchmarks/results"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        dirty = status.returncode == 0 and status.stdout.strip() != ""
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment(device: str) -> dict:
    """The environment columns of every row (and `python`, an extra column)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": utc_now(),
    }


def describe_environment(env: dict) -> str:
    return (f"device: {env['device']} | torch {env['torch']} | triton {env['triton'] or '-'} | "
            f"cuda {env['cuda'] or '-'} | python {env['python']} | commit {env['commit']} | {env['date']}")


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def quantile(values, q: float) -> float:
    """Linear-interpolated quantile of a non-empty sequence."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times) -> dict:
    return {"time_median_s": quantile(times, 0.5), "time_p20_s": quantile(times, 0.2),
            "time_p80_s": quantile(times, 0.8)}


class Timer:
    """Times one call of `step` on `device`. On CUDA: synchronise, optionally flush L2 with a
    256 MiB write (so repeats do not run from a warm cache), then CUDA events around the call."""

    def __init__(self, device: str, flush_l2: bool = True):
        self.device = device
        self._flush = None
        if device == "cuda" and flush_l2:
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")

    def __call__(self, step: Callable[[], None]) -> float:
        if self.device != "cuda":
            t0 = time.perf_counter()
            step()
            return time.perf_counter() - t0
        if self._flush is not None:
            self._flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def limit_cpu_memory(limit_bytes) -> None:
    """On CPU, cap a worker's address space so an oversized case fails with an allocation error
    (caught, reported as skipped) instead of waking the OOM killer. The cap is the current virtual
    size plus the limit plus slack for thread stacks and malloc arenas."""
    import resource

    if not limit_bytes:
        return
    vm_kb = _proc_status_kb("VmSize")
    if vm_kb is None:
        return
    cap = int(vm_kb * 1024 + limit_bytes + 2**30)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)))
            or "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text)


def first_line(exc: BaseException) -> str:
    """The exception's type and first line, short enough for a CSV row's reason."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def memory_in_use(device: str, collect: bool = False) -> int:
    """Bytes in use now (CUDA: allocated by torch; CPU: the process's RSS), after the device's
    work finished; `collect`: after a garbage collection and malloc_trim, as a baseline."""
    if collect:
        gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    if collect:
        malloc_trim()
    return rss_bytes()


class Stage:
    """Where a measuring worker is, for the reason of a skipped row ("failed during timing: ...")."""

    def __init__(self, name: str = "setup"):
        self.name = name


def skipped_because(result: dict, exc: BaseException, stage: Stage) -> dict:
    """A worker's failure as a skipped row (called in its except clause): out of memory or failed,
    during which stage, the exception's first line; the traceback too with GRAPHATTN_BENCH_DEBUG."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    kind = "out of memory" if is_oom(exc) else "failed"
    result.update(status="skipped", reason=f"{kind} during {stage.name}: {first_line(exc)}")
    if os.environ.get("GRAPHATTN_BENCH_DEBUG"):
        import traceback

        result["reason"] += "\n" + traceback.format_exc()
    return result


def measure_step(step: Callable[[], None], leaves: list, job: dict, device: str, stage: Stage) -> dict:
    """What every worker measures of a prepared step (benchmarks/worker.py, benchmarks/dgl_worker.py):
    untimed warm-up calls (the first compiles, autotunes or builds lazy state), the extra peak
    memory of one call, then the timed calls; `leaves`' gradients are reset before each."""
    def reset():
        for t in leaves:
            t.grad = None

    timer = Timer(device, flush_l2=job.get("flush_l2", True))
    stage.name = "warmup"
    for _ in range(max(1, int(job.get("warmup", 1)))):
        reset()
        step()
    stage.name = "memory"
    peak, method = peak_memory(step, reset, device)
    stage.name = "timing"
    times = time_calls(step, reset, timer, int(job.get("repeats", 10)), job.get("budget_s"))
    reset()
    return {"peak_mem_bytes": peak, "mem_method": method, **summarize(times), "status": "ok",
            "repeats": len(times), "times": times, "threads": torch.get_num_threads()}


def time_calls(step: Callable[[], None], reset: Callable[[], None], timer: Timer, repeats: int,
               budget_s: Optional[float] = None, min_repeats: int = 3) -> list:
    """Up to `repeats` timed calls, `reset()` (untimed) before each; stops early once the timed
    calls add up to `budget_s` and at least `min_repeats` were made."""
    times = []
    for _ in range(max(1, repeats)):
        reset()
        times.append(timer(step))
        if budget_s and len(times) >= min_repeats and sum(times) >= budget_s:
            break
    return times


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS: Linux `echo 5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so the RSS before a call holds no free memory
    that the call would reuse unseen."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler:
    """Fallback where VmHWM cannot be reset: the largest RSS seen by a thread polling every 1 ms."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def peak_memory(step: Callable[[], None], reset: Callable[[], None], device: str) -> tuple:
    """Extra peak memory of one call of `step`: (bytes, method).

    CPU: peak RSS during the call minus the RSS right before it (after gc and malloc_trim), read
    from VmHWM after resetting it, or sampled with psutil where that is impossible. Whatever the
    call allocates counts (outputs, gradients, temporaries), its inputs do not.
    CUDA: torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it
    (tensors of the caching allocator only; cuBLAS / cuDNN workspaces are not seen).
    """
    reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before), "cuda-max-allocated"
    malloc_trim()
    if _reset_hwm():
        before = rss_bytes()
        step()
        return max(0, _proc_status_kb("VmHWM") * 1024 - before), "rss-vmhwm"
    before = rss_bytes()
    with _RssSampler() as sampler:
        step()
    return max(0, sampler.peak - before), "rss-sampled-1ms"


def available_memory_bytes(device: str) -> int:
    """Memory a measurement may use: free RAM (CPU) or total GPU memory (CUDA)."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        kb = None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        kb = int(line.split()[1])
        except OSError:
            pass
        return (kb or 8 * 2**20) * 1024


# ---------------------------------------------------------------------------
# Results CSV
# ---------------------------------------------------------------------------
def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    return value


def append_rows(path, rows: Iterable[dict]) -> None:
    """Append rows to the CSV at `path`, writing the header when the file is new. Columns are
    COLUMNS plus any extra keys; if an existing file has other columns, it is rewritten with the
    union (old rows keep their values)."""
    rows = [dict(r) for r in rows]
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(COLUMNS)
    for r in rows:
        for key in r:
            if key not in columns:
                columns.insert(len(MEASURE_COLUMNS) + len(EXTRA_COLUMNS), key)
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_columns = reader.fieldnames or []
            if set(columns) <= set(old_columns):
                columns = old_columns
                old_rows = None
            else:
                old_rows = list(reader)
                columns = old_columns + [c for c in columns if c not in old_columns]
        if old_rows is None:
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                for r in rows:
                    writer.writerow({k: _fmt(v) for k, v in r.items()})
            return
        rows = old_rows + rows
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
    os.replace(tmp, path)


def read_rows(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------
# Work counts
# ---------------------------------------------------------------------------
def flops(num_pairs: int, heads: int, head_dim: int, mode: str) -> float:
    """4·E·H·D forward (QK^T and PV, 2 FLOPs per multiply-add); the backward counts 2.5x that."""
    fwd = 4.0 * num_pairs * heads * head_dim
    return fwd * (1.0 + 2.5) if mode == "fwdbwd" else fwd


def sparse_bytes(num_edges: int, num_nodes: int, heads: int, head_dim: int, elem_bytes: int) -> float:
    """Bytes a sparse forward must move at least: one K row and one V row gathered per edge, one Q
    row read and one output row written per target, (E·2 + N·2)·H·D·bytes (the issue 14 measure;
    rows dated before 2026-11-30 counted the gathered K/V rows only)."""
    return (float(num_edges) * 2 + float(num_nodes) * 2) * heads * head_dim * elem_bytes


# ---------------------------------------------------------------------------
# Graph generators (fixed seed; everything on the CPU, then moved)
# ---------------------------------------------------------------------------
@dataclass
class GraphData:
    """One generated pattern. `edge_index` [2, E] (sources, targets) for edge lists, `ptr` for
    batches of complete graphs (their edge list is built on demand), neither for 'dense'."""

    kind: str
    num_nodes: int
    num_edges: int
    edge_index: Optional[torch.Tensor] = None
    ptr: Optional[torch.Tensor] = None
    skew: float = 0.0

    def edges(self) -> torch.Tensor:
        """The edge list; for 'complete' / 'batches' / 'dense' every pair of each segment."""
        if self.edge_index is None:
            ptr = self.ptr if self.ptr is not None else torch.tensor([0, self.num_nodes])
            self.edge_index = complete_edges(ptr)
        return self.edge_index

    def segments(self) -> torch.Tensor:
        if self.ptr is None:
            raise ValueError(f"a {self.kind} graph has no segments")
        return self.ptr

    def max_in_degree(self) -> int:
        if self.ptr is not None:
            return int((self.ptr[1:] - self.ptr[:-1]).max()) if self.ptr.numel() > 1 else 0
        if self.edge_index is None:
            return self.num_nodes
        if self.edge_index.numel() == 0:
            return 0
        return int(torch.bincount(self.edge_index[1], minlength=self.num_nodes).max())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def uniform_graph(n: int, degree: float, seed: int = 0) -> torch.Tensor:
    """E = round(n·degree) edges with uniformly random sources and targets (average in-degree `degree`)."""
    g = _generator(seed)
    e = int(round(n * degree))
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n, (e,), generator=g)
    return torch.stack([src, dst])


def power_law_graph(n: int, degree: float, exponent: float = 1.0, seed: int = 0) -> torch.Tensor:
    """E = round(n·degree) edges, uniform sources; targets drawn with probability ∝ rank^-exponent
    (Zipf), ranks assigned to nodes in random order. exponent 0 is uniform; 1 gives the top node
    ~1/ln(n) of all edges."""
    g = _generator(seed)
    e = int(round(n * degree))
    weights = torch.arange(1, n + 1, dtype=torch.float64).pow(-float(exponent))
    cdf = torch.cumsum(weights, 0)
    cdf /= cdf[-1].clone()
    rank = torch.searchsorted(cdf, torch.rand(e, generator=g, dtype=torch.float64)).clamp_(max=n - 1)
    node_of_rank = torch.randperm(n, generator=g)
    src = torch.randint(0, n, (e,), generator=g)
    return torch.stack([src, node_of_rank[rank]])


def hub_graph(n: int, degree: float, hub_fraction: float = 0.1, seed: int = 0) -> torch.Tensor:
    """E = round(n·degree) edges: round(hub_fraction·E) go into one hub node (node 0), the rest
    are uniform."""
    g = _generator(seed)
    e = int(round(n * degree))
    e_hub = int(round(hub_fraction * e))
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.cat([torch.zeros(e_hub, dtype=torch.long), torch.randint(0, n, (e - e_hub,), generator=g)])
    return torch.stack([src, dst[torch.randperm(e, generator=g)]])


def density_graph(n: int, density: float, seed: int = 0, chunk_rows: int = 1024) -> torch.Tensor:
    """Each of the n·n (source, target) pairs is an edge with probability `density`, without
    duplicates (so that it is exactly the boolean mask a dense kernel would take)."""
    g = _generator(seed)
    parts = []
    for start in range(0, n, chunk_rows):
        rows = min(chunk_rows, n - start)
        hit = (torch.rand(rows, n, generator=g) < density).nonzero()  # [(target offset, source)]
        parts.append(torch.stack([hit[:, 1], hit[:, 0] + start]))
    return torch.cat(parts, dim=1) if parts else torch.empty(2, 0, dtype=torch.long)


def segment_sizes(total_nodes: int, min_size: int, max_size: int, seed: int = 0) -> list:
    """Sizes drawn uniformly from [min_size, max_size] until they add up to at least total_nodes."""
    g = _generator(seed)
    sizes, total = [], 0
    while total < total_nodes:
        chunk = torch.randint(min_size, max_size + 1, (max(1, (total_nodes - total) // max(min_size, 1) + 1),),
                              generator=g).tolist()
        for s in chunk:
            if total >= total_nodes:
                break
            sizes.append(s)
            total += s
    return sizes


def sizes_to_ptr(sizes) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.as_tensor(sizes, dtype=torch.long), 0)])


def complete_edges(ptr: torch.Tensor) -> torch.Tensor:
    """Every (source, target) pair inside each segment [ptr[s], ptr[s+1]), self-loops included."""
    sizes = (ptr[1:] - ptr[:-1]).long()
    if sizes.numel() == 1:  # one complete graph: no per-edge segment bookkeeping
        n, off = int(sizes[0]), int(ptr[0])
        nodes = torch.arange(off, off + n)
        return torch.stack([nodes.repeat(n), nodes.repeat_interleave(n)])
    squares = sizes * sizes
    e = int(squares.sum())
    seg = torch.repeat_interleave(torch.arange(sizes.numel()), squares, output_size=e)
    first_edge = torch.cumsum(squares, 0) - squares
    local = torch.arange(e) - first_edge[seg]
    n_seg, off = sizes[seg], ptr[:-1].long()[seg]
    dst = off + torch.div(local, n_seg, rounding_mode="floor")
    src = off + local % n_seg
    return torch.stack([src, dst])


def graph_num_edges(spec: dict) -> int:
    """Edges a spec will have (exact except 'density', where it is the expectation)."""
    kind, n = spec["kind"], int(spec["n"])
    if kind in ("uniform", "power_law", "hub"):
        return int(round(n * spec["degree"]))
    if kind == "density":
        return int(round(spec["density"] * n * n))
    if kind in ("complete", "dense"):
        return n * n
    if kind == "batches":
        return sum(s * s for s in segment_sizes(n, spec["min_size"], spec["max_size"], spec.get("seed", 0)))
    raise ValueError(f"unknown graph kind {kind!r}")


def graph_num_nodes(spec: dict) -> int:
    if spec["kind"] == "batches":
        return sum(segment_sizes(spec["n"], spec["min_size"], spec["max_size"], spec.get("seed", 0)))
    return int(spec["n"])


def make_graph(spec: dict) -> GraphData:
    """Build the pattern a spec describes (CPU tensors; the providers move what they use).

    kinds: uniform {n, degree}; power_law {n, degree, exponent}; hub {n, degree, hub_fraction};
    density {n, density}; complete {n} (one complete graph); dense {n} (no edge list unless
    asked); batches {n (total nodes, at least), min_size, max_size}. All take `seed`.
    """
    kind, n, seed = spec["kind"], int(spec["n"]), int(spec.get("seed", 0))
    if kind == "uniform":
        ei = uniform_graph(n, spec["degree"], seed)
        return GraphData(kind, n, ei.shape[1], edge_index=ei)
    if kind == "power_law":
        ei = power_law_graph(n, spec["degree"], spec["exponent"], seed)
        return GraphData(kind, n, ei.shape[1], edge_index=ei, skew=float(spec["exponent"]))
    if kind == "hub":
        ei = hub_graph(n, spec["degree"], spec["hub_fraction"], seed)
        return GraphData(kind, n, ei.shape[1], edge_index=ei, skew=float(spec["hub_fraction"]))
    if kind == "density":
        ei = density_graph(n, spec["density"], seed)
        return GraphData(kind, n, ei.shape[1], edge_index=ei)
    if kind in ("complete", "dense"):
        return GraphData(kind, n, n * n, ptr=None)
    if kind == "batches":
        sizes = segment_sizes(n, spec["min_size"], spec["max_size"], seed)
        ptr = sizes_to_ptr(sizes)
        return GraphData(kind, int(ptr[-1]), sum(s * s for s in sizes), ptr=ptr)
    raise ValueError(f"unknown graph kind {kind!r}")


def fmt_bytes(n) -> str:
    if n is None or n == "":
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_time(s) -> str:
    if s is None or s == "":
        return "-"
    s = float(s)
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"

