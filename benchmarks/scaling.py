"""The scaling study: how time and peak memory grow with size, density, skew, heads, dtype.

    python -m benchmarks.scaling --sweep {n,density,skew,heads,dtype,segments,crossover,all}
        [--quick] [--device cpu|cuda] [--dtype float32[,bfloat16...]] [--mode fwd|fwdbwd|both]
        [--out CSV] [--repeats R] [--case-timeout S] [--mem-limit-gb G] [--backends cpu,triton]
        [--no-baselines] [--providers P,...] [--n-sparse N,...] [--n-dense N,...] [--n-segments N]
        [--isolation auto|forkserver|spawn|none]

Sweeps (each case x provider x mode is one row of the CSV, measured in its own process):
- n: N at a fixed average in-degree (sparse, uniform random edges) - time and memory grow as E;
  N at full connectivity (dense: graphattn's dense path and torch SDPA, both O(N) memory, N^2
  time; and the same complete graph as an edge list while it fits: N^2 time and memory).
  Dense baselines: torch-sdpa-blhd (SDPA on the same [1, N, H, D] data, transposed inside the
  timed call: like for like), torch-sdpa (SDPA on its own [1, H, N, D] layout), flex.
  Baselines: pyg-scatter; pyg-transformerconv against graphattn-<b>+proj (both include the same
  q/k/v Linear projections); on CUDA flex-blockmask and dgl-edge_softmax.
- density: fixed N, edges drawn with probability p (no duplicates); graphattn's sparse path vs
  dense SDPA with the boolean mask built from the edge list (the dense alternative for an
  arbitrary graph), plus pyg-scatter and flex-blockmask (and dgl on CUDA): the crossover density.
- skew: equal N and E, uniform vs power-law in-degrees (Zipf exponent) vs one hub node.
- heads: (H, D) pairs at fixed N and E, with the TransformerConv comparison.
- dtype: each dtype on a sparse and a dense case.
- segments: batches of complete graphs (graph transformers): graphattn's segment backends (the
  segment kernel; on CPU also sdpa, SDPA over padded blocks) vs the same pairs as an edge list vs
  padded SDPA with a key-padding mask vs flex-document vs pyg-scatter.
- crossover: batches of complete graphs of narrow size ranges, graphattn's segment backends
  only, every dtype: the rows benchmarks/segment_crossover.py turns into the crossover auto uses
  on CPU (graphattn/segment_crossover.py).

FLOPs = 4·E·H·D forward, x3.5 forward+backward (backward = 2.5x forward); dense E = N^2.
GB/s (sparse forward only) = E·2·H·D·bytes / time. A provider or case that cannot run is a
'skipped' row with its reason; the sweep goes on.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time

from . import common
from .providers import graphattn_backends
from .runner import Runner, make_job

SWEEPS = ("n", "density", "skew", "heads", "dtype", "segments", "crossover")
# Segment sizes of the crossover sweep: ranges about each power of two, so that E / N (the mean
# segment size a node sees, what auto's crossover is expressed in) steps by about 2.
CROSSOVER_RANGES = [(3, 5), (6, 10), (12, 20), (24, 40), (48, 80), (96, 160), (192, 320)]

# Sizes per (device, quick). CPU sizes fit a 2-core, 24 GB machine in tens of minutes per sweep;
# CUDA sizes an 80 GB H100. The per-case caps (memory estimate, --case-timeout, predicted time
# from the previous size) trim what does not fit.
CONFIGS = {
    ("cpu", False): dict(
        degree=16, n_sparse=[2**10, 2**12, 2**14, 2**16, 2**18, 2**20], n_dense=[2**k for k in range(8, 15)],
        density_n=4096, densities=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        skew_n=2**16, heads_n=2**15, heads=[(1, 64), (2, 32), (4, 32), (4, 64), (8, 32), (8, 64), (16, 16), (2, 128)],
        dtype_sparse_n=2**15, dtype_dense_n=2048, dtypes=["float32", "bfloat16", "float16", "float64"],
        segments_n=2**15, segment_ranges=[(4, 16), (16, 64), (64, 256), (256, 1024)],
        crossover_n=2**14, crossover_ranges=CROSSOVER_RANGES,
        repeats=10, budget_s=15.0, timeout_s=300.0),
    ("cuda", False): dict(
        degree=16, n_sparse=[2**12, 2**14, 2**16, 2**18, 2**20, 2**22], n_dense=[2**k for k in range(10, 17)],
        density_n=16384, densities=[0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        skew_n=2**20, heads_n=2**18, heads=[(1, 64), (2, 32), (4, 32), (4, 64), (8, 32), (8, 64), (16, 16), (2, 128),
                                             (8, 128)],
        dtype_sparse_n=2**18, dtype_dense_n=8192, dtypes=["float32", "float16", "bfloat16"],
        segments_n=2**18, segment_ranges=[(4, 16), (16, 64), (64, 256), (256, 1024)],
        crossover_n=2**16, crossover_ranges=CROSSOVER_RANGES,
        repeats=20, budget_s=5.0, timeout_s=300.0),
}
QUICK = dict(
    degree=8, n_sparse=[256, 1024], n_dense=[64, 128], density_n=256, densities=[0.01, 0.1, 1.0],
    skew_n=1024, heads_n=512, heads=[(1, 32), (4, 16)], dtype_sparse_n=512, dtype_dense_n=128,
    segments_n=512, segment_ranges=[(4, 16), (16, 64)], crossover_n=512, crossover_ranges=[(6, 10), (48, 80)],
    repeats=3, budget_s=0.5, timeout_s=90.0)
SKEW_GRAPHS = [("uniform", {"kind": "uniform"}),
               ("power-law s=0.5", {"kind": "power_law", "exponent": 0.5}),
               ("power-law s=1", {"kind": "power_law", "exponent": 1.0}),
               ("power-law s=1.5", {"kind": "power_law", "exponent": 1.5}),
               ("hub 1%", {"kind": "hub", "hub_fraction": 0.01}),
               ("hub 10%", {"kind": "hub", "hub_fraction": 0.1}),
               ("hub 50%", {"kind": "hub", "hub_fraction": 0.5})]
QUICK_SKEW = [SKEW_GRAPHS[0], SKEW_GRAPHS[2], SKEW_GRAPHS[5]]


class Plan:
    """Builds the jobs of the sweeps from the options."""

    def __init__(self, args, device: str):
        self.args = args
        self.device = device
        self.quick = args.quick
        self.cfg = dict(QUICK) if args.quick else dict(CONFIGS[(device, False)])
        for key, value in (("n_sparse", args.n_sparse), ("n_dense", args.n_dense)):
            if value:
                self.cfg[key] = [int(x) for x in value.split(",") if x.strip()]
        if args.n_segments:
            self.cfg["segments_n"] = self.cfg["crossover_n"] = int(args.n_segments)
        if device == "cuda" and args.quick:
            self.cfg["dtypes"] = ["float16", "bfloat16"]
        elif args.quick:
            self.cfg["dtypes"] = ["float32", "bfloat16"]
        self.modes = ["fwd", "fwdbwd"] if args.mode == "both" else [args.mode]
        default_dtype = "float32" if device == "cpu" else "float16"
        self.dtypes = [common.dtype_name(d) for d in (args.dtype.split(",") if args.dtype else [default_dtype])]
        if args.dtype:
            self.cfg["dtypes"] = self.dtypes
        include = args.backends.split(",") if args.backends else None
        self.backends = {form: graphattn_backends(device, form, include) for form in ("csr", "segments", "dense")}
        self.baselines = not args.no_baselines
        # FlexAttention compiles (tens of seconds per job on CPU): left out of --quick unless --providers names it
        self.flex = not args.quick or any(p.strip().startswith("flex") for p in (args.providers or "").split(","))
        self.have_dgl = importlib.util.find_spec("dgl") is not None
        self.repeats = args.repeats or self.cfg["repeats"]
        self.heads, self.head_dim = args.heads, args.head_dim
        # --quick: one thread unless asked, so that tiny cases do not wait on OpenMP barriers of a
        # busy machine (its numbers mean nothing anyway)
        self.threads = args.threads if args.threads is not None else (1 if args.quick else None)

    # ---- providers per form ----
    def ga(self, form):
        return [f"graphattn-{b}" for b in self.backends[form]]

    def sparse_baselines(self, with_mask=False):
        if not self.baselines:
            return []
        out = ["torch-sdpa-mask"] if with_mask else []
        out.append("pyg-scatter")
        # flex-blockmask holds a boolean [N, N] adjacency: on CPU only in the density sweep (N = 4096)
        if (self.device == "cuda" or with_mask) and self.flex:
            out.append("flex-blockmask")
        if self.device == "cuda" and self.have_dgl:
            out.append("dgl-edge_softmax")
        return out

    def dense_baselines(self):
        if not self.baselines:
            return []
        return ["torch-sdpa-blhd", "torch-sdpa"] + (["flex"] if self.flex else [])

    def tconv(self):
        if not self.baselines:
            return []
        return [f"graphattn-{b}+proj" for b in self.backends["csr"]] + ["pyg-transformerconv"]

    def job(self, benchmark, case, provider, form, graph, mode, dtype, heads=None, head_dim=None, note=None,
            series=None):
        return make_job(benchmark=benchmark, case=case, provider=provider, form=form, graph=graph,
                        device=self.device, mode=mode, dtype=dtype, heads=heads or self.heads,
                        head_dim=head_dim or self.head_dim, seed=self.args.seed, warmup=self.args.warmup,
                        repeats=self.repeats, budget_s=self.cfg["budget_s"], note=note, series=series,
                        threads=self.threads)

    # ---- sweeps ----
    def sweep_n(self):
        c, jobs = self.cfg, []
        d = c["degree"]
        for dtype in self.dtypes:
            for mode in self.modes:
                for n in c["n_sparse"]:
                    g = {"kind": "uniform", "n": n, "degree": d}
                    for p in self.ga("csr") + self.sparse_baselines() + self.tconv():
                        jobs.append(self.job("scaling/n", f"sparse d={d}", p, "csr", g, mode, dtype))
                for n in c["n_dense"]:
                    for p in self.ga("dense") + self.dense_baselines():
                        jobs.append(self.job("scaling/n", "dense", p, "dense", {"kind": "dense", "n": n}, mode, dtype))
                    for p in self.ga("csr"):
                        jobs.append(self.job("scaling/n", "dense as edge list", p, "csr", {"kind": "complete", "n": n},
                                             mode, dtype, note="the complete graph (N^2 edges) given as an edge list"))
        return jobs

    def sweep_density(self):
        c, jobs = self.cfg, []
        n = c["density_n"]
        for dtype in self.dtypes:
            for mode in self.modes:
                for p_edge in c["densities"]:
                    g = {"kind": "density", "n": n, "density": p_edge}
                    for p in self.ga("csr") + self.sparse_baselines(with_mask=True):
                        jobs.append(self.job("scaling/density", f"N={n}", p, "csr", g, mode, dtype))
        return jobs

    def sweep_skew(self):
        c, jobs = self.cfg, []
        n, d = c["skew_n"], c["degree"]
        for dtype in self.dtypes:
            for mode in self.modes:
                for label, g in (QUICK_SKEW if self.quick else SKEW_GRAPHS):
                    g = {**g, "n": n, "degree": d}
                    for p in self.ga("csr") + self.sparse_baselines():
                        jobs.append(self.job("scaling/skew", label, p, "csr", g, mode, dtype,
                                             series=f"skew|{label}|{p}|{mode}|{dtype}"))
        return jobs

    def sweep_heads(self):
        c, jobs = self.cfg, []
        n, d = c["heads_n"], c["degree"]
        g = {"kind": "uniform", "n": n, "degree": d}
        for dtype in self.dtypes:
            for mode in self.modes:
                for h, hd in c["heads"]:
                    for p in self.ga("csr") + self.sparse_baselines() + self.tconv():
                        jobs.append(self.job("scaling/heads", f"H={h} D={hd}", p, "csr", g, mode, dtype, heads=h,
                                             head_dim=hd))
        return jobs

    def sweep_dtype(self):
        c, jobs = self.cfg, []
        gs = {"kind": "uniform", "n": c["dtype_sparse_n"], "degree": c["degree"]}
        gd = {"kind": "dense", "n": c["dtype_dense_n"]}
        for dtype in c["dtypes"]:
            for mode in self.modes:
                for p in self.ga("csr") + self.sparse_baselines():
                    jobs.append(self.job("scaling/dtype", f"sparse d={c['degree']}", p, "csr", gs, mode, dtype))
                for p in self.ga("dense") + self.dense_baselines():
                    jobs.append(self.job("scaling/dtype", "dense", p, "dense", gd, mode, dtype))
        return jobs

    def sweep_segments(self):
        c, jobs = self.cfg, []
        for dtype in self.dtypes:
            for mode in self.modes:
                for lo, hi in c["segment_ranges"]:
                    g = {"kind": "batches", "n": c["segments_n"], "min_size": lo, "max_size": hi}
                    case = f"sizes {lo}-{hi}"
                    for p in self.ga("segments"):
                        jobs.append(self.job("scaling/segments", case, p, "segments", g, mode, dtype))
                    for p in self.ga("csr"):
                        jobs.append(self.job("scaling/segments", case + " as edge list", p, "csr", g, mode, dtype))
                    if self.baselines:
                        jobs.append(self.job("scaling/segments", case, "torch-sdpa-padded", "segments", g, mode, dtype))
                        if self.flex:
                            jobs.append(self.job("scaling/segments", case, "flex-document", "segments", g, mode,
                                                 dtype))
                        jobs.append(self.job("scaling/segments", case + " as edge list", "pyg-scatter", "csr", g, mode,
                                             dtype))
        return jobs

    def sweep_crossover(self):
        """graphattn's segment backends (CPU: the kernel and sdpa) on narrow size ranges, every dtype:
        the measurement behind auto's segment crossover (benchmarks/segment_crossover.py)."""
        c, jobs = self.cfg, []
        for dtype in c["dtypes"]:
            for mode in self.modes:
                for lo, hi in c["crossover_ranges"]:
                    g = {"kind": "batches", "n": c["crossover_n"], "min_size": lo, "max_size": hi}
                    for p in self.ga("segments"):
                        jobs.append(self.job("scaling/crossover", f"sizes {lo}-{hi}", p, "segments", g, mode, dtype))
        return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--sweep", default="all", help=f"comma list of {', '.join(SWEEPS)}, or all (default all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: end to end in about a minute on 2 CPU cores")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None,
                   help="comma list (default float32 on CPU, float16 on CUDA); for --sweep dtype, the dtypes to compare")
    p.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both")
    p.add_argument("--heads", type=int, default=4, help="H of every sweep but heads (default 4)")
    p.add_argument("--head-dim", type=int, default=32, help="D of every sweep but heads (default 32)")
    p.add_argument("--backends", default=None, help="comma list of graphattn backends to measure (default: every "
                                                    "available one but reference)")
    p.add_argument("--no-baselines", action="store_true", help="graphattn only")
    p.add_argument("--providers", default=None,
                   help="comma list: keep only the jobs of these providers (e.g. graphattn-cuda,pyg-scatter)")
    p.add_argument("--n-sparse", default=None, help="comma list of N for sweep n's sparse cases (overrides the config)")
    p.add_argument("--n-dense", default=None,
                   help="comma list of N for sweep n's dense and dense-as-edge-list cases (overrides the config)")
    p.add_argument("--n-segments", type=int, default=None,
                   help="total nodes of the segments and crossover sweeps (overrides the config)")
    p.add_argument("--out", help="CSV to append to (default benchmarks/results/<device-slug>.csv; "
                                 "--quick: <tmp>/graphattn-bench/<slug>-quick.csv)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10 CPU, 20 CUDA, 3 quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before measuring (default 1)")
    p.add_argument("--case-timeout", type=float, default=None,
                   help="seconds one case's process may take, setup included (default 300, quick 90)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="skip cases whose estimated memory exceeds this (default 80%% of free RAM / GPU memory)")
    p.add_argument("--isolation", choices=("auto", "forkserver", "spawn", "none"), default="auto",
                   help="process per case: forkserver on CPU, spawn on CUDA (auto); none = in-process (debug)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each measuring process (default: all cores; --quick: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="print the jobs and exit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    sweeps = SWEEPS if args.sweep == "all" else tuple(s.strip() for s in args.sweep.split(","))
    bad = [s for s in sweeps if s not in SWEEPS]
    if bad:
        p.error(f"unknown sweep {bad}; choose from {', '.join(SWEEPS)} or all")
    device = common.resolve_device(args.device)
    plan = Plan(args, device)
    jobs = []
    for s in sweeps:
        jobs += getattr(plan, f"sweep_{s}")()
    if args.providers:
        from .providers import get_provider

        wanted = [x.strip() for x in args.providers.split(",") if x.strip()]
        for name in wanted:
            try:
                get_provider(name)
            except ValueError as exc:
                p.error(str(exc))
        jobs = [j for j in jobs if j["provider"] in wanted]
    if args.list:
        from .providers import get_provider

        limit = args.mem_limit_gb * 2**30 if args.mem_limit_gb else 0.8 * common.available_memory_bytes(device)
        for j in jobs:
            prov = get_provider(j["provider"])
            est = prov.estimate_bytes(j, common.graph_num_edges(j["graph"]))
            why = prov.parent_skip_reason(j)
            flag = f"skip: {why}" if why else ("over the memory cap" if est > limit else "")
            print(f"{j['benchmark']:<18} {j['case']:<24} N={j['N']:<8} {j['provider']:<24} {j['mode']:<6} "
                  f"{j['dtype']:<8} H={j['H']} D={j['D']}  est {common.fmt_bytes(est):>10} {flag}")
        print(f"{len(jobs)} jobs (memory cap {common.fmt_bytes(limit)}; time caps are decided while running)")
        return 0

    out = args.out or common.default_csv(device, args.quick)
    env = common.environment(device)
    print(common.describe_environment(env))
    print(f"sweeps: {', '.join(sweeps)} | device {device} | modes {', '.join(plan.modes)} | "
          f"threads {plan.threads or 'default'} | "
          f"graphattn backends: " + ", ".join(f"{f}={'/'.join(b) or 'none'}" for f, b in plan.backends.items()))
    if device == "cuda" and plan.baselines and not plan.have_dgl:
        print("dgl-edge_softmax: not measured - dgl is not importable")
    if plan.baselines and importlib.util.find_spec("torch_geometric") is None:
        print("pyg-scatter, pyg-transformerconv: skipped - torch_geometric is not installed "
              "(a benchmark-only dependency)")
    print(f"{len(jobs)} jobs -> {out}")
    timeout = args.case_timeout or plan.cfg["timeout_s"]
    runner = Runner(device, out, isolation=args.isolation, timeout_s=timeout, env=env,
                    mem_limit_bytes=args.mem_limit_gb * 2**30 if args.mem_limit_gb else None,
                    progress=not args.no_progress)
    t0 = time.perf_counter()
    rows = runner.run(jobs, desc="scaling")
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"done in {time.perf_counter() - t0:.0f} s: {ok} measured, {len(rows) - ok} skipped -> {out}")
    print(f"plot: python -m benchmarks.plot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
