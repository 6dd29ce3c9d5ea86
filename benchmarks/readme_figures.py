"""Write the README's measured figures from benchmarks/results/*.csv.

    python -m benchmarks.readme_figures          # rewrites the block between the figures markers

Every number in that block comes from a CSV row (device, versions, commit and date
are shown with it), so the README never holds a hand-typed measurement. For each
results file: the latest cpu_vs_pyg (or GPU sparse) comparison with its ratios,
the latest benchmarks.layers runs of each model and dtype (one layer's forward + backward with
--layer, and training steps; vs PyG's and DGL's layers, each provider's best round), and the plots
drawn from that file by benchmarks/plot.py.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import common, plot
from .cpu_vs_pyg import bandwidth_fraction
from .readme_block import replace_block
from .readme_tables import lines_for as dense_and_segment_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def _latest_run(rows, benchmark):
    """The rows of `benchmark` from its most recent run: the same `run` (the start of a
    benchmarks.layers run, which may take hours over its rounds), or for rows without one the same
    commit and date prefix."""
    rows = [r for r in rows if r["benchmark"] == benchmark]
    if not rows:
        return []
    last = max(rows, key=lambda r: r["date"])
    if last.get("run"):
        return [r for r in rows if r.get("run") == last["run"]]
    return [r for r in rows if r["commit"] == last["commit"] and r["date"][:13] == last["date"][:13]]


def _gbps_cell(r) -> str:
    try:
        value = float(r.get("gbps"))
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else f"{value:.1f}"


def _comparison_table(rows):
    """The cpu_vs_pyg run's rows (one or more dtypes): a table, then per dtype the ratios against
    the PyG-style baseline and the forward's fraction of the copy bandwidth, and each half
    dtype's forward+backward time relative to float32 (issue 14's target: <= 0.6)."""
    lines = ["| provider | dtype | mode | median time | p20–p80 | GB/s | extra peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['dtype']} | {r['mode']} | {common.fmt_time(r['time_median_s'])} | "
                     f"{common.fmt_time(r['time_p20_s'])}–{common.fmt_time(r['time_p80_s'])} | {_gbps_cell(r)} | "
                     f"{common.fmt_bytes(r['peak_mem_bytes'])} |")
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    for dtype in dtypes:
        of_dtype = [r for r in rows if r["dtype"] == dtype]
        by = {(r["provider"], r["mode"]): r for r in of_dtype}
        for mode in ("fwd", "fwdbwd"):
            ours, base = by.get(("graphattn-cpu", mode)), by.get(("pyg-scatter", mode))
            if ours and base:
                lines += ["", f"{dtype} {mode}: graphattn is **{base['time_median_s'] / ours['time_median_s']:.1f}×** "
                              f"faster than the PyG-style baseline and uses "
                              f"**{ours['peak_mem_bytes'] / base['peak_mem_bytes']:.3f}×** its extra peak memory."]
        pair = bandwidth_fraction(of_dtype, "graphattn-cpu")
        if pair:
            ours, copy = pair
            lines += ["", f"{dtype} fwd bandwidth: graphattn moves **{ours:.1f} GB/s** (K/V rows gathered + Q/out "
                          f"streamed), **{100 * ours / copy:.0f}%** of the copy bandwidth measured in the same run "
                          f"({copy:.1f} GB/s, read + write)."]
    times = {(r["dtype"], r["mode"]): float(r["time_median_s"]) for r in rows if r["provider"] == "graphattn-cpu"}
    for dtype in ("bfloat16", "float16"):
        for mode in ("fwd", "fwdbwd"):
            if (dtype, mode) in times and ("float32", mode) in times:
                lines += ["", f"{dtype} {mode}: **{times[(dtype, mode)] / times[('float32', mode)]:.2f}×** the float32 "
                              "time (separate runs of one session)."]
    return lines


def _best(run, provider):
    """The ok row of `provider` with the lowest median time in `run` (its best round), or None."""
    ok = [r for r in run if r["provider"] == provider and r.get("status", "ok") in ("ok", "")
          and r["time_median_s"] not in ("", None)]
    return min(ok, key=lambda r: float(r["time_median_s"])) if ok else None


_TITLES = {
    "layers": ("**Training step of whole models vs PyG's and DGL's layers** (`python -m benchmarks.layers`; "
               "power-law graph, H heads × D hidden channels; each provider's best round):", "step"),
    "layer": ("**One layer, forward + backward, vs PyG and DGL** (`python -m benchmarks.layers --layer`; uniform "
              "random graph, H heads × D channels, heads concatenated; each provider's best round):", "fwd+bwd"),
}


def _layers_lines(rows, benchmark="layers"):
    """`benchmarks.layers` (benchmark "layers": training steps; "layer": one layer's forward +
    backward): per (model, dtype, graph size) the latest run of that case, each provider's best
    round, graphattn.nn against PyG and DGL measured in that same run (a later run of one model
    does not hide the others). `rows`: the CSV's rows as read (every round, skipped ones too)."""
    layer_rows = [r for r in rows if r["benchmark"] == benchmark]
    if not layer_rows:
        return []
    title, what = _TITLES[benchmark]
    lines = [title, "",
             f"| model | dtype | N | E | H × D | graphattn {what} | pyg {what} | dgl {what} | pyg / graphattn time | "
             "dgl / graphattn time | graphattn / pyg peak memory | graphattn / dgl peak memory | rounds | "
             "commit, date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys((r["case"], r["dtype"], r["N"]) for r in layer_rows):
        case_rows = [r for r in layer_rows if (r["case"], r["dtype"], r["N"]) == key]
        run = _latest_run(case_rows, benchmark)
        ours = _best(run, "graphattn")
        cells = {}
        for name in ("pyg", "dgl"):
            base = _best(run, name)
            measured = any(r["provider"] == name for r in run)
            cells[name] = (common.fmt_time(base["time_median_s"]) if base else ("skipped" if measured else "–"))
            speed = mem = "–"
            if ours and base:
                speed = f"{float(base['time_median_s']) / float(ours['time_median_s']):.2f}×"
                mem = (f"{float(ours['peak_mem_bytes']) / float(base['peak_mem_bytes']):.3f}"
                       if float(base["peak_mem_bytes"] or 0) else "–")
            cells[name + "_speed"], cells[name + "_mem"] = speed, mem
        model, dtype, n = key
        rounds = max(int(r.get("round") or 1) for r in run)
        lines.append(f"| {model} | {dtype} | {int(n):,} | {int(run[0]['E']):,} | {run[0]['H']} × {run[0]['D']} | "
                     f"{common.fmt_time(ours['time_median_s']) if ours else 'skipped'} | {cells['pyg']} | "
                     f"{cells['dgl']} | {cells['pyg_speed']} | {cells['dgl_speed']} | {cells['pyg_mem']} | "
                     f"{cells['dgl_mem']} | {rounds} | {run[0]['commit']}, {run[0]['date']} |")
    return lines + [""]


# The n^2-vs-sparse scaling plots first: they are what the README is read for.
_FIRST = ("n-time", "n-memory", "n-memory-total", "density")


def _plot_order(png: Path):
    for rank, name in enumerate(_FIRST):
        if png.stem.endswith("-" + name):
            return (rank, png.name)
    return (len(_FIRST), png.name)


def section_for(csv_path: Path) -> list:
    rows = plot.load(csv_path)
    if not rows:
        return []
    env = rows[-1]
    lines = [f"### {env['device']}", "",
             f"From `{csv_path.relative_to(ROOT)}` (torch {env['torch']}, triton {env['triton'] or '-'}, "
             f"CUDA {env['cuda'] or '-'}).", ""]
    run = _latest_run(rows, "cpu_vs_pyg")
    if run:
        r0 = run[0]
        dtypes = ", ".join(dict.fromkeys(r["dtype"] for r in run))
        lines += [f"**Sparse attention vs PyG** (`python -m benchmarks.cpu_vs_pyg --mode both`): N = {int(r0['N']):,}, "
                  f"E = {int(r0['E']):,}, H = {int(r0['H'])}, D = {int(r0['D'])}, {dtypes}, "
                  f"commit {r0['commit']}, {r0['date']}.", ""]
        lines += _comparison_table(run) + [""]
    raw = common.read_rows(csv_path)  # every round and skip (plot.load keeps the last ok row of a case)
    lines += _layers_lines(raw, "layer")
    lines += _layers_lines(raw, "layers")
    lines += dense_and_segment_tables(rows)  # dense like for like, segments, the CPU crossover
    for png in sorted(RESULTS.glob(f"{csv_path.stem}-*.png"), key=_plot_order):
        lines.append(f"![{png.stem}]({png.relative_to(ROOT)})")
    return lines + [""]


def render() -> str:
    sections = [line for csv_path in sorted(RESULTS.glob("*.csv")) for line in section_for(csv_path)]
    return "\n".join(sections).strip() or "(no measurements committed yet)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    if not replace_block(Path(args.readme), BEGIN, END, render()):
        raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} block")
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
