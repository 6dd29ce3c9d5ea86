"""Write the README's measured figures from benchmarks/results/*.csv.

    python -m benchmarks.readme_figures          # rewrites the block between the figures markers

Every number in that block comes from a CSV row (device, versions, commit and date
are shown with it), so the README never holds a hand-typed measurement. For each
results file: the latest cpu_vs_pyg (or GPU sparse) comparison with its ratios,
the latest benchmarks.layers run of each model and dtype (training steps vs PyG's layers), and the plots
drawn from that file by benchmarks/plot.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import common, plot
from .readme_block import replace_block

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def _latest_run(rows, benchmark):
    """The rows of `benchmark` from its most recent run (same commit and date prefix)."""
    rows = [r for r in rows if r["benchmark"] == benchmark]
    if not rows:
        return []
    last = max(rows, key=lambda r: r["date"])
    return [r for r in rows if r["commit"] == last["commit"] and r["date"][:13] == last["date"][:13]]


def _comparison_table(rows):
    lines = ["| provider | mode | median time | p20–p80 | extra peak memory |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['mode']} | {common.fmt_time(r['time_median_s'])} | "
                     f"{common.fmt_time(r['time_p20_s'])}–{common.fmt_time(r['time_p80_s'])} | "
                     f"{common.fmt_bytes(r['peak_mem_bytes'])} |")
    by = {(r["provider"], r["mode"]): r for r in rows}
    for mode in ("fwd", "fwdbwd"):
        ours, base = by.get(("graphattn-cpu", mode)), by.get(("pyg-scatter", mode))
        if ours and base:
            lines.append("")
            lines.append(f"{mode}: graphattn is **{base['time_median_s'] / ours['time_median_s']:.1f}×** faster than "
                         f"the PyG-style baseline and uses **{ours['peak_mem_bytes'] / base['peak_mem_bytes']:.3f}×** "
                         "its extra peak memory.")
    return lines


def _layers_lines(rows):
    """`benchmarks.layers`: per (model, dtype, graph size) the latest run of that case, graphattn.nn vs
    PyG measured in that same run (a later run of one model does not hide the others)."""
    layer_rows = [r for r in rows if r["benchmark"] == "layers"]
    if not layer_rows:
        return []
    lines = ["**Training step of whole models vs PyG's layers** (`python -m benchmarks.layers`; power-law graph, "
             "H heads of 64 hidden channels):", "",
             "| model | dtype | N | E | graphattn step | pyg step | pyg / graphattn time | "
             "graphattn / pyg peak memory | commit, date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys((r["case"], r["dtype"], r["N"]) for r in layer_rows):
        case_rows = [r for r in layer_rows if (r["case"], r["dtype"], r["N"]) == key]
        run = _latest_run(case_rows, "layers")
        ours = next((r for r in run if r["provider"] == "graphattn" and r["status"] == "ok"), None)
        base = next((r for r in run if r["provider"] == "pyg" and r["status"] == "ok"), None)
        speed = mem = "–"
        if ours and base:
            speed = f"{base['time_median_s'] / ours['time_median_s']:.2f}×"
            mem = f"{ours['peak_mem_bytes'] / base['peak_mem_bytes']:.3f}" if base["peak_mem_bytes"] else "–"
        model, dtype, n = key
        lines.append(f"| {model} | {dtype} | {int(n):,} | {int(run[0]['E']):,} | "
                     f"{common.fmt_time(ours['time_median_s']) if ours else 'skipped'} | "
                     f"{common.fmt_time(base['time_median_s']) if base else 'skipped'} | {speed} | {mem} | "
                     f"{run[0]['commit']}, {run[0]['date']} |")
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
        lines += [f"**Sparse attention vs PyG** (`python -m benchmarks.cpu_vs_pyg --mode both`): N = {int(r0['N']):,}, "
                  f"E = {int(r0['E']):,}, H = {int(r0['H'])}, D = {int(r0['D'])}, {r0['dtype']}, "
                  f"commit {r0['commit']}, {r0['date']}.", ""]
        lines += _comparison_table(run) + [""]
    lines += _layers_lines(rows)
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
