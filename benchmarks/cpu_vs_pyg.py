"""graphattn's fused CPU kernels against the PyG way, forward + backward, in one run.

The foundation issue's target: N = 100,000 nodes, 1.6M uniformly random edges (average
in-degree 16), H = 4, D = 32, float32, forward + backward, on the CPU:
  - time: graphattn (backend "cpu") >= 10x faster than the PyG-style baseline;
  - extra peak memory: graphattn <= 1/5 of the baseline's.
Issue 14's: the forward moves >= 40% of the machine's copy bandwidth, both measured in the same
run (provider "copy": dst.copy_(src) over as many bytes as the forward must move, K/V rows
gathered + Q/out streamed; the row's gbps column).
The baseline (provider pyg-scatter) is per-edge gather `(q[dst] * k[src]).sum(-1)`,
`torch_geometric.utils.softmax(scores, dst, num_nodes=N)`, then a scatter-sum of
`alpha[..., None] * v[src]`, backward through autograd.

Each provider runs in a fresh process (see benchmarks/runner.py); rows go to
benchmarks/results/<device-slug>.csv (benchmark "cpu_vs_pyg").

    python -m benchmarks.cpu_vs_pyg                # full size (~2-3 min on 2 cores)
    python -m benchmarks.cpu_vs_pyg --quick        # tiny, for CI
    python -m benchmarks.cpu_vs_pyg --out /tmp/x.csv --repeats 5
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

from . import common
from .runner import Runner, make_job

TARGET_SPEEDUP = 10.0
TARGET_MEMORY_RATIO = 0.2
TARGET_BANDWIDTH_FRACTION = 0.4  # issue 14: float32 forward >= 40% of the copy bandwidth


def check_agreement(backend: str, device: str) -> str:
    """graphattn vs the baseline on a small graph (outputs and gradients), so that the timed
    providers are known to compute the same thing."""
    import graphattn

    from .providers import make_qkv, pyg_scatter_attention

    n, h, d = 500, 4, 32
    edge_index = common.uniform_graph(n, 16, seed=1).to(device)
    q, k, v = make_qkv(n, h, d, torch.float32, device, 1, True)
    out = graphattn.attention(q, k, v, edge_index, backend=backend)
    out.backward(torch.ones_like(out))
    ours = [out.detach(), q.grad, k.grad, v.grad]
    for t in (q, k, v):
        t.grad = None
    ref = pyg_scatter_attention(q, k, v, edge_index, n)
    ref.backward(torch.ones_like(ref))
    theirs = [ref.detach(), q.grad, k.grad, v.grad]
    err = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    status = "agree" if err < 1e-3 else "DISAGREE"
    return f"check: graphattn-{backend} vs pyg-scatter on N={n}, E={edge_index.shape[1]}: out/dq/dk/dv max |diff| = {err:.2e} ({status})"


def bandwidth_fraction(rows, ours_name: str):
    """(forward GB/s, copy GB/s) of one run's rows, or None where either is missing."""
    def gbps(provider):
        r = next((r for r in rows if r["provider"] == provider and r["mode"] == "fwd"
                  and r.get("status", "ok") in ("ok", "") and r.get("gbps") not in (None, "")), None)
        return None if r is None else float(r["gbps"])
    ours, copy = gbps(ours_name), gbps("copy")
    return None if ours is None or copy is None else (ours, copy)


def bandwidth_summary(rows, ours_name: str) -> str:
    pair = bandwidth_fraction(rows, ours_name)
    if pair is None:
        return "[fwd] bandwidth: no ratio (the forward or the copy baseline did not run)"
    ours, copy = pair
    frac = ours / copy
    return (f"[fwd] bandwidth: {ours_name} moves {ours:.1f} GB/s (K/V rows gathered + Q/out streamed) = "
            f"{100 * frac:.0f}% of copy's {copy:.1f} GB/s in the same run "
            f"(target >= {100 * TARGET_BANDWIDTH_FRACTION:.0f}%: {'MET' if frac >= TARGET_BANDWIDTH_FRACTION else 'NOT MET'})")


