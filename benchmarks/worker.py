"""One measurement, run in its own process (see benchmarks/runner.py).

`run_job(job)` builds the pattern, prepares the provider, warms up, measures the peak memory
of one call, then times the repeats, and returns a dict (never raises: a failure comes back
as status 'skipped' with the reason). `entry(job, conn)` is the multiprocessing target.

Importing this module imports torch and graphattn, so that a forkserver preloading it hands
each measurement a process with both already loaded.
"""
from __future__ import annotations

import time

import torch

import graphattn  # noqa: F401  (preloaded: registers the ops, loads graphattn._C)

from . import common
from .providers import get_provider


def run_job(job: dict) -> dict:
    device = job["device"]
    result = {"status": "skipped"}
    stage = common.Stage()
    try:
        if device == "cpu":
            common.limit_cpu_memory(job.get("mem_limit_bytes"))
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        provider = get_provider(job["provider"])
        stage.name = "graph"
        graph = common.make_graph(job["graph"])
        # The edge list every csr provider takes as given is built here, before the memory baseline
        # of `prepare` (its size, 16·E bytes as int64, is added analytically to total_mem_bytes).
        result["E"] = graph.num_edges if job["form"] != "csr" else int(graph.edges().shape[1])
        result["N"] = graph.num_nodes
        if job["form"] == "segments":
            result["num_segments"] = int(graph.segments().numel() - 1)
        result["max_degree"] = graph.max_in_degree() if job["form"] != "dense" else graph.num_nodes

        stage.name = "prepare"
        mem0 = common.memory_in_use(device, collect=True)
        t0 = time.perf_counter()
        forward, leaves = provider.prepare(job, graph)
        if device == "cuda":
            torch.cuda.synchronize()
        result["prep_s"] = time.perf_counter() - t0
        result["prep_mem_bytes"] = max(0, common.memory_in_use(device) - mem0)

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

        result.update(common.measure_step(step, leaves, job, device, stage))
        if provider.note:
            result["note"] = provider.note
        return result
    except BaseException as exc:  # noqa: BLE001  (reported, never crashes the sweep)
        return common.skipped_because(result, exc, stage)


def entry(job: dict, conn) -> None:
    """multiprocessing target: run one job, send the result dict back through `conn`."""
    try:
        conn.send(run_job(job))
    finally:
        conn.close()
