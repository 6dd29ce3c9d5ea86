"""Runs benchmark jobs, each in a fresh process, and appends one CSV row per job.

Isolation (why a process per measurement): peak memory is the peak RSS increase of the process
during one call, which is only honest in a process that ran nothing else before (no heap kept
from an earlier, larger case; no other provider's caches). It also keeps one provider's crash,
out-of-memory kill or hang from ending the sweep.
- "forkserver" (default on CPU): multiprocessing's forkserver preloads torch + graphattn (+
  torch_geometric when a job needs it) once; every job is a fresh fork of that clean server
  (which never ran a kernel), so a job starts in ~0.1 s instead of paying the imports again.
- "spawn" (default on CUDA, where a fork after CUDA might have been initialised is unsafe): a
  fresh interpreter per job (a few seconds of imports each). "forkserver" also works in principle
  on CUDA (the server preloads only torch + graphattn, which do not initialise CUDA) and saves
  those seconds, but has not been tried on a GPU yet.
- "none": in the calling process (debugging only; memory figures are not honest there).

A job that cannot run is recorded with status 'skipped' and its reason (printed too): provider
unavailable, estimated memory over the limit, predicted too slow from the previous size of the
same series, out of memory, timed out, crashed. Once a series (same case, provider, mode,
dtype, heads) skips for size or time, its larger sizes are skipped without trying.
"""
from __future__ import annotations

import importlib.util
import multiprocessing as mp
import sys
import time
from typing import Optional

from . import common
from .providers import get_provider

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

# Reasons that make the larger sizes of a series pointless to try.
_SIZE_REASONS = ("out of memory", "timed out", "needs ~", "too slow", "killed")


class _NoBar:
    def __init__(self, total=0, **_):
        self.total = total

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass

    @staticmethod
    def write(s):
        print(s, flush=True)


