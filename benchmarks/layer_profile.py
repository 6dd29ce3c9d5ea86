"""Where one layer's forward + backward spends its time: graphattn.nn against PyG, by kind of work.

Issue 14 asks for the profile that explains the layer ratios of `benchmarks.layers --layer`. This
script runs the same layers (GATConv, GATv2Conv, TransformerConv; N = 100,000, E = 1.6M uniform
random edges, F = 128, 4 heads x 32 channels by default) under torch.profiler, after a warm-up
call, and sorts every operator's self time into

  projections        the Linear layers' matrix products (mm, addmm, ...) forward and backward
  attention fwd      graphattn's fused attention kernels, forward
  attention bwd      graphattn's fused attention kernels, backward
  gather/scatter     per-edge gathers and scatters (index, index_select, scatter_add, index_add, ...)
  graph prep         sorting and counting the edge list (sort, searchsorted, bincount, cumsum, ...)
  other              elementwise work (LeakyReLU, exp, softmax pieces, adds), copies, reductions,
                     allocation, and the rest of the autograd engine's own ops

One row per (layer, provider, dtype, category) goes to benchmarks/results/<device>.csv
(benchmark "layer-profile", case "<layer>: <category>", time_median_s = that category's seconds
of the profiled call; the best of --repeats profiled calls by total). The block between the
profile markers of benchmarks/README.md is rewritten from the latest rows.

    python -m benchmarks.layer_profile                       # full size, float32 and bfloat16
    python -m benchmarks.layer_profile --nodes 5000 --out /tmp/p.csv --no-readme
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import common
from .models import init_weights, make_layer, nn_module
from .readme_block import replace_block

LAYERS = ("gat", "gatv2", "transformer")
PROVIDERS = ("graphattn", "pyg")
CATEGORIES = ("projections", "attention fwd", "attention bwd", "gather/scatter", "graph prep", "other")
BENCHMARK = "layer-profile"
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- layer-profile:begin -->", "<!-- layer-profile:end -->"

_GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
_GATHER = ("aten::index", "aten::index_select", "aten::gather", "aten::scatter", "aten::scatter_add",
           "aten::scatter_add_", "aten::scatter_reduce", "aten::scatter_reduce_", "aten::index_add",
           "aten::index_add_", "aten::index_put_", "aten::_index_put_impl_", "aten::embedding_dense_backward",
           "aten::index_select_backward", "aten::segment_reduce", "aten::_segment_reduce_backward")
_PREP = ("aten::sort", "aten::argsort", "aten::searchsorted", "aten::bincount", "aten::cumsum",
         "aten::unique", "aten::_unique2", "aten::repeat_interleave", "aten::histc", "graphattn::checked_index")


def category(op: str) -> str:
    if op.startswith("graphattn::") and "backward" in op:
        return "attention bwd"
    if op.startswith("graphattn::") and ("forward" in op or "attention" in op):
        return "attention fwd"
    if op in _GEMM:
        return "projections"
    if op in _GATHER:
        return "gather/scatter"
    if op in _PREP:
        return "graph prep"
    return "other"


def profile_call(step) -> tuple:
    """(wall seconds, {category: self seconds}) of one profiled call of step()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    split = dict.fromkeys(CATEGORIES, 0.0)
    for ev in prof.key_averages():
        split[category(ev.key)] += ev.self_cpu_time_total / 1e6
    return wall, split


def measure(layer: str, provider: str, dtype: torch.dtype, args) -> tuple:
    graph = common.make_graph({"kind": "uniform", "n": args.nodes, "degree": args.degree, "seed": 0})
    edge_index = graph.edges()
    x, _ = _inputs(args, dtype)
    net = make_layer(nn_module(provider), layer, args.features, args.channels, args.heads).to(dtype)
    init_weights(net, 3)
    grad = None

    def step():
        nonlocal grad
        out = net(x, edge_index)
        if grad is None:
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        out.backward(grad)
        net.zero_grad(set_to_none=True)
        x.grad = None

    step()  # warm-up: the first call prepares graphattn's graph (cached for this edge_index) and any lazy state
    best = None
    for _ in range(args.repeats):
        wall, split = profile_call(step)
        if best is None or wall < best[0]:
            best = (wall, split)
    return graph, best


def _inputs(args, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.nodes, args.features, generator=g).to(dtype).requires_grad_()
    return x, None


