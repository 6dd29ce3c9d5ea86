"""`make gpu-check`: its CPU rehearsal runs end to end (what CI relies on to catch a renamed test
file, a missing benchmark flag or a broken import before a GPU session does), the rehearsal
really fails on those, the 8-minute budget holds by construction, and the summary's ratios."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from benchmarks import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the real `make gpu-check`, not its rehearsal")
def test_dry_rehearsal_end_to_end(tmp_path):
    """`python -m benchmarks.gpu_check --dry`: every step's CPU part passes, OUT holds at most 8
    files, and the printed GPU commands are the real ones (CUDA device, the sanitizers, xdist)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry", "--out", str(out)],
                          cwd=_REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "summary.md" in files, files
    summary = (out / "summary.md").read_text()
    for step in gpu_check.plan(out, "python3", dry=False, as_on_gpu_image=True):
        assert f"| {step.name} | ok |" in summary, summary
    assert "compute-sanitizer --tool memcheck" in summary and "compute-sanitizer --tool racecheck" in summary
    assert "benchmarks.scaling --device cuda" in summary and "benchmarks.layers --device cuda" in summary
    assert "-n 12 --dist loadfile" in summary  # the GPU image's 16 cores, pytest-xdist
    assert "GRAPHATTN_CUDA_ARCHS=90" in summary
    tests_log = (out / "tests.log").read_text()
    counts = gpu_check.collected_files(tests_log)
    assert all(counts.get(f) for f in gpu_check.GPU_TEST_FILES), counts
    assert "calls ok, 0 failed on cpu" in (out / "memcheck.log").read_text()


def test_collection_check_catches_a_renamed_test_file():
    good = "\n".join(f"{f}::test_x" for f in gpu_check.GPU_TEST_FILES) + "\n\n9 tests collected in 1.0s\n"
    assert gpu_check._check_collection(good) is None
    renamed = good.replace("tests/test_cuda_backend.py::", "tests/test_cuda_backends.py::")
    why = gpu_check._check_collection(renamed)
    assert why and "tests/test_cuda_backend.py" in why


def test_rehearsal_catches_a_missing_benchmark_flag(tmp_path):
    """A flag the benchmark script does not have fails its rehearsal (argument parsing), as an
    unknown provider name does."""
    steps = {s.name: s for s in gpu_check.plan(tmp_path, sys.executable, dry=True)}
    bench = steps["bench"]
    bench.dry_cmds = [bench.dry_cmds[0] + ["--no-such-flag"]]
    layers = steps["layers"]
    layers.dry_cmds = [[*layers.dry_cmds[0][:3], "--providers", "graphattn,nope", *layers.dry_cmds[0][3:]]]
    results = {r["name"]: r for r in gpu_check.run_steps([bench, layers], tmp_path, True, sys.executable)}
    assert results["bench"]["status"] == "failed" and "--no-such-flag" in results["bench"]["output"]
    assert results["layers"]["status"] == "failed" and "nope" in results["layers"]["output"]


def test_budget_fits_eight_minutes_and_eight_files(tmp_path):
    """Steps of one group run side by side, groups one after another: the sum over groups of the
    largest time limit is the worst case, which must leave time for the summary within 480 s."""
    steps = gpu_check.plan(tmp_path, "python3", dry=False, as_on_gpu_image=True)
    groups = {}
    for s in steps:
        groups[s.group] = max(groups.get(s.group, 0), s.timeout_s)
    assert sum(groups.values()) <= 470, groups
    assert all(s.estimate_s <= s.timeout_s for s in steps)
    assert len({s.log for s in steps} | {"bench.csv", "summary.md"}) <= 8


def test_summary_ratios_come_from_the_csv(tmp_path):
    rows = [
        dict(benchmark="scaling/n", case="sparse d=16", provider="graphattn-cuda", mode="fwd", dtype="bfloat16",
             N="1000", E="16000", time_median_s="0.002", peak_mem_bytes="1000", tflops="1.5", status="ok"),
        dict(benchmark="scaling/n", case="sparse d=16", provider="pyg-scatter", mode="fwd", dtype="bfloat16",
             N="1000", E="16000", time_median_s="0.010", peak_mem_bytes="25000", tflops="0.3", status="ok"),
        dict(benchmark="scaling/n", case="sparse d=16", provider="flex-blockmask", mode="fwd", dtype="bfloat16",
             N="1000", E="16000", time_median_s="", peak_mem_bytes="", tflops="", status="skipped",
             reason="timed out"),
    ]
    path = tmp_path / "bench.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["reason"])
        w.writeheader()
        w.writerows(rows)
    text = "\n".join(gpu_check.bench_lines(gpu_check._read_bench(path)))
    assert "| pyg-scatter | 10 ms | 5.00 |" in text and "| 25.00 |" in text
    assert "| graphattn-cuda | 2 ms | 1.00 |" in text
    assert "flex-blockmask fwd: timed out" in text


@pytest.mark.parametrize("size", [100, 20 * 2**20])
def test_cap_file_keeps_logs_under_the_transfer_limit(tmp_path, size):
    path = tmp_path / "x.log"
    path.write_bytes(b"a" * (size - 4) + b"END\n")
    gpu_check.cap_file(path)
    data = path.read_bytes()
    assert len(data) <= gpu_check.MAX_FILE_BYTES and data.endswith(b"END\n")
    assert (len(data) == size) == (size <= gpu_check.MAX_FILE_BYTES)


def test_readme_budget_table_matches_the_plan():
    text = (_REPO_ROOT / "benchmarks" / "README.md").read_text()
    block = f"{gpu_check.BUDGET_BEGIN}\n{gpu_check.budget_table()}\n{gpu_check.BUDGET_END}"
    assert block in text, "benchmarks/README.md's budget table is stale: python -m benchmarks.gpu_check --write-readme"