class Runner:
    def __init__(self, device: str, out_csv, *, isolation: str = "auto", timeout_s: float = 300.0,
                 mem_limit_bytes: Optional[float] = None, env: Optional[dict] = None, progress: bool = True,
                 min_repeats: int = 3):
        self.device = device
        self.out_csv = out_csv
        if isolation == "auto":
            isolation = "forkserver" if device == "cpu" else "spawn"
        if isolation not in ("forkserver", "spawn", "none"):
            raise ValueError(f"isolation must be auto, forkserver, spawn or none, got {isolation!r}")
        self.isolation = isolation
        self.timeout_s = float(timeout_s)
        self._mem_limit_user = mem_limit_bytes
        self.mem_limit = self._current_mem_limit()
        self.env = env or common.environment(device)
        self.progress = progress and tqdm is not None
        self.min_repeats = min_repeats
        self._series = {}
        self.rows = []

    def _current_mem_limit(self) -> float:
        """--mem-limit-gb if given, else 80% of the memory free right now (CPU: other processes
        come and go) or of the GPU's memory."""
        if self._mem_limit_user:
            return float(self._mem_limit_user)
        return 0.8 * common.available_memory_bytes(self.device)

    # ---- process management -------------------------------------------
    def _context(self, jobs):
        ctx = mp.get_context(self.isolation)
        if self.isolation == "forkserver":
            preload = ["benchmarks.worker"]
            # torch_geometric may call torch.cuda.is_available() at import (under pytest it even runs
            # CUDA code): preloaded for CPU runs only, so a CUDA forkserver never initialises CUDA.
            if (self.device == "cpu" and any(j["provider"].split("-")[0] == "pyg" for j in jobs)
                    and importlib.util.find_spec("torch_geometric")):
                preload += ["torch_geometric", "torch_geometric.utils", "torch_geometric.nn"]
            preload.append("benchmarks._freeze")
            ctx.set_forkserver_preload(preload)  # takes effect when the server starts (first job)
        return ctx

    def _run_isolated(self, ctx, job: dict) -> dict:
        if self.isolation == "none":
            from .worker import run_job

            return run_job({**job, "mem_limit_bytes": None})
        from .worker import entry

        recv, send = ctx.Pipe(duplex=False)
        # not daemonic: a measured provider may start processes of its own (torch.compile workers)
        proc = ctx.Process(target=entry, args=({**job, "mem_limit_bytes": self.mem_limit}, send), daemon=False)
        proc.start()
        send.close()
        result = None
        try:
            if recv.poll(self.timeout_s):
                try:
                    result = recv.recv()
                except EOFError:
                    result = None
            else:
                result = {"status": "skipped", "reason": f"timed out after {self.timeout_s:.0f} s (--case-timeout)"}
        finally:
            proc.join(5 if result is not None else 0.5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            recv.close()
        if result is None:
            code = proc.exitcode
            if code is not None and code < 0 and -code == 9:
                why = "killed by SIGKILL (out of memory?)"
            elif code is not None and code < 0:
                why = f"killed by signal {-code}"
            else:
                why = f"worker exited with code {code} without a result"
            result = {"status": "skipped", "reason": why}
        return result

    # ---- the sweep ------------------------------------------------------
    def _pre_skip(self, job: dict, provider, num_edges: int) -> Optional[str]:
        why = provider.parent_skip_reason(job)
        if why:
            return why
        state = self._series.get(job["series"])
        if state and state[0] == "skip":
            return f"skipped: a smaller size of this series was already skipped ({state[1]})"
        self.mem_limit = self._current_mem_limit()
        need = provider.estimate_bytes(job, num_edges)
        if need > self.mem_limit:
            return (f"needs ~{common.fmt_bytes(need)} by estimate > memory limit {common.fmt_bytes(self.mem_limit)} "
                    "(size cap; raise with --mem-limit-gb)")
        if state and state[0] == "ok":
            _, t_prev, e_prev = state
            predicted = t_prev * max(1.0, num_edges / max(e_prev, 1))
            calls = int(job.get("warmup", 1)) + 1 + self.min_repeats
            if predicted * calls > self.timeout_s:
                return (f"too slow: ~{common.fmt_time(predicted)} per call predicted from the previous size, "
                        f"x{calls} calls > --case-timeout {self.timeout_s:.0f} s")
        return None

    def _row(self, job: dict, result: dict, num_edges_est: int) -> dict:
        n = int(result.get("N", job["N"]))
        e = int(result.get("E", num_edges_est))
        h, d, mode = job["H"], job["D"], job["mode"]
        row = {k: job.get(k) for k in ("benchmark", "case", "provider", "mode", "H", "D", "dtype", "skew")}
        row.update(N=n, E=e, density=e / float(n * n) if n else None, degree=e / float(n) if n else None)
        for key in ("time_median_s", "time_p20_s", "time_p80_s", "peak_mem_bytes", "status", "reason", "repeats",
                    "max_degree", "num_segments", "prep_s", "prep_mem_bytes", "mem_method", "threads"):
            row[key] = result.get(key)
        if result.get("status") == "ok" and result.get("prep_mem_bytes") is not None:
            # footprint of the whole measurement: inputs + prepared structures + the call's extra peak
            # (+ the int64 edge list, for providers that take one)
            row["total_mem_bytes"] = (result["prep_mem_bytes"] + result["peak_mem_bytes"]
                                      + (16 * e if job["form"] == "csr" else 0))
        row["note"] = "; ".join(x for x in (job.get("note"), result.get("note")) if x) or None
        for key in ("round", "run"):  # benchmarks/layers.py: which round of which run
            if job.get(key) is not None:
                row[key] = job[key]
        t = result.get("time_median_s")
        # attention FLOPs: not for whole models or layers (jobs with a "model": benchmarks/layers.py)
        if result.get("status") == "ok" and t and mode in ("fwd", "fwdbwd") and "model" not in job:
            provider = get_provider(job["provider"])
            if provider.counts_flops:
                row["tflops"] = common.flops(e, h, d, mode) / t / 1e12
            moved = provider.bytes_moved(job, e)
            if moved is not None:
                row["gbps"] = moved / t / 1e9
        # a provider measured in another environment reports its own versions (torch, python, ...)
        env = {**self.env, **{k: v for k, v in (result.get("env") or {}).items() if k in self.env}}
        row.update({k: env[k] for k in ("device", "torch", "triton", "cuda", "python", "commit")})
        row["date"] = common.utc_now()
        return row

    def run(self, jobs: list, desc: str = "") -> list:
        ctx = self._context(jobs) if self.isolation != "none" else None
        bar = (tqdm(total=len(jobs), desc=desc, unit="case", dynamic_ncols=True, file=sys.stdout, disable=None)
               if self.progress else _NoBar(total=len(jobs)))
        write = tqdm.write if self.progress else _NoBar.write
        rows = []
        try:
            for job in jobs:
                provider = get_provider(job["provider"])
                num_edges = common.graph_num_edges(job["graph"])
                label = (f"{job['benchmark']} | {job['case']} | N={job['N']} E~{num_edges} | {job['provider']} | "
                         f"{job['mode']} | {job['dtype']} H={job['H']} D={job['D']}")
                bar.set_postfix_str(f"{job['case']} N={job['N']} {job['provider']} {job['mode']}")
                why = self._pre_skip(job, provider, num_edges)
                if why:
                    result = {"status": "skipped", "reason": why}
                else:
                    t0 = time.perf_counter()
                    external = getattr(provider, "run_external", None)
                    # a provider that measures in another environment (dgl: its own python) runs its
                    # own fresh process instead of a fork of this one
                    result = (external(job, timeout_s=self.timeout_s, mem_limit_bytes=self.mem_limit) if external
                              else self._run_isolated(ctx, job))
                    result.setdefault("wall_s", time.perf_counter() - t0)
                row = self._row(job, result, num_edges)
                if result["status"] == "ok":
                    self._series[job["series"]] = ("ok", result["time_median_s"], row["E"])
                    write(f"  {label}: {common.fmt_time(row['time_median_s'])} "
                          f"[{common.fmt_time(row['time_p20_s'])}, {common.fmt_time(row['time_p80_s'])}], "
                          + (f"{row['tflops']:.3g} TFLOP/s, " if row.get("tflops") else "")
                          + f"peak +{common.fmt_bytes(row['peak_mem_bytes'])}")
                else:
                    reason = result.get("reason", "?")
                    if any(s in reason for s in _SIZE_REASONS) and not reason.startswith("skipped: a smaller"):
                        self._series[job["series"]] = ("skip", reason.split(":")[0])
                    write(f"  SKIP {label}: {reason}")
                common.append_rows(self.out_csv, [row])
                rows.append(row)
                bar.update(1)
        finally:
            bar.close()
        self.rows.extend(rows)
        return rows


def make_job(*, benchmark: str, case: str, provider: str, form: str, graph: dict, device: str, mode: str,
             dtype: str, heads: int, head_dim: int, seed: int = 0, warmup: int = 1, repeats: int = 10,
             budget_s: Optional[float] = 10.0, note: Optional[str] = None, series: Optional[str] = None,
             flush_l2: bool = True, threads: Optional[int] = None) -> dict:
    """One measurement. `series` groups the sizes of one line of a plot (for the skip logic).
    `threads`: torch.set_num_threads in the measuring process (None: torch's default, all cores)."""
    graph = {"seed": seed, **graph}
    job = {
        "benchmark": benchmark, "case": case, "provider": provider, "form": form, "graph": graph,
        "N": common.graph_num_nodes(graph), "H": heads, "D": head_dim, "dtype": common.dtype_name(dtype),
        "device": device, "mode": mode, "seed": seed, "warmup": warmup, "repeats": repeats, "budget_s": budget_s,
        "note": note, "flush_l2": flush_l2, "threads": threads,
        "skew": graph.get("exponent", graph.get("hub_fraction", 0.0)),
    }
    job["series"] = series or "|".join(str(job[k]) for k in ("benchmark", "case", "provider", "mode", "dtype", "H",
                                                              "D"))
    return job