def rows_for(layer, provider, dtype, graph, wall, split, args, env) -> list:
    rows = []
    for cat in CATEGORIES + ("total (wall)",):
        seconds = wall if cat == "total (wall)" else split[cat]
        rows.append({
            "benchmark": BENCHMARK, "case": f"{layer}: {cat}", "provider": provider, "mode": "fwdbwd",
            "N": graph.num_nodes, "E": graph.num_edges, "H": args.heads, "D": args.channels,
            "dtype": common.dtype_name(dtype), "degree": args.degree, "time_median_s": seconds,
            "status": "ok", "repeats": args.repeats, "threads": torch.get_num_threads(),
            "note": f"torch.profiler self CPU time by category; best of {args.repeats} profiled calls by wall time",
            **{k: env[k] for k in common.ENV_COLUMNS if k != "date"}, "python": env.get("python"),
            "date": common.utc_now(),
        })
    return rows


def latest_rows(rows) -> list:
    """The layer-profile rows of the latest run (the same commit and hour as the newest row)."""
    rows = [r for r in rows if r["benchmark"] == BENCHMARK and r.get("status", "ok") == "ok"]
    if not rows:
        return []
    last = max(rows, key=lambda r: r["date"])
    return [r for r in rows if r["commit"] == last["commit"] and r["date"][:13] == last["date"][:13]]


def table(rows) -> list:
    """Markdown: per (layer, dtype) a line per provider with each category's seconds and share."""
    if not rows:
        return ["(no layer-profile rows yet: run `python -m benchmarks.layer_profile`)"]
    r0 = rows[0]
    lines = [f"One layer's forward + backward under torch.profiler (`python -m benchmarks.layer_profile`): "
             f"N = {int(r0['N']):,}, E = {int(r0['E']):,}, {r0['H']} heads x {r0['D']} channels, "
             f"{r0['threads']} threads, {r0['device']}, torch {r0['torch']}, commit {r0['commit']}, {r0['date']}. "
             "Seconds of operator self time (share of their sum); total = the call's wall time.", "",
             "| layer | dtype | provider | total | " + " | ".join(CATEGORIES) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in CATEGORIES) + " |"]
    by = {(r["case"], r["provider"], r["dtype"]): float(r["time_median_s"]) for r in rows}
    layers = list(dict.fromkeys(r["case"].split(":")[0] for r in rows))
    for layer in layers:
        for dtype in dict.fromkeys(r["dtype"] for r in rows):
            for provider in PROVIDERS:
                if (f"{layer}: total (wall)", provider, dtype) not in by:
                    continue
                parts = [by.get((f"{layer}: {c}", provider, dtype), 0.0) for c in CATEGORIES]
                total = sum(parts) or 1.0
                cells = [f"{common.fmt_time(p)} ({100 * p / total:.0f}%)" if p else "–" for p in parts]
                lines.append(f"| {layer} | {dtype} | {provider} | "
                             f"{common.fmt_time(by[(f'{layer}: total (wall)', provider, dtype)])} | "
                             + " | ".join(cells) + " |")
    return lines


def update_readme(csv_path, readme: Path = README) -> bool:
    return replace_block(readme, BEGIN, END, "\n".join(table(latest_rows(common.read_rows(csv_path)))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layer_profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--degree", type=float, default=16.0)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="profiled calls per case; the fastest is kept")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="CSV (default benchmarks/results/<device-slug>.csv)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md's profile block")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = common.environment("cpu")
    out = Path(args.out) if args.out else common.default_csv("cpu")
    print(common.describe_environment(env))
    for dtype_name in args.dtypes.split(","):
        dtype = common.parse_dtype(dtype_name)
        for layer in args.layers.split(","):
            for provider in args.providers.split(","):
                graph, (wall, split) = measure(layer, provider, dtype, args)
                common.append_rows(out, rows_for(layer, provider, dtype, graph, wall, split, args, env))
                print(f"{layer:<12} {dtype_name:<9} {provider:<10} wall {common.fmt_time(wall):>9}  "
                      + "  ".join(f"{c} {common.fmt_time(split[c])}" for c in CATEGORIES), flush=True)
    print(f"rows -> {out}")
    if not args.no_readme:
        print("benchmarks/README.md profile block", "rewritten" if update_readme(out) else "NOT FOUND (add the markers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
