"""Tables of the README's figures block (benchmarks/readme_figures.py) for the dense and segment
paths, from a results CSV's rows and graphattn/segment_crossover.py (itself generated from CSV
rows by benchmarks/segment_crossover.py): no number here is typed.

- dense, like for like: graphattn's dense path against SDPA on the same [1, N, H, D] data
  (torch-sdpa-blhd), SDPA on its own [1, H, N, D] layout (torch-sdpa) and FlexAttention (flex),
  from the dtype sweep and the dense cases of the N sweep;
- segments: graphattn's segment backends (the kernel, and on CPU SDPA over padded blocks) against
  padded SDPA and flex-document, with the backend auto takes for the case under the committed
  crossover.
"""
from __future__ import annotations

from . import common

DENSE_PROVIDERS = ("torch-sdpa-blhd", "torch-sdpa", "flex")
SEGMENT_BASELINES = ("torch-sdpa-padded", "flex-document")


def _time(r):
    return common.fmt_time(r["time_median_s"]) if r else "–"


def _ratio(ours, base):
    return f"{ours['time_median_s'] / base['time_median_s']:.3f}" if ours and base else "–"


def _stamp(rows):
    last = max(rows, key=lambda r: r["date"])
    return f"commit {last['commit']}, {last['date']}"


def dense_lines(rows) -> list:
    """graphattn-<b> (dense) vs the dense baselines, per case, N, dtype and mode (rows: plot.load's)."""
    dense = [r for r in rows if r["benchmark"] in ("scaling/dtype", "scaling/n") and r["case"] == "dense"]
    ours_names = sorted({r["provider"] for r in dense if r["provider"].startswith("graphattn-")})
    if not dense or not any(r["provider"] == "torch-sdpa-blhd" for r in dense):
        return []
    by = {(r["benchmark"], r["N"], r["dtype"], r["mode"], r["provider"]): r for r in dense}
    lines = ["**Dense path, like for like** (`python -m benchmarks.scaling --sweep dtype,n`): graphattn's dense "
             "path against SDPA given the same `[1, N, H, D]` data (`torch-sdpa-blhd`: transposed to `[1, H, N, D]` "
             "views inside the timed call), SDPA on its own contiguous `[1, H, N, D]` layout (`torch-sdpa`) and "
             "FlexAttention (`flex`, forward only on CPU); ratio = graphattn time / baseline time (1.05 = 5% slower). "
             f"H = {int(dense[0]['H'])}, D = {int(dense[0]['D'])}; {_stamp(dense)}.", "",
             "| sweep | N | dtype | mode | graphattn | time | " + " | ".join(
                 f"{p} | ratio" for p in DENSE_PROVIDERS) + " |",
             "| --- | --- | --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in DENSE_PROVIDERS) + " |"]
    keys = sorted({k[:4] for k in by}, key=lambda k: (k[0] != "scaling/dtype", k[1], k[2], k[3]))
    for bench, n, dtype, mode in keys:
        for name in ours_names:
            ours = by.get((bench, n, dtype, mode, name))
            if not ours:
                continue
            cells = []
            for p in DENSE_PROVIDERS:
                base = by.get((bench, n, dtype, mode, p))
                cells.append(f"{_time(base)} | {_ratio(ours, base)}")
            lines.append(f"| {bench.split('/')[1]} | {int(n):,} | {dtype} | {mode} | {name} | {_time(ours)} | "
                         + " | ".join(cells) + " |")
    return lines + [""]


def _auto_choice(r) -> str:
    """The backend auto takes for this segments case on CPU under graphattn/segment_crossover.py."""
    from graphattn import dispatch
    from graphattn.backends import Call

    call = Call("segments", "cpu", common.parse_dtype(r["dtype"]), int(r["H"]), int(r["D"]), int(r["D"]), False,
                False, False, False, segment_degree=float(r["degree"]), needs_grad=r["mode"] == "fwdbwd")
    return dispatch.choose(call).name


def segment_lines(rows) -> list:
    seg = [r for r in rows if r["benchmark"] == "scaling/segments" and not r["case"].endswith("as edge list")]
    if not seg or not any(r["provider"] == "graphattn-sdpa" for r in seg):
        return []
    ours_names = sorted({r["provider"] for r in seg if r["provider"].startswith("graphattn-")})
    columns = ours_names + [p for p in SEGMENT_BASELINES if any(r["provider"] == p for r in seg)]
    by = {(r["case"], r["dtype"], r["mode"], r["provider"]): r for r in seg}
    cpu = "graphattn-cpu" in ours_names  # CPU rows: auto's choice there follows the crossover
    lines = ["**Segments** (`python -m benchmarks.scaling --sweep segments`; batches of complete graphs, sizes "
             "uniform in the range): the segment kernel (`graphattn-cpu`), SDPA over padded blocks "
             "(`graphattn-sdpa`), padded SDPA with a key-padding mask and FlexAttention with a document mask"
             + ("; `auto`: the backend `graphattn.attention` takes for the case under "
                "`graphattn/segment_crossover.py`" if cpu else "") + f". {_stamp(seg)}.", "",
             "| case | E / N | dtype | mode | " + " | ".join(columns) + (" | auto |" if cpu else " |"),
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in columns) + (" | --- |" if cpu else " |")]
    for case, dtype, mode in dict.fromkeys(k[:3] for k in by):
        any_row = next(by[k] for k in by if k[:3] == (case, dtype, mode))
        cells = [_time(by.get((case, dtype, mode, p))) for p in columns]
        auto = f" | {_auto_choice(any_row)}" if cpu else ""
        lines.append(f"| {case} | {any_row['degree']:.3g} | {dtype} | {mode} | " + " | ".join(cells) + auto + " |")
    return lines + [""]


def crossover_lines() -> list:
    """The committed crossover (graphattn/segment_crossover.py) with the data it was made from."""
    from graphattn import segment_crossover as sc

    if not sc.THRESHOLDS:
        return []
    lines = ["**Segment crossover on CPU** (`graphattn/segment_crossover.py`, written by `python -m "
             "benchmarks.segment_crossover --measure`): `auto` sends a segments call to SDPA over padded blocks "
             "from this mean segment size E / N on (forward; forward + backward), else to the segment kernel. "
             f"Measured on {sc.DEVICE}, torch {sc.TORCH}, commit {sc.COMMIT}, {sc.DATE}.", "",
             "| dtype | fwd | fwd+bwd |", "| --- | --- | --- |"]
    for dtype in dict.fromkeys(d for d, _ in sc.THRESHOLDS):
        cells = []
        for mode in ("fwd", "fwdbwd"):
            value = sc.THRESHOLDS.get((dtype, mode), "missing")
            cells.append("kernel always" if value is None else ("–" if value == "missing" else f"{value:g}"))
        lines.append(f"| {dtype} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def lines_for(rows) -> list:
    """Every table for one results CSV (`rows` as plot.load gives them); the crossover (which
    names the machine it was measured on) with the CPU segment rows."""
    segments = segment_lines(rows)
    cpu = any(r["benchmark"] == "scaling/segments" and r["provider"] == "graphattn-cpu" for r in rows)
    return dense_lines(rows) + segments + (crossover_lines() if segments and cpu else [])
