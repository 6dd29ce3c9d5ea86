"""Draw the results CSV as PNGs (matplotlib, Agg backend).

    python -m benchmarks.plot benchmarks/results/<device-slug>.csv [--outdir DIR] [--prefix NAME]

Writes <outdir>/<prefix>-<figure>.png, by default next to the CSV with the CSV's name as the
prefix (benchmarks/results/<device-slug>-*.png):
- n-time, n-memory: time / extra peak memory of the call vs N, log-log, sparse (fixed degree) vs
  dense vs dense-as-edge-list, with slope guides ∝N and ∝N²; n-memory-total: the same for the
  whole footprint (inputs + prepared pattern + edge list + the call's extra peak);
- density: time vs edge density at fixed N, log-log, with the crossover between graphattn's
  sparse path and masked dense SDPA marked;
- skew, heads, dtype, segments, cpu_vs_pyg: grouped bars of time and extra peak memory.
A figure whose data is not in the CSV is not drawn. When a case was measured more than once,
the last row wins. Only rows with status 'ok' are drawn.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import common  # noqa: E402

_NUM = ("N", "E", "H", "D", "density", "degree", "skew", "time_median_s", "time_p20_s", "time_p80_s", "tflops",
        "gbps", "peak_mem_bytes", "total_mem_bytes", "prep_mem_bytes")
MODES = ("fwd", "fwdbwd")
MODE_TITLE = {"fwd": "forward", "fwdbwd": "forward + backward"}


def _float(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def load(path) -> list:
    """Rows with status ok (or no status column), numbers parsed, the last of duplicates kept."""
    latest = OrderedDict()
    for r in common.read_rows(path):
        if r.get("status", "ok") not in ("ok", ""):
            continue
        for k in _NUM:
            if k in r:
                r[k] = _float(r[k])
        key = tuple(r.get(k) for k in ("benchmark", "case", "provider", "mode", "dtype", "H", "D", "N", "E",
                                       "device"))
        latest.pop(key, None)
        latest[key] = r
    return [r for r in latest.values() if not math.isnan(r.get("time_median_s", math.nan))]


def crossover(xs, t_sparse, t_dense):
    """First x where the sparse time rises above the dense time, interpolated in log-log between the
    two measured densities around it; None if there is no sign change."""
    pts = sorted((x, a, b) for x, a, b in zip(xs, t_sparse, t_dense) if x > 0 and a > 0 and b > 0)
    for (x0, a0, b0), (x1, a1, b1) in zip(pts, pts[1:]):
        r0, r1 = math.log(a0 / b0), math.log(a1 / b1)
        if r0 < 0 <= r1 or r0 > 0 >= r1:
            if r1 == r0:
                return x1
            f = -r0 / (r1 - r0)
            return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0)))
    return None


def _modes(rows):
    return [m for m in MODES if any(r["mode"] == m for r in rows)] or sorted({r["mode"] for r in rows})


def _label(r, multi_dtype):
    s = r["provider"]
    if r.get("case"):
        s += f" [{r['case']}]"
    if multi_dtype:
        s += f" {r['dtype']}"
    return s


def _series(rows, multi_dtype):
    groups = defaultdict(list)
    for r in rows:
        groups[_label(r, multi_dtype)].append(r)
    return groups


def _style(label):
    """graphattn solid, baselines dashed; same provider family, same marker."""
    ls = "-" if label.startswith("graphattn") else "--"
    marker = {"dense": "s", "edge list": "^"}.get(next((k for k in ("edge list", "dense") if k in label), ""), "o")
    return dict(linestyle=ls, marker=marker, markersize=4, linewidth=1.4)


def _slope_guides(ax, xs, ys):
    """Dashed gray ∝N and ∝N² lines through the smallest-N median point."""
    pts = sorted((x, y) for x, y in zip(xs, ys) if x > 0 and y > 0)
    if len(pts) < 2:
        return
    x0 = pts[0][0]
    x1 = pts[-1][0]
    at_x0 = sorted(y for x, y in pts if x == x0)
    ymed = at_x0[len(at_x0) // 2]
    for power, text in ((1, "∝N"), (2, "∝N²")):
        ax.plot([x0, x1], [ymed, ymed * (x1 / x0) ** power], color="0.6", linestyle=":", linewidth=1)
        ax.annotate(text, (x1, ymed * (x1 / x0) ** power), color="0.4", fontsize=8)


def _title(fig, rows, what):
    env = rows[0]
    fig.suptitle(f"{what}\n{env.get('device', '?')}, torch {env.get('torch', '?')}, commit {env.get('commit', '?')}",
                 fontsize=10)


def plot_vs_n(rows, out_prefix, metric, ylabel, name):
    rows = [r for r in rows if r["benchmark"] == "scaling/n" and r.get(metric, math.nan) > 0]
    if not rows:
        return None
    modes = _modes(rows)
    multi_dtype = len({r["dtype"] for r in rows}) > 1
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mrows = [r for r in rows if r["mode"] == mode]
        for label, rs in sorted(_series(mrows, multi_dtype).items()):
            rs = sorted(rs, key=lambda r: r["N"])
            ax.plot([r["N"] for r in rs], [r[metric] for r in rs], label=label, **_style(label))
        _slope_guides(ax, [r["N"] for r in mrows], [r[metric] for r in mrows])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (nodes / tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(MODE_TITLE.get(mode, mode), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _title(fig, rows, f"{ylabel} vs N")
    fig.tight_layout()
    path = f"{out_prefix}-{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_density(rows, out_prefix):
    rows = [r for r in rows if r["benchmark"] == "scaling/density"]
    if not rows:
        return None, []
    modes = _modes(rows)
    multi_dtype = len({r["dtype"] for r in rows}) > 1
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5), squeeze=False)
    notes = []
    for ax, mode in zip(axes[0], modes):
        mrows = [r for r in rows if r["mode"] == mode]
        series = _series(mrows, multi_dtype)
        for label, rs in sorted(series.items()):
            rs = sorted(rs, key=lambda r: r["density"])
            ax.plot([r["density"] for r in rs], [r["time_median_s"] for r in rs], label=label, **_style(label))
        # crossover: each graphattn sparse series vs the masked dense SDPA of the same case/dtype
        for label, rs in sorted(series.items()):
            if not label.startswith("graphattn"):
                continue
            dense_label = label.replace(rs[0]["provider"], "torch-sdpa-mask", 1)
            if dense_label not in series:
                continue
            dense = {r["density"]: r["time_median_s"] for r in series[dense_label]}
            pts = [(r["density"], r["time_median_s"], dense[r["density"]]) for r in rs if r["density"] in dense]
            x = crossover(*zip(*pts)) if pts else None
            if x is not None:
                ax.axvline(x, color="crimson", linestyle=":", linewidth=1.2)
                ax.text(x, 0.03, f" crossover\n density ≈ {x:.3g}", transform=ax.get_xaxis_transform(),
                        color="crimson", fontsize=8)
                notes.append(f"{mode}: {rs[0]['provider']} vs torch-sdpa-mask cross at density ≈ {x:.3g}")
            else:
                faster = all(a < b for _, a, b in pts)
                notes.append(f"{mode}: {rs[0]['provider']} vs torch-sdpa-mask: no crossover in range "
                             f"({'sparse' if faster else 'dense'} faster at every measured density)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edge density E / N²")
        ax.set_ylabel("time per call (s)")
        n = sorted({int(r["N"]) for r in mrows})
        ax.set_title(f"{MODE_TITLE.get(mode, mode)}, N = {', '.join(map(str, n))}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _title(fig, rows, "time vs density: sparse edge list vs dense masked SDPA")
    fig.tight_layout()
    path = f"{out_prefix}-density.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, notes


def plot_bars(rows, out_prefix, benchmark, name, category=lambda r: r["case"]):
    rows = [r for r in rows if r["benchmark"] == benchmark]
    if not rows:
        return None
    modes = _modes(rows)
    multi_dtype = benchmark != "scaling/dtype" and len({r["dtype"] for r in rows}) > 1
    cats = list(OrderedDict.fromkeys(category(r) + (f" {r['dtype']}" if multi_dtype else "") for r in rows))
    providers = list(OrderedDict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(2, len(modes), figsize=(max(6.5, 0.9 * len(cats) + 3) * len(modes), 8), squeeze=False)
    width = 0.8 / max(1, len(providers))
    for col, mode in enumerate(modes):
        index = {(category(r) + (f" {r['dtype']}" if multi_dtype else ""), r["provider"]): r
                 for r in rows if r["mode"] == mode}
        for row, (metric, ylabel) in enumerate((("time_median_s", "time per call (s)"),
                                                 ("peak_mem_bytes", "extra peak memory (bytes)"))):
            ax = axes[row][col]
            for i, prov in enumerate(providers):
                xs, ys = [], []
                for j, c in enumerate(cats):
                    r = index.get((c, prov))
                    if r is not None and r.get(metric, math.nan) > 0:
                        xs.append(j + (i - (len(providers) - 1) / 2) * width)
                        ys.append(r[metric])
                if xs:
                    ax.bar(xs, ys, width=width, label=prov)
            ax.set_yscale("log")
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(MODE_TITLE.get(mode, mode), fontsize=10)
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=7)
    _title(fig, rows, benchmark)
    fig.tight_layout()
    path = f"{out_prefix}-{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(csv_path, outdir=None, prefix=None) -> list:
    csv_path = Path(csv_path)
    rows = load(csv_path)
    outdir = Path(outdir) if outdir else csv_path.parent
    outdir.mkdir(parents=True, exist_ok=True)
    out_prefix = str(outdir / (prefix or csv_path.stem))
    written = []
    if not rows:
        print(f"{csv_path}: no measured rows to plot")
        return written
    written.append(plot_vs_n(rows, out_prefix, "time_median_s", "time per call (s)", "n-time"))
    written.append(plot_vs_n(rows, out_prefix, "peak_mem_bytes", "extra peak memory (bytes)", "n-memory"))
    written.append(plot_vs_n(rows, out_prefix, "total_mem_bytes", "total memory: inputs + pattern + call (bytes)",
                             "n-memory-total"))
    path, notes = plot_density(rows, out_prefix)
    written.append(path)
    for note in notes:
        print(f"density crossover: {note}")
    written.append(plot_bars(rows, out_prefix, "scaling/skew", "skew"))
    written.append(plot_bars(rows, out_prefix, "scaling/heads", "heads"))
    written.append(plot_bars(rows, out_prefix, "scaling/dtype", "dtype", category=lambda r: f"{r['case']} {r['dtype']}"))
    written.append(plot_bars(rows, out_prefix, "scaling/segments", "segments"))
    written.append(plot_bars(rows, out_prefix, "cpu_vs_pyg", "cpu_vs_pyg",
                             category=lambda r: f"N={int(r['N'])} E={int(r['E'])}"))
    written = [w for w in written if w]
    for w in written:
        print(f"wrote {w}")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="a results CSV (benchmarks/results/<device-slug>.csv)")
    p.add_argument("--outdir", help="where the PNGs go (default: the CSV's folder)")
    p.add_argument("--prefix", help="file-name prefix (default: the CSV's name without .csv)")
    args = p.parse_args(argv)
    if not Path(args.csv).exists():
        p.error(f"{args.csv} does not exist")
    plot_all(args.csv, args.outdir, args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
