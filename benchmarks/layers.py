"""Training steps of whole graph-attention models, and single layers: graphattn.nn against PyG and DGL.

The layers issue's target (issue 6), for an H100/H200: on an ogbn-arxiv-sized graph, H = 8
heads, 64 hidden channels per head, a training step (forward, cross-entropy, backward, Adam
step) of a 2-layer GATv2 and of a graph-transformer layer is
  - >= 3x faster with graphattn.nn than with torch_geometric.nn's layers, and
  - takes >= 5x less peak memory (graphattn / PyG <= 0.2).
The 2-layer GAT is measured too (no target). On the CPU, issue 14's targets apply instead, to
every model, in both modes (--layer and the training step): >= 5x faster and >= 5x less extra peak
memory than PyG, >= 2x faster than DGL.

Models (the same module code on both sides, only the conv class differs; identical weights):
  gat          GATConv(128, 64, heads=8, concat) -> ELU -> GATConv(512, 40, heads=8, concat=False)
               (GAT's setup: multi-head concat hidden layer, averaged heads in the output layer)
  gatv2        the same with GATv2Conv (share_weights=False)
  transformer  --transformer-layers (default 1) x [TransformerConv(in, 64, heads=8, concat,
               root_weight) -> ELU] -> Linear(512, 40)
GAT/GATv2 add self-loops (PyG's default, both sides); attention dropout --dropout (default 0).
Loss: cross-entropy over all N nodes against random labels of 40 classes (as arxiv), computed
in float32 from the logits; Adam (lr 1e-3). Weights: every parameter drawn from a generator
seeded by its name (same names on both sides, so the models are identical; the agreement check
also loads PyG's state_dict into graphattn's model).

Graph: ogbn-arxiv-sized by default, 169,343 nodes, 1,166,243 directed edges (average in-degree
6.89), in-degrees power-law (Zipf exponent --exponent, default 0.7: the top node gets ~0.8% of
the edges, ~10k, like arxiv's most-cited paper), 128 random input features.

Providers: "graphattn" (graphattn.nn, auto backend: the note records which backend served), "pyg"
(torch_geometric.nn) and "dgl" (dgl.nn.GATConv / GATv2Conv with the same weights, run by
benchmarks/dgl_worker.py in DGL's own environment, `make dgl-env`, `--dgl-python`: see
benchmarks/dgl_baseline.py; DGL has no TransformerConv, and without its environment the dgl rows
are skipped with the reason). Each (model, dtype, provider, round) is measured in its own
process (benchmarks/runner.py, mode "train"). Rows go to benchmarks/results/<device-slug>.csv
(benchmark "layers"): median / p20 / p80 step time, extra peak memory of one step.

--layer (issue 14): one layer instead of a model, forward + backward (mode "fwdbwd": forward, then
backward of a fixed random output gradient; grads of x and of every weight) of GATConv,
GATv2Conv and TransformerConv(F, C, heads=H, concat) on a uniform random graph, by default
N = 100,000 nodes, E = 1.6M edges (in-degree 16), F = 128 input features, H = 4 heads x C = 32
channels; benchmark "layer". Targets: >= 5x faster than PyG and >= 5x less extra peak memory,
>= 2x faster than DGL.

Rounds (--rounds R): the jobs of every (model, dtype, provider) run R times, round after round,
so that the providers alternate (graphattn, pyg, dgl, graphattn, pyg, dgl, ...) and a noisy
minute of a shared machine hits all of them alike. Every measurement is a row (columns `round`
and `run`, the run's start); the summary and the README's tables take each provider's best round
(the lowest median) of the run.

    python -m benchmarks.layers                              # full size, float32 + bfloat16
    python -m benchmarks.layers --layer --rounds 3           # issue 14's layers, float32 + bfloat16
    python -m benchmarks.layers --quick                      # tiny, for CI (seconds)
    python -m benchmarks.layers --nodes 20000 --device cpu   # same average degree, fewer nodes
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F

from . import common, dgl_baseline
from .models import MODELS, Net, describe_layer, describe_model, init_weights, make_inputs, make_layer
from .providers import LAYER_PROVIDERS, GiB
from .runner import Runner, make_job

ARXIV_NODES, ARXIV_EDGES, ARXIV_FEATURES, ARXIV_CLASSES = 169_343, 1_166_243, 128, 40
TARGET_MODELS = ("gatv2", "transformer")  # the targets; gat is measured without one
TARGET_SPEEDUP = 3.0  # pyg step time / graphattn step time >=
TARGET_MEMORY_RATIO = 0.2  # graphattn peak / pyg peak <= (">= 5x less")
QUICK_NODES = 1000
# --layer (issue 14): N, E, F, H, C, and the targets (every model; vs DGL: the models DGL has)
LAYER_NODES, LAYER_EDGES, LAYER_FEATURES, LAYER_HEADS, LAYER_CHANNELS = 100_000, 1_600_000, 128, 4, 32
LAYER_TARGET_SPEEDUP = 5.0  # pyg time / graphattn time >=
LAYER_TARGET_MEMORY_RATIO = 0.2  # graphattn peak / pyg peak <=
DGL_TARGET_SPEEDUP = 2.0  # dgl time / graphattn time >= (both modes)


# ---------------------------------------------------------------------------
# Agreement check
# ---------------------------------------------------------------------------
def check_agreement(model: str, device: str, args) -> str:
    """graphattn.nn vs torch_geometric.nn on a small graph, float32: PyG's module with the named
    init, its state_dict loaded (strict) into graphattn's; the model's logits and the gradients of
    the loss (--layer: the layer's output and the gradients of a fixed output gradient, x's
    included) with respect to every parameter compared (max |diff| relative to the largest |value|
    of the outputs, of all the gradients)."""
    import graphattn.nn
    import torch_geometric.nn

    n, features, classes = 300, args.features, args.classes
    edge_index = common.make_graph(_agreement_graph(args)).edges().to(device)
    x, y = make_inputs(n, features, classes, 1, device, torch.float32)
    nets = {}
    for name, nn in (("pyg", torch_geometric.nn), ("graphattn", graphattn.nn)):
        nets[name] = (make_layer(nn, model, features, args.hidden, args.heads) if args.layer else
                      Net(nn, model, features, args.hidden, args.heads, classes, args.transformer_layers)).to(device)
    init_weights(nets["pyg"], 3)
    nets["graphattn"].load_state_dict(nets["pyg"].state_dict(), strict=True)
    outs, grads = {}, {}
    for name, net in nets.items():
        net.eval()  # no dropout in the check
        xin = x.clone().requires_grad_(args.layer)
        out = net(xin, edge_index)
        if args.layer:
            out.backward(dgl_baseline.output_grad(out.shape).to(device))
        else:
            F.cross_entropy(out, y).backward()
        outs[name] = out.detach()
        grads[name] = {k: p.grad for k, p in net.named_parameters()}
        if args.layer:
            grads[name]["x"] = xin.grad

    def rel(a, b):
        return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)

    out_err = rel(outs["graphattn"], outs["pyg"])
    # relative to the largest gradient of the model, not per tensor: some gradients are 0 in exact
    # arithmetic (lin_key.bias: a constant added to all scores of a target), rounding noise here
    grad_scale = max(float(g.abs().max()) for g in grads["pyg"].values())
    grad_err = max(float((grads["graphattn"][k] - g).abs().max()) for k, g in grads["pyg"].items()) / max(grad_scale,
                                                                                                       1e-12)
    tol = 1e-3 if device == "cpu" else 1e-2  # GPU: the Triton kernels may use TF32 for float32 products
    ok = out_err < tol and grad_err < tol
    what = "output" if args.layer else "logits"
    return (f"check {model}{' layer' if args.layer else ''}: graphattn.nn vs torch_geometric.nn, N={n}, "
            f"E={edge_index.shape[1]}, float32, {len(grads['pyg'])} gradients (PyG state_dict loaded): "
            f"{what} max rel diff {out_err:.1e}, grads max rel diff {grad_err:.1e} ({'agree' if ok else 'DISAGREE'})")


def _agreement_graph(args) -> dict:
    """The small graph of the agreement checks (300 nodes, the run's in-degree and kind)."""
    return {**_graph_spec(args, 300), "seed": 1}


def _graph_spec(args, n: int) -> dict:
    if args.layer:
        return {"kind": "uniform", "n": n, "degree": args.degree}
    return {"kind": "power_law", "n": n, "degree": args.degree, "exponent": args.exponent}


def check_dgl_agreement(model: str, args) -> str:
    """graphattn.nn vs DGL (benchmarks/dgl_baseline.check_agreement) on the same small graph."""
    line, _, _ = dgl_baseline.check_agreement(
        args.dgl_python, model, "fwdbwd" if args.layer else "train", features=args.features, hidden=args.hidden,
        heads=args.heads, classes=args.classes, graph=_agreement_graph(args))
    return line


# ---------------------------------------------------------------------------
# Jobs, summary, main
# ---------------------------------------------------------------------------
def build_jobs(args, device: str) -> list:
    """Round after round, every (dtype, model, provider): the providers alternate."""
    graph = _graph_spec(args, args.nodes)
    benchmark, mode = ("layer", "fwdbwd") if args.layer else ("layers", "train")
    run = getattr(args, "run", None)
    jobs = []
    for r in range(1, args.rounds + 1):
        for dtype in args.dtypes:
            for model in args.models:
                for provider in args.providers:
                    job = make_job(benchmark=benchmark, case=model, provider=provider, form="csr", graph=graph,
                                   device=device, mode=mode, dtype=dtype, heads=args.heads, head_dim=args.hidden,
                                   seed=args.seed, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s,
                                   threads=args.threads)
                    job.update(model=model, features=args.features, classes=args.classes,
                               transformer_layers=args.transformer_layers, dropout=args.dropout, round=r, run=run)
                    if provider == "dgl":
                        job["dgl_python"] = args.dgl_python
                    jobs.append(job)
    return jobs


def best_rows(rows) -> dict:
    """{(case, dtype, provider): the ok row with the lowest median time} (each provider's best round)."""
    best = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        key = (r["case"], r["dtype"], r["provider"])
        if key not in best or float(r["time_median_s"]) < float(best[key]["time_median_s"]):
            best[key] = r
    return best


def _targets(layer: bool, base: str, model: str, device: str = "cpu"):
    """(speedup target, memory-ratio target) of graphattn against `base` for `model`; None: none.
    On the CPU issue 14's targets hold for the layer and the training step of every model; on a GPU
    the training step has issue 6's (TARGET_MODELS only)."""
    if base == "dgl":
        return DGL_TARGET_SPEEDUP, None
    if layer or device == "cpu":
        return LAYER_TARGET_SPEEDUP, LAYER_TARGET_MEMORY_RATIO
    return (TARGET_SPEEDUP, TARGET_MEMORY_RATIO) if model in TARGET_MODELS else (None, None)


def summarize(rows, device: str, layer: bool = False) -> list:
    """Lines of the per-model comparison, each provider's best round: graphattn's speedup and
    peak-memory ratio against PyG and DGL, and the targets."""
    lines = []
    best = best_rows(rows)
    what, mem_what = ("forward+backward time", "peak memory of forward+backward") if layer \
        else ("step time", "peak memory of a step")
    bases = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "graphattn"]
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        for model in dict.fromkeys(r["case"] for r in rows):
            ours = best.get((model, dtype, "graphattn"))
            tag = f"[{model} {dtype}]"
            for name in bases:
                base = best.get((model, dtype, name))
                if ours is None or base is None:
                    missing = [p for p, r in (("graphattn", ours), (name, base)) if r is None]
                    why = next((r["reason"] for r in rows if r["case"] == model and r["dtype"] == dtype
                                and r["provider"] in missing and r.get("reason")), "")
                    lines.append(f"{tag} no ratio vs {name}: {' and '.join(missing)} did not run"
                                 + (f" ({why})" if why else ""))
                    continue
                speedup = float(base["time_median_s"]) / float(ours["time_median_s"])
                mem = float(ours["peak_mem_bytes"]) / float(base["peak_mem_bytes"]) if float(base["peak_mem_bytes"]) \
                    else float("nan")
                t_speed, t_mem = _targets(layer, name, model, device)

                def verdict(target, met):
                    return ("MET" if met else "NOT MET") if target is not None else "no target for this model"

                slower = "" if speedup >= 1 else " (slower)"
                less = (f"{1 / mem:.1f}x less" if mem <= 1 else f"{mem:.1f}x more") if mem else "inf less"
                target_text = (f"target >= {t_speed:g}x: {verdict(t_speed, speedup >= t_speed)}" if t_speed
                               else verdict(None, False))
                lines.append(f"{tag} {what}: {name} {common.fmt_time(base['time_median_s'])} / graphattn "
                             f"{common.fmt_time(ours['time_median_s'])} = {speedup:.2f}x{slower} ({target_text})")
                mem_target = (f"target <= {t_mem:g}, i.e. >= {1 / t_mem:g}x less: {verdict(t_mem, mem <= t_mem)}"
                              if t_mem else ("no target vs " + name if name == "dgl" else verdict(None, False)))
                lines.append(f"{tag} {mem_what}: graphattn {common.fmt_bytes(ours['peak_mem_bytes'])} / {name} "
                             f"{common.fmt_bytes(base['peak_mem_bytes'])} = {mem:.3f} ({less}; {mem_target})")
    rounds = max((int(r.get("round") or 1) for r in rows), default=1)
    best_note = f"each provider's best of {rounds} rounds" if rounds > 1 else "one round"
    if layer:
        lines.append(f"(issue 14's targets: >= {LAYER_TARGET_SPEEDUP:g}x faster and >= "
                     f"{1 / LAYER_TARGET_MEMORY_RATIO:g}x less extra peak memory than PyG, >= {DGL_TARGET_SPEEDUP:g}x "
                     f"faster than DGL, at N = {LAYER_NODES:,}, E = {LAYER_EDGES:,}; {best_note}; device {device})")
    elif device == "cpu":
        lines.append(f"(issue 14's targets on the CPU: >= {LAYER_TARGET_SPEEDUP:g}x faster steps and >= "
                     f"{1 / LAYER_TARGET_MEMORY_RATIO:g}x less extra peak memory than PyG for every model, >= "
                     f"{DGL_TARGET_SPEEDUP:g}x faster than DGL, at the ogbn-arxiv size; {best_note})")
    else:
        lines.append(f"(targets: >= {TARGET_SPEEDUP:g}x faster steps and >= {1 / TARGET_MEMORY_RATIO:g}x less peak "
                     f"memory than PyG for {' and '.join(TARGET_MODELS)}, at the full ogbn-arxiv size on an H100/H200 "
                     f"GPU; >= {DGL_TARGET_SPEEDUP:g}x faster than DGL; {best_note}"
                     + ("; this run is on the CPU, so MET / NOT MET here is indicative only)" if device != "cuda"
                        else ")"))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help=f"tiny graph (N={QUICK_NODES}), float32, 3 repeats: for CI")
    p.add_argument("--layer", action="store_true",
                   help=f"one layer's forward + backward (benchmark 'layer', issue 14) instead of a model's training "
                        f"step: uniform graph, N={LAYER_NODES:,}, E={LAYER_EDGES:,}, F={LAYER_FEATURES}, "
                        f"H={LAYER_HEADS}, C={LAYER_CHANNELS} by default")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="comma list (default float32,bfloat16; --quick float32)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} (default all)")
    p.add_argument("--providers", default=",".join(LAYER_PROVIDERS),
                   help=f"comma list of {', '.join(LAYER_PROVIDERS)} (default all)")
    p.add_argument("--dgl-python", default=None,
                   help="the python of DGL's environment (default .venv-dgl/bin/python when `make dgl-env` made it; "
                        "without one the dgl rows are skipped with the reason)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every (model, dtype, provider) this many times, round after round (the providers "
                        "alternate); the summary takes each provider's best round (default 1)")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"default {ARXIV_NODES:,} (ogbn-arxiv); --layer {LAYER_NODES:,}")
    p.add_argument("--degree", type=float, default=None,
                   help=f"average in-degree, E = nodes x degree (default {ARXIV_EDGES / ARXIV_NODES:.4f}: arxiv's "
                        f"{ARXIV_EDGES:,} edges at its size; --layer {LAYER_EDGES / LAYER_NODES:g})")
    p.add_argument("--exponent", type=float, default=0.7,
                   help="Zipf exponent of the in-degrees (default 0.7; --layer: uniform graph, not used)")
    p.add_argument("--features", type=int, default=ARXIV_FEATURES, help="input features (default 128)")
    p.add_argument("--classes", type=int, default=ARXIV_CLASSES, help="label classes (default 40)")
    p.add_argument("--heads", type=int, default=None, help=f"default 8; --layer {LAYER_HEADS}")
    p.add_argument("--hidden", type=int, default=None,
                   help=f"hidden channels per head (default 64; --layer: the layer's channels per head, "
                        f"{LAYER_CHANNELS})")
    p.add_argument("--transformer-layers", type=int, default=1,
                   help="TransformerConv layers of the transformer model (default 1)")
    p.add_argument("--dropout", type=float, default=0.0, help="attention dropout of every conv (default 0)")
    p.add_argument("--out", help="CSV to append to (default benchmarks/results/<device-slug>.csv; "
                                 "--quick: <tmp>/graphattn-bench/<slug>-quick.csv)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10 CPU, 20 CUDA, 3 quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 CPU, 3 CUDA)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the timed calls of one case stop once they add up to this, but never before 3 "
                        "(default 60 s CPU, 10 s CUDA, 0.5 s quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in each measuring process (default: all cores; --quick: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-timeout", type=float, default=None,
                   help="seconds one case's process may take, setup included (default 900, quick 120)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="skip cases whose estimated memory exceeds this (default 80%% of free RAM / GPU memory)")
    p.add_argument("--isolation", choices=("auto", "forkserver", "spawn", "none"), default="auto",
                   help="how graphattn / pyg jobs get their process (dgl's: always a fresh DGL python)")
    p.add_argument("--no-check", action="store_true", help="skip the small agreement checks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list", action="store_true", help="print the jobs and exit (nothing is imported or measured)")
    args = p.parse_args(argv)

    device = common.resolve_device(args.device)
    cuda = device == "cuda"
    args.dtypes = [common.dtype_name(d) for d in
                   (args.dtype.split(",") if args.dtype else (["float32"] if args.quick else ["float32", "bfloat16"]))]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.providers = [x.strip() for x in args.providers.split(",") if x.strip()]
    bad = [m for m in args.models if m not in MODELS] + [x for x in args.providers if x not in LAYER_PROVIDERS]
    if bad:
        p.error(f"unknown model / provider {bad}; models {', '.join(MODELS)}, providers {', '.join(LAYER_PROVIDERS)}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.nodes is None:
        args.nodes = QUICK_NODES if args.quick else (LAYER_NODES if args.layer else ARXIV_NODES)
    if args.degree is None:
        args.degree = LAYER_EDGES / LAYER_NODES if args.layer else ARXIV_EDGES / ARXIV_NODES
    if args.heads is None:
        args.heads = LAYER_HEADS if args.layer else 8
    if args.hidden is None:
        args.hidden = LAYER_CHANNELS if args.layer else 64
    if args.dgl_python is None:
        args.dgl_python = dgl_baseline.default_python()
    elif args.dgl_python:
        # a path, relative or not, or a command on PATH; absolute: the worker runs in a temporary folder
        args.dgl_python = os.path.abspath(shutil.which(args.dgl_python) or args.dgl_python)
    if args.repeats is None:
        args.repeats = 3 if args.quick else (20 if cuda else 10)
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.budget_s is None:
        args.budget_s = 0.5 if args.quick else (10.0 if cuda else 60.0)
    if args.threads is None and args.quick:
        args.threads = 1
    timeout = args.case_timeout or (120.0 if args.quick else 900.0)
    args.run = common.utc_now()

    if args.list:
        for j in build_jobs(args, device):
            print(f"{j['benchmark']:<8} {j['case']:<12} N={j['N']:<8} {j['provider']:<10} {j['mode']:<6} "
                  f"{j['dtype']:<9} H={j['H']} {'C' if args.layer else 'hidden'}={j['D']} round {j['round']}")
        return 0
    out = args.out or common.default_csv(device, args.quick)
    env = common.environment(device)
    print(common.describe_environment(env))
    e = common.graph_num_edges({"kind": "uniform", "n": args.nodes, "degree": args.degree})
    threads = args.threads or torch.get_num_threads()
    if args.layer:
        print(f"layer: forward + backward of one layer on a uniform random graph, N={args.nodes:,}, E={e:,} (average "
              f"in-degree {args.degree:.3g}), F={args.features}, H={args.heads}, C={args.hidden} | "
              f"{', '.join(args.dtypes)} | device {device} | torch threads {threads} | {args.rounds} round(s)")
        for m in args.models:
            print(f"  {m}: {describe_layer(m, args.features, args.hidden, args.heads, args.dropout)}")
    else:
        print(f"layers: training step (forward, cross-entropy, backward, Adam) on a power-law graph (Zipf "
              f"{args.exponent:g}), N={args.nodes:,}, E={e:,} (average in-degree {args.degree:.3g}), "
              f"{args.features} features, {args.classes} classes, H={args.heads}, {args.hidden} hidden per head | "
              f"{', '.join(args.dtypes)} | device {device} | torch threads {threads} | {args.rounds} round(s)")
        for m in args.models:
            desc = describe_model(m, args.features, args.hidden, args.heads, args.classes, args.transformer_layers,
                                  args.dropout)
            print(f"  {m}: {desc}")
    if "dgl" in args.providers:
        print(f"dgl: {args.dgl_python or 'no DGL environment (make dgl-env, or --dgl-python): dgl rows skipped'}")
    print(f"results -> {out}")

    have_pyg = importlib.util.find_spec("torch_geometric") is not None
    if not have_pyg and "pyg" in args.providers:
        print("pyg: SKIPPED - torch_geometric is not installed (pip install torch_geometric); it is a "
              "benchmark-only dependency. graphattn is still measured.")
    elif have_pyg and not args.no_check and "pyg" in args.providers:
        for m in args.models:
            print(check_agreement(m, device, args))
        if cuda:
            torch.cuda.empty_cache()  # the measuring processes are separate (spawned): give the check's memory back
    if "dgl" in args.providers and not args.no_check:
        for m in [m for m in args.models if m in dgl_baseline.DGL_MODELS]:
            print(check_dgl_agreement(m, args), flush=True)

    runner = Runner(device, out, isolation=args.isolation, timeout_s=timeout, env=env,
                    mem_limit_bytes=args.mem_limit_gb * GiB if args.mem_limit_gb else None,
                    progress=not args.no_progress)
    t0 = time.perf_counter()
    rows = runner.run(build_jobs(args, device), desc="layer" if args.layer else "layers")
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out}")

    print()
    print(f"{'model':<12} {'dtype':<9} {'provider':<10} {'round':>5} {'median':>10} {'p20':>10} {'p80':>10} "
          f"{'peak mem':>11}  status")
    for r in rows:
        print(f"{r['case']:<12} {r['dtype']:<9} {r['provider']:<10} {r.get('round', 1):>5} "
              f"{common.fmt_time(r['time_median_s']):>10} "
              f"{common.fmt_time(r['time_p20_s']):>10} {common.fmt_time(r['time_p80_s']):>10} "
              f"{common.fmt_bytes(r['peak_mem_bytes']):>11}  "
              f"{'ok' if r['status'] == 'ok' else 'skipped: ' + str(r['reason'])}")
    print()
    for line in summarize(rows, device, layer=args.layer):
        print(line)
    if args.quick:
        print("(--quick: tiny sizes; the targets are for the full size)")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
