"""One measurement, run in its own process (see benchmarks/runner.py).

`run_job(job)` builds the pattern, prepares the provider, warms up, measures the peak memory
of one call, then times the repeats, and returns a dict (never raises: a failure comes back
as status 'skipped' with the reason). `entry(job, conn)` is the multiprocessing target.

Importing this module imports torch and graphattn, so that a forkserver preloading it hands
each measurement a process with both already loaded.
"""
from __future__ import annotations

import gc
import os
import resource
import time
import traceback

import torch

import graphattn  # noqa: F401  (preloaded: registers the ops, loads graphattn._C)

from . import common
from .providers import get_provider


def _limit_cpu_memory(limit_bytes):
    """On CPU, cap the address space so an oversized case fails with an allocation error (caught,
    reported as skipped) instead of waking the OOM killer. The cap is the current virtual size plus
    the limit plus slack for thread stacks and malloc arenas."""
    if not limit_bytes:
        return
    vm_kb = common._proc_status_kb("VmSize")
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


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)))
            or "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_job(job: dict) -> dict:
    device = job["device"]
    result = {"status": "skipped"}
    stage = "setup"
    try:
        if device == "cpu":
            _limit_cpu_memory(job.get("mem_limit_bytes"))
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        provider = get_provider(job["provider"])
        stage = "graph"
        graph = common.make_graph(job["graph"])
        # The edge list every csr provider takes as given is built here, before the memory baseline
        # of `prepare` (its size, 16·E bytes as int64, is added analytically to total_mem_bytes).
        result["E"] = graph.num_edges if job["form"] != "csr" else int(graph.edges().shape[1])
        result["N"] = graph.num_nodes
        if job["form"] == "segments":
            result["num_segments"] = int(graph.segments().numel() - 1)
        result["max_degree"] = graph.max_in_degree() if job["form"] != "dense" else graph.num_nodes

        stage = "prepare"
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            mem0 = torch.cuda.memory_allocated()
        else:
            common.malloc_trim()
            mem0 = common.rss_bytes()
        t0 = time.perf_counter()
        forward, leaves = provider.prepare(job, graph)
        if device == "cuda":
            torch.cuda.synchronize()
        result["prep_s"] = time.perf_counter() - t0
        result["prep_mem_bytes"] = max(0, (torch.cuda.memory_allocated() if device == "cuda"
                                           else common.rss_bytes()) - mem0)

        backward = job["mode"] == "fwdbwd"
        grad_holder = {}

        def step():
            if backward:
                out = forward()
                grad = grad_holder.get("g")
                if grad is None or grad.shape != out.shape:
                    grad = grad_holder["g"] = torch.randn(
                        out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
                out.backward(grad)
            else:
                with torch.no_grad():
                    forward()

        if job["mode"] == "train":  # the provider's callable is a whole training step (benchmarks/layers.py)
            step = forward  # noqa: F811

        def reset():
            for t in leaves:
                t.grad = None

        timer = common.Timer(device, flush_l2=job.get("flush_l2", True))
        stage = "warmup"
        # Not timed: the first call compiles / autotunes / builds lazy state.
        for _ in range(max(1, int(job.get("warmup", 1)))):
            reset()
            step()

        stage = "memory"
        result["peak_mem_bytes"], result["mem_method"] = common.peak_memory(step, reset, device)

        stage = "timing"
        times = common.time_calls(step, reset, timer, int(job.get("repeats", 10)), job.get("budget_s"))
        reset()
        result.update(common.summarize(times))
        result.update(status="ok", repeats=len(times), times=times, threads=torch.get_num_threads())
        if provider.note:
            result["note"] = provider.note
        return result
    except BaseException as exc:  # noqa: BLE001  (reported, never crashes the sweep)
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind = "out of memory" if _is_oom(exc) else "failed"
        result.update(status="skipped", reason=f"{kind} during {stage}: {_first_line(exc)}")
        if os.environ.get("GRAPHATTN_BENCH_DEBUG"):
            result["reason"] += "\n" + traceback.format_exc()
        return result


def entry(job: dict, conn) -> None:
    """multiprocessing target: run one job, send the result dict back through `conn`."""
    try:
        conn.send(run_job(job))
    finally:
        conn.close()
