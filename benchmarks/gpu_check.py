"""`make gpu-check OUT=dir`: the one command a session holding a GPU runs, in the GPU image as it
is (its python3 with torch, no venv, no network), in at most 8 minutes on an H200.

    python3 -m benchmarks.gpu_check --out DIR            # on the GPU machine (what `make gpu-check` runs)
    python -m benchmarks.gpu_check --dry --out DIR       # the CPU rehearsal (`make gpu-check DRY=1`, CI)

Steps (each with its own time limit; a failing or timed-out step does not stop the others;
the budget and what each step costs are in benchmarks/README.md, "make gpu-check"):
  build       graphattn._C for sm_90 only, all cores (setup.py build_ext --inplace), then graphattn.info
  tests       the whole test suite on CUDA (pytest; -n with pytest-xdist where installed)
  memcheck    compute-sanitizer --tool memcheck  on benchmarks/sanitize_kernels.py   } run alongside
  racecheck   compute-sanitizer --tool racecheck on benchmarks/sanitize_kernels.py   } the tests
  bench       sparse: graphattn cuda / triton vs PyG scatter and FlexAttention; dense: triton vs SDPA
  layers      training steps of GAT, GATv2, TransformerConv models vs PyG's layers
  summary     summary.md: pass/fail per step, headline ratios from bench.csv

Everything lands in DIR, 7 files, each kept under 16 MiB: summary.md, build.log, tests.log,
memcheck.log, racecheck.log, bench.csv, bench.log.

--dry runs, on a machine without a GPU, every part of each step that can run there and prints the
exact GPU command of each: the build's imports, `pytest --collect-only` of the whole suite (a broken
import or a renamed test file fails it; so does a missing file of GPU_TEST_FILES), the sanitizer
script on CPU (Triton's interpreter), and the benchmark commands with their GPU flags but
`--device cpu --list` (a missing flag or an unknown provider fails argument parsing).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .readme_block import replace_block

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_BYTES = 15 * 2**20  # OUT files come back from the GPU machine only under 16 MiB
# Test files that exercise the GPU backends: the rehearsal fails if one is missing (renamed) or
# collects nothing, and the summary reports each one's outcome.
GPU_TEST_FILES = ("tests/test_cuda_backend.py", "tests/test_triton_csr_kernels.py",
                  "tests/test_triton_dense_kernels.py", "tests/test_sparse.py", "tests/test_dense.py",
                  "tests/test_scored_backends.py")
# The benchmark cases: sizes that fill the GPU for a few milliseconds per call yet keep each
# measurement (a fresh process, warmup, repeats) to seconds.
BENCH_PROVIDERS = ("graphattn-cuda", "graphattn-triton", "pyg-scatter", "flex-blockmask", "torch-sdpa")
# N_SPARSE: E = 16 N = 2.1M edges (about 1 GB gathered per bf16 forward); FlexAttention's boolean
# N x N adjacency is 17 GB there. N_DENSE: 67M pairs, the dense path and the same complete graph as an
# edge list. The 40 GB memory cap keeps any larger adjacency from being tried.
BENCH_N_SPARSE, BENCH_N_DENSE, BENCH_MEM_GB, LAYERS_NODES = 131072, 8192, 40, 50000


# A command list starting with OPTIONAL is informational: its failure is logged, not the step's.
OPTIONAL = "[optional]"


def show(cmd) -> str:
    return f"(informational) {shlex.join(cmd[1:])}" if cmd and cmd[0] == OPTIONAL else shlex.join(cmd)


@dataclass
class Step:
    name: str
    timeout_s: int
    estimate_s: int  # expected wall time on the H200 (an estimate until a GPU run measures it)
    cmds: list  # GPU commands (argv lists), run in order
    log: str  # file in OUT the output goes to (appended)
    group: int  # steps of one group run at the same time; groups run in order
    env: dict = field(default_factory=dict)
    dry_cmds: Optional[list] = None  # the CPU rehearsal's commands (None: nothing runs, printed only)
    dry_check: Optional[Callable[[str], Optional[str]]] = None  # output -> error text or None
    note: str = ""


def _nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _have(module: str, python: str) -> bool:
    """Whether `python` can import `module` (the GPU image's plugins decide the test command)."""
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec(module) is not None
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cuda_home() -> Optional[str]:
    from .kernel_resources import cuda_home as find

    return find()


def collected_files(output: str) -> dict:
    """{test file: number of tests} from `pytest --collect-only -q` output."""
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(tests/[\w/]+\.py)::", line.strip())
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def _check_collection(output: str) -> Optional[str]:
    counts = collected_files(output)
    missing = [f for f in GPU_TEST_FILES if not counts.get(f)]
    if missing:  # (a collection error already fails the step: pytest exits non-zero)
        return f"GPU test files missing or collecting no tests (renamed?): {', '.join(missing)}"
    return None


# What the GPU machine is known to hold (the device notes' KINDS.md: 16 cores; pytest-xdist and
# pytest-timeout in its image): the --dry rehearsal prints the commands a run there would use.
GPU_IMAGE = {"cpus": 16, "plugins": ("xdist", "pytest_timeout")}


def plan(out: Path, python: str, dry: bool, as_on_gpu_image: bool = False) -> list:
    """The steps, with their GPU commands and (for --dry) their CPU rehearsals. `as_on_gpu_image`:
    the commands as the GPU machine would build them (its core count and pytest plugins), for printing."""
    ncpu = GPU_IMAGE["cpus"] if as_on_gpu_image else _nproc()
    py = python

    def have(module):
        return module in GPU_IMAGE["plugins"] if as_on_gpu_image else (not dry and _have(module, py))

    out_csv = str(out / "bench.csv")
    steps = []

    build_env = {"GRAPHATTN_CUDA_ARCHS": "90", "MAX_JOBS": str(ncpu)}
    steps.append(Step(
        "build", timeout_s=100, estimate_s=60, log="build.log", group=0, env=build_env,
        cmds=[[OPTIONAL, "nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"],
              [OPTIONAL, py, "-c", "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, "
                         "'cuda', torch.version.cuda, 'triton', triton.__version__)"],
              [py, "setup.py", "build_ext", "--inplace"],
              [py, "-m", "graphattn.info"]],
        dry_cmds=[[py, "-c", "import setuptools, torch.utils.cpp_extension as ce, graphattn; "
                             "print('build imports ok; CUDA sources:', __import__('glob').glob('csrc/cuda/*.cu'))"],
                  [py, "-m", "graphattn.info"]],
        note="CUDA_HOME from `nvcc --dryrun` when unset (nvcc may be a wrapper outside the toolkit)"))

    workers = max(1, min(12, ncpu - 4))  # leave cores to the two sanitizer runs beside the tests
    test_cmd = [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-rfEs", "--durations=25"]
    if have("xdist"):
        test_cmd += ["-n", str(workers), "--dist", "loadfile"]
    if have("pytest_timeout"):
        test_cmd += ["--timeout", "150"]
    steps.append(Step(
        "tests", timeout_s=160, estimate_s=140, log="tests.log", group=1, cmds=[test_cmd],
        dry_cmds=[[py, "-m", "pytest", "tests", "--collect-only", "-q", "-p", "no:cacheprovider"]],
        dry_check=_check_collection,
        note=f"-n {workers} --dist loadfile when pytest-xdist is installed (it is in the GPU image)"))

    sanitize = [py, "-m", "benchmarks.sanitize_kernels", "--device", "cuda"]
    for tool in ("memcheck", "racecheck"):
        steps.append(Step(
            tool, timeout_s=160, estimate_s=90, log=f"{tool}.log", group=1,
            env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if tool == "memcheck" else {},
            cmds=[["compute-sanitizer", "--tool", tool, "--error-exitcode", "86", "--print-limit", "30", *sanitize]],
            dry_cmds=[[py, "-m", "benchmarks.sanitize_kernels", "--device", "cpu"]] if tool == "memcheck" else
            [[py, "-m", "benchmarks.sanitize_kernels", "--device", "cpu", "--list"]]))

    bench_flags = ["--sweep", "n", "--dtype", "bfloat16", "--mode", "both", "--n-sparse", str(BENCH_N_SPARSE),
                   "--n-dense", str(BENCH_N_DENSE), "--providers", ",".join(BENCH_PROVIDERS), "--repeats", "10",
                   "--warmup", "2", "--case-timeout", "60", "--mem-limit-gb", str(BENCH_MEM_GB), "--isolation",
                   "forkserver", "--no-progress"]
    steps.append(Step(
        "bench", timeout_s=140, estimate_s=120, log="bench.log", group=2,
        cmds=[[py, "-m", "benchmarks.scaling", "--device", "cuda", *bench_flags, "--out", out_csv]],
        dry_cmds=[[py, "-m", "benchmarks.scaling", "--device", "cpu", *bench_flags, "--list"]]))
    # --no-check: the small float32 agreement check with PyG would JIT-compile a second (float32) set of
    # kernels inside this step's minute; tests/test_nn.py checks the same agreement on CUDA.
    layer_flags = ["--nodes", str(LAYERS_NODES), "--dtype", "bfloat16", "--repeats", "5", "--warmup", "2", "--no-check",
                   "--case-timeout", "40", "--isolation", "forkserver", "--no-progress"]
    steps.append(Step(
        "layers", timeout_s=60, estimate_s=50, log="bench.log", group=3,
        cmds=[[py, "-m", "benchmarks.layers", "--device", "cuda", *layer_flags, "--out", out_csv]],
        dry_cmds=[[py, "-m", "benchmarks.layers", "--device", "cpu", *layer_flags, "--list"]]))
    return steps


BUDGET_BEGIN, BUDGET_END = "<!-- gpu-check-budget:begin -->", "<!-- gpu-check-budget:end -->"


def budget_table() -> str:
    """The README's table of steps, limits and estimates, from plan() (so the two cannot drift)."""
    steps = plan(Path("OUT"), "python3", dry=False, as_on_gpu_image=True)
    lines = ["| group | step | runs | limit (s) | estimate (s, not yet measured) |",
             "| --- | --- | --- | --- | --- |"]
    for s in steps:
        what = " ; ".join(shlex.join(c[:4] if c[0] != "compute-sanitizer" else c[:3]) + " ..." for c in s.cmds[-2:])
        lines.append(f"| {s.group} | {s.name} | `{what}` | {s.timeout_s} | {s.estimate_s} |")
    groups = {}
    for s in steps:
        groups.setdefault(s.group, []).append(s)
    worst = sum(max(x.timeout_s for x in g) for g in groups.values())
    expected = sum(max(x.estimate_s for x in g) for g in groups.values())
    lines += ["", f"Steps of one group run side by side, groups one after another: at most {worst} s by the limits "
              f"(8 minutes = 480 s), about {expected} s by the estimates."]
    return "\n".join(lines)


def update_readme_budget(readme: Path) -> bool:
    return replace_block(readme, BUDGET_BEGIN, BUDGET_END, budget_table())


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------
def _run_cmds(step: Step, cmds: list, out: Path, env: dict, deadline: float) -> dict:
    """Run `cmds` in order into OUT/step.log until one fails or the step's deadline passes."""
    log_path = out / step.log
    t0 = time.perf_counter()
    result = {"name": step.name, "status": "ok", "rc": 0, "seconds": 0.0, "output": ""}
    captured = []
    with open(log_path, "a") as log:
        for cmd in cmds:
            optional = cmd[0] == OPTIONAL
            cmd = cmd[1:] if optional else cmd
            left = deadline - time.perf_counter()
            log.write(f"\n===== [{step.name}] $ {shlex.join(cmd)}\n")
            log.flush()
            if left <= 0:
                result.update(status="timed out", rc=124)
                break
            try:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace", start_new_session=True)
            except OSError as exc:
                log.write(f"cannot start: {exc}\n")
                if optional:
                    continue
                result.update(status="failed", rc=127)
                break
            lines = []
            reader = threading.Thread(target=lambda p=proc, buf=lines: [buf.append(x) for x in p.stdout], daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=max(1.0, left))
            except subprocess.TimeoutExpired:
                with_pg_kill(proc)
                rc = 124
            reader.join(timeout=10)
            text = "".join(lines)
            captured.append(text)
            log.write(text)
            log.write(f"===== [{step.name}] exit {rc} after {time.perf_counter() - t0:.0f} s\n")
            log.flush()
            if rc != 0 and not (optional and rc != 124):
                result.update(status="timed out" if rc == 124 else "failed", rc=rc)
                break
    result["seconds"] = time.perf_counter() - t0
    result["output"] = "".join(captured)
    return result


def with_pg_kill(proc) -> None:
    """Stop a step's whole process group (pytest workers, forkserver, sanitizer children)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def cap_file(path: Path, limit: int = MAX_FILE_BYTES) -> None:
    """Keep a log under the limit: its first 2 MiB and its end."""
    if not path.exists() or path.stat().st_size <= limit:
        return
    data = path.read_bytes()
    head, tail = data[: 2 * 2**20], data[-(limit - 2 * 2**20 - 200):]
    path.write_bytes(head + b"\n\n[... cut to stay under 16 MiB ...]\n\n" + tail)


def run_steps(steps: list, out: Path, dry: bool, python: str) -> list:
    base_env = dict(os.environ)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    if not dry and not base_env.get("CUDA_HOME"):
        home = cuda_home()
        if home:
            base_env["CUDA_HOME"] = home
    results = []
    for group in sorted({s.group for s in steps}):
        members = [s for s in steps if s.group == group]
        threads, group_results = [], {}
        for s in members:
            env = {**base_env, **({} if dry else s.env)}
            if dry:
                # the benchmark and sanitizer scripts pick their device from the flags; pytest collection
                # on a CPU machine runs Triton through its interpreter (tests/conftest.py)
                env.setdefault("TRITON_INTERPRET", "1")
            cmds = s.dry_cmds if dry else s.cmds
            if cmds is None:
                group_results[s.name] = {"name": s.name, "status": "printed only", "rc": 0, "seconds": 0.0,
                                         "output": ""}
                continue
            deadline = time.perf_counter() + (s.timeout_s if not dry else max(s.timeout_s, 600))

            def work(step=s, c=cmds, e=env, d=deadline):
                r = _run_cmds(step, c, out, e, d)
                if dry and r["status"] == "ok" and step.dry_check:
                    why = step.dry_check(r["output"])
                    if why:
                        r.update(status="failed", rc=1, reason=why)
                group_results[step.name] = r
            t = threading.Thread(target=work)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        for s in members:
            r = group_results[s.name]
            results.append(r)
            extra = f" ({r['reason']})" if r.get("reason") else ""
            print(f"[{s.name}] {r['status']} in {r['seconds']:.0f} s (limit {s.timeout_s} s){extra}", flush=True)
    for name in {s.log for s in steps}:
        cap_file(out / name)
    return results


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def _read_bench(path: Path) -> list:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


def _fmt_b(x: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024 or unit == "GiB":
            return f"{x:.3g} {unit}"
        x /= 1024
    return f"{x:.3g} GiB"  # pragma: no cover


def bench_lines(rows: list) -> list:
    """Per measured case: every provider's median time and peak memory, and each ratio against
    graphattn's first backend in the case (cuda, else triton)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("time_median_s")]
    skipped = [r for r in rows if r.get("status") != "ok"]
    lines = []
    cases = {}
    for r in ok:
        cases.setdefault((r["benchmark"], r["case"], r["mode"], r["dtype"], r["N"]), []).append(r)
    for (bench, case, mode, dtype, n), rs in cases.items():
        ref = next((r for name in ("graphattn-cuda", "graphattn-triton", "graphattn") for r in rs
                    if r["provider"] == name), None)
        e = rs[0].get("E", "")
        lines += [f"**{bench} | {case} | {mode} | {dtype} | N={n} E={e}**", "",
                  "| provider | median | × vs " + (ref["provider"] if ref else "-") + " (time) | TFLOP/s | "
                  "extra peak memory | × vs it (memory) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rs:
            t, m = float(r["time_median_s"]), float(r["peak_mem_bytes"] or 0)
            rt = f"{t / float(ref['time_median_s']):.2f}" if ref else ""
            rm = f"{m / float(ref['peak_mem_bytes']):.2f}" if ref and float(ref["peak_mem_bytes"] or 0) else ""
            tf = f"{float(r['tflops']):.3g}" if r.get("tflops") else ""
            lines.append(f"| {r['provider']} | {_fmt_s(t)} | {rt} | {tf} | {_fmt_b(m)} | {rm} |")
        lines.append("")
    if skipped:
        lines.append(f"Skipped measurements ({len(skipped)}):")
        lines += [f"- {r['benchmark']} {r['case']} {r['provider']} {r['mode']}: {r.get('reason', '')[:200]}"
                  for r in skipped]
        lines.append("")
    return lines


def _tail(path: Path, n: int = 15) -> list:
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-n:]


def write_summary(out: Path, steps: list, results: list, dry: bool, python: str, started: float) -> Path:
    by = {r["name"]: r for r in results}
    total = time.perf_counter() - started
    lines = [f"# graphattn gpu-check{' (DRY rehearsal on CPU: GPU commands printed, not run)' if dry else ''}", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {total:.0f} s in all, python `{python}`, "
             f"{_nproc()} CPUs.", "",
             "| step | status | seconds | limit | estimate | log |", "| --- | --- | --- | --- | --- | --- |"]
    for s in steps:
        r = by.get(s.name, {"status": "not run", "seconds": 0})
        why = f" ({r['reason']})" if r.get("reason") else ""
        lines.append(f"| {s.name} | {r['status']}{why} | {r['seconds']:.0f} | {s.timeout_s} | {s.estimate_s} | "
                     f"{s.log} |")
    lines.append("")
    if not dry:
        tests_log = out / "tests.log"
        last = [x for x in _tail(tests_log, 60) if re.search(r"\d+ (passed|failed)", x)]
        if last:
            lines += [f"Tests: `{last[-1].strip()}`", ""]
        fails = [x for x in _tail(tests_log, 400) if x.startswith(("FAILED", "ERROR"))]
        if fails:
            lines += ["Failed tests:", "", *[f"- `{x[:200]}`" for x in fails[:40]], ""]
        for tool in ("memcheck", "racecheck"):
            tail = [x for x in _tail(out / f"{tool}.log", 40) if "ERROR SUMMARY" in x or "calls ok" in x
                    or x.startswith("FAIL")]
            if tail:
                lines += [f"{tool}: " + " / ".join(t.strip() for t in tail), ""]
        lines += ["## Benchmarks (bench.csv)", ""] + (bench_lines(_read_bench(out / "bench.csv"))
                                                       or ["(no rows)", ""])
        layer_lines = [x for x in (out / "bench.log").read_text(errors="replace").splitlines()
                       if x.startswith("[") and ("step time" in x or "peak memory" in x)] \
            if (out / "bench.log").exists() else []
        if layer_lines:
            lines += ["Layers (benchmarks.layers summary):", "", *[f"- {x}" for x in layer_lines], ""]
    else:
        lines += ["## The GPU commands", "", "Run on the GPU machine, from the repository root:", "",
                  "```", f"make gpu-check OUT=<dir>        # = {python} -m benchmarks.gpu_check --out <dir>", "```", "",
                  "which runs, step by step (environment shown only where it differs):", "", "```"]
        for s in steps:
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            for c in s.cmds:
                lines.append(f"[{s.name}, limit {s.timeout_s} s] {env + ' ' if env else ''}{show(c)}")
        lines += ["```", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", help="directory for the (at most 8) result files")
    p.add_argument("--write-readme", action="store_true",
                   help="rewrite the budget table of benchmarks/README.md from the plan and exit")
    p.add_argument("--dry", action="store_true", help="the CPU rehearsal: run what runs without a GPU, print the rest")
    p.add_argument("--gpu-python", default=None,
                   help="the GPU image's python for the printed commands (default: python3; without --dry: this "
                        "interpreter)")
    p.add_argument("--steps", default=None, help="comma list: run only these steps (debugging)")
    args = p.parse_args(argv)
    if args.write_readme:
        readme = ROOT / "benchmarks" / "README.md"
        print(f"{'updated' if update_readme_budget(readme) else 'no budget block in'} {readme}")
        return 0
    if not args.out:
        p.error("--out DIR is required")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    python = sys.executable
    gpu_python = args.gpu_python or ("python3" if args.dry else python)
    steps = plan(out, python, args.dry)
    if args.dry:  # the printed GPU commands name the GPU image's python and its own flags
        printed = {s.name: s for s in plan(out, gpu_python, False, as_on_gpu_image=True)}
        for s in steps:
            s.cmds = printed[s.name].cmds
    if args.steps:
        wanted = {x.strip() for x in args.steps.split(",")}
        unknown = wanted - {s.name for s in steps}
        if unknown:
            p.error(f"unknown steps {sorted(unknown)}; steps: {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in wanted]
    for s in steps:
        (out / s.log).unlink(missing_ok=True)
    if not args.dry and shutil.which("compute-sanitizer") is None:
        print("compute-sanitizer is not on PATH: the memcheck and racecheck steps will fail to start")
    print(f"gpu-check{' --dry' if args.dry else ''}: {len(steps)} steps -> {out}", flush=True)
    results = run_steps(steps, out, args.dry, python)
    summary = write_summary(out, steps, results, args.dry, gpu_python, started)
    if args.dry:
        print("\nGPU commands (what `make gpu-check OUT=dir` runs on the GPU machine):")
        for s in steps:
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            for c in s.cmds:
                print(f"  [{s.name}, limit {s.timeout_s} s] {env + ' ' if env else ''}{show(c)}")
    files = sorted(x.name for x in out.iterdir())
    print(f"\n{summary} ({len(files)} files in {out}: {', '.join(files)}); {time.perf_counter() - started:.0f} s")
    failed = [r["name"] for r in results if r["status"] not in ("ok", "printed only")]
    if failed:
        print(f"FAILED steps: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