def build_jobs(args, device: str, backend: str) -> list:
    if args.quick:
        n, degree = 2000, 16
    else:
        n, degree = args.nodes, args.degree
    modes = ["fwd", "fwdbwd"] if args.mode == "both" else [args.mode]
    providers = [f"graphattn-{backend}", "pyg-scatter"]
    if args.with_graph_build:
        providers.insert(1, f"graphattn-{backend}+graph")
    jobs = []
    for mode in modes:
        # The machine's copy bandwidth in the same run, for the forward's fraction of it.
        for provider in providers + (["copy"] if mode == "fwd" else []):
            jobs.append(make_job(
                benchmark="cpu_vs_pyg", case=f"uniform d={degree:g}", provider=provider, form="csr",
                graph={"kind": "uniform", "n": n, "degree": degree}, device=device, mode=mode,
                dtype=args.dtype, heads=args.heads, head_dim=args.head_dim, seed=args.seed,
                warmup=1, repeats=args.repeats, budget_s=args.budget_s, threads=args.threads))
    return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_vs_pyg", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (N=2000), for CI and tests")
    p.add_argument("--out", help="CSV to append to (default benchmarks/results/<device-slug>.csv; "
                                 "--quick: <tmp>/graphattn-bench/<slug>-quick.csv)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per provider (default 5; fewer, but at least 3, once they add up to --budget-s)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="the timed repeats of one provider stop once they add up to this (default 60 s)")
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--degree", type=float, default=16.0, help="average in-degree (E = nodes x degree)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mode", choices=("fwd", "fwdbwd", "both"), default="both",
                   help="both (default): forward (with the copy-bandwidth baseline) and forward + backward")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default: the target of this benchmark) or cuda")
    p.add_argument("--backend", default=None, help="graphattn backend (default: cpu on CPU, first GPU backend on CUDA)")
    p.add_argument("--with-graph-build", action="store_true",
                   help="also time graphattn with the raw edge_index (Graph built inside every call)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each measuring process (default: all cores; --quick: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-timeout", type=float, default=600.0, help="seconds before one provider's process is stopped")
    p.add_argument("--isolation", choices=("auto", "forkserver", "spawn", "none"), default="auto")
    p.add_argument("--no-check", action="store_true", help="skip the small agreement check")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    device = common.resolve_device(args.device)
    if args.threads is None and args.quick:
        args.threads = 1
    if args.backend is None:
        from .providers import graphattn_backends

        names = graphattn_backends(device, "csr")
        args.backend = names[0] if names else "cpu"
    out = args.out or common.default_csv(device, args.quick)
    env = common.environment(device)
    print(common.describe_environment(env))
    n = 2000 if args.quick else args.nodes
    degree = 16 if args.quick else args.degree
    print(f"cpu_vs_pyg: N={n}, E={int(round(n * degree))} (uniform, average in-degree {degree:g}), H={args.heads}, "
          f"D={args.head_dim}, {args.dtype}, {args.mode}, device {device}, torch threads {args.threads or torch.get_num_threads()}")
    print(f"results -> {out}")

    have_pyg = importlib.util.find_spec("torch_geometric") is not None
    if not have_pyg:
        print("pyg-scatter: SKIPPED - torch_geometric is not installed (pip install torch_geometric); "
              "it is a benchmark-only dependency. graphattn is still measured.")
    elif not args.no_check:
        print(check_agreement(args.backend, device))

    runner = Runner(device, out, isolation=args.isolation, timeout_s=args.case_timeout, env=env,
                    progress=not args.no_progress)
    rows = runner.run(build_jobs(args, device, args.backend), desc="cpu_vs_pyg")

    print()
    print(f"{'provider':<24} {'mode':<7} {'median':>10} {'p20':>10} {'p80':>10} {'TFLOP/s':>8} "
          f"{'extra peak mem':>15}  status")
    for r in rows:
        ok = r["status"] == "ok"
        print(f"{r['provider']:<24} {r['mode']:<7} {common.fmt_time(r['time_median_s']):>10} "
              f"{common.fmt_time(r['time_p20_s']):>10} {common.fmt_time(r['time_p80_s']):>10} "
              f"{(r.get('tflops') or 0):>8.3f} {common.fmt_bytes(r['peak_mem_bytes']):>15}  "
              f"{'ok' if ok else 'skipped: ' + str(r['reason'])}")

    ours_name = f"graphattn-{args.backend}"
    summary_ok = True
    for mode in ("fwd", "fwdbwd"):
        ours = next((r for r in rows if r["provider"] == ours_name and r["mode"] == mode and r["status"] == "ok"), None)
        base = next((r for r in rows if r["provider"] == "pyg-scatter" and r["mode"] == mode and r["status"] == "ok"),
                    None)
        if ours is None and base is None:
            continue
        print()
        if ours is None or base is None:
            print(f"[{mode}] no ratio: {'graphattn' if ours is None else 'pyg-scatter'} did not run")
            summary_ok = False
            continue
        speedup = base["time_median_s"] / ours["time_median_s"]
        mem_ratio = (ours["peak_mem_bytes"] / base["peak_mem_bytes"]) if base["peak_mem_bytes"] else float("nan")
        print(f"[{mode}] speedup (pyg-scatter time / {ours_name} time): {speedup:.1f}x "
              f"(target >= {TARGET_SPEEDUP:g}x: {'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'})")
        print(f"[{mode}] extra peak memory ({ours_name} / pyg-scatter): {mem_ratio:.3f} "
              f"= {common.fmt_bytes(ours['peak_mem_bytes'])} / {common.fmt_bytes(base['peak_mem_bytes'])} "
              f"(target <= {TARGET_MEMORY_RATIO:g}: {'MET' if mem_ratio <= TARGET_MEMORY_RATIO else 'NOT MET'})")
    print(bandwidth_summary(rows, ours_name))
    if args.quick:
        print("(--quick: tiny sizes, the targets are for the full size)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
