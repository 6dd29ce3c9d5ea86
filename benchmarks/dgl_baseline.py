"""The harness side of the DGL baseline of benchmarks/layers.py (provider "dgl").

DGL 2.1 needs torch 2.2, and graphattn's extension is built for .venv's torch, so DGL runs in its
own environment (`make dgl-env`: .venv-dgl) and its own script, benchmarks/dgl_worker.py. This
module, in the harness's process, finds that environment's Python, writes what a measurement
needs to a temporary folder in version-neutral files (JSON, numpy .npz; no torch.save across
torch versions), runs the worker there in a fresh process and reads back its one JSON result:
- the graph: the job's generated edges (the graph the graphattn / pyg measuring processes build
  from the same spec and seed), before self-loops; the worker adds them as PyG's layers do;
- the inputs: x as models.make_inputs draws it; the output gradient the graphattn / pyg
  processes use (fwdbwd, seed 7, as benchmarks/worker.py makes it) or the labels (train);
- the weights: the graphattn.nn module of the same job (parameter names and shapes of PyG's, the
  state_dict PyG's loads strictly, initialised by models.init_weights from those names), each
  parameter renamed to DGL's by NAME_MAPS. No parameter is left unmapped (KeyError).

The agreement check (`check_agreement`) writes a small graph the same way, has the worker write
DGL's output and gradients, maps the gradients back to PyG's names and compares them with
graphattn.nn's, printing the largest differences.

DGL has GATConv and GATv2Conv but no TransformerConv counterpart: the dgl rows of
"transformer" are skipped with that reason. PyPI's DGL wheels are CPU builds: on CUDA the worker
reports the rows as skipped (DGL's CUDA wheels come from DGL's own index).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import common, models

WORKER = Path(__file__).resolve().with_name("dgl_worker.py")
DEFAULT_PYTHON = common.REPO_ROOT / ".venv-dgl" / "bin" / "python"
RESULT_MARKER = "GRAPHATTN-DGL-RESULT "  # the worker's (dgl_worker.RESULT_MARKER; not imported: torch 2.2 side)
DGL_MODELS = ("gat", "gatv2")
DGL_VERSION_NOTE = "DGL's own environment (make dgl-env)"

# PyG's parameter names (graphattn.nn's are the same) -> the worker's DGL model's, for one layer.
# The DGL model of a layer is dgl_worker.Conv: `conv` (dgl.nn.GATConv / GATv2Conv) and, where
# DGL's layer has no bias of PyG's form, `out_bias`.
_CONV_NAMES = {
    "gat": {"lin.weight": "conv.fc.weight", "att_src": "conv.attn_l", "att_dst": "conv.attn_r"},
    "gatv2": {"lin_l.weight": "conv.fc_src.weight", "lin_l.bias": "conv.fc_src.bias",
              "lin_r.weight": "conv.fc_dst.weight", "lin_r.bias": "conv.fc_dst.bias", "att": "conv.attn",
              "bias": "out_bias"},
}


def conv_names(model: str, concat: bool) -> dict:
    """{PyG name: DGL name} of one GATConv / GATv2Conv. GAT's bias: DGL's own [H*C] bias (added per
    head, then the heads concatenated: PyG's) when concatenated, else the worker's out_bias."""
    names = dict(_CONV_NAMES[model])
    if model == "gat":
        names["bias"] = "conv.bias" if concat else "out_bias"
    return names


def name_map(model: str, mode: str) -> dict:
    """{PyG name: DGL name} of the whole measured module: one layer (mode fwdbwd, heads
    concatenated) or models.Net's two (mode train: convs.0 concatenated, convs.1 averaged)."""
    if model not in DGL_MODELS:
        raise ValueError(f"DGL has no counterpart of {model!r}; it has {', '.join(DGL_MODELS)}")
    if mode != "train":
        return conv_names(model, True)
    return {f"convs.{i}.{k}": f"convs.{i}.{v}" for i, concat in ((0, True), (1, False))
            for k, v in conv_names(model, concat).items()}


def to_dgl(state: dict, model: str, mode: str) -> dict:
    """PyG's state_dict (tensors) -> {DGL name: float32 numpy array}. Every parameter must be
    mapped: a PyG parameter the map does not know raises KeyError (a new one cannot go missing)."""
    names = name_map(model, mode)
    unknown = sorted(set(state) - set(names))
    missing = sorted(set(names) - set(state))
    if unknown or missing:
        raise KeyError(f"{model} ({mode}): PyG parameters without a DGL name {unknown}, "
                       f"mapped names absent from PyG's model {missing}")
    return {names[k]: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in state.items()}


def from_dgl(tensors: dict, model: str, mode: str) -> dict:
    """{DGL name: tensor} -> {PyG name: tensor} (the gradients the worker writes)."""
    back = {v: k for k, v in name_map(model, mode).items()}
    return {back[k]: v for k, v in tensors.items()}


# ---------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------
def default_python() -> Optional[str]:
    """.venv-dgl/bin/python of this checkout, if `make dgl-env` made it."""
    return str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else None


def skip_reason(job: dict) -> Optional[str]:
    """Why a dgl job cannot run, decided without starting anything (None: try it)."""
    if job.get("model") not in DGL_MODELS:
        return (f"DGL has no counterpart of {models.LAYER_CLASSES.get(job.get('model'), job.get('model'))} "
                f"(dgl.nn has {', '.join(models.LAYER_CLASSES[m] for m in DGL_MODELS)} here)")
    python = job.get("dgl_python")
    if not python:
        return f"no DGL environment: {DEFAULT_PYTHON} is absent (make dgl-env) and no --dgl-python was given"
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return f"--dgl-python {python} is not an executable file"
    return None


def _worker_env(threads) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["DGLBACKEND"] = "pytorch"
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))  # DGL's own OpenMP kernels; torch's are set in the worker
    return env


def run_worker(python: str, command: str, folder: Path, timeout_s: float, threads=None) -> dict:
    """Run `dgl_worker.py command folder` with DGL's python: its result dict, or a skipped one."""
    try:
        proc = subprocess.run([python, str(WORKER), command, str(folder)], capture_output=True, text=True,
                              timeout=timeout_s, env=_worker_env(threads), cwd=str(folder))
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"timed out after {timeout_s:.0f} s (--case-timeout)"}
    except OSError as exc:
        return {"status": "skipped", "reason": f"failed to start {python}: {exc}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    code = proc.returncode
    if code is not None and code < 0:
        why = "killed by SIGKILL (out of memory?)" if -code == signal.SIGKILL else f"killed by signal {-code}"
    else:
        err = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        why = f"DGL worker exited with code {code} without a result" + (f": {err[-1][:300]}" if err else "")
    return {"status": "skipped", "reason": why}


# ---------------------------------------------------------------------------
# What the worker reads
# ---------------------------------------------------------------------------
def reference_module(job: dict, device: str = "cpu") -> torch.nn.Module:
    """The job's module built from graphattn.nn (PyG's names and shapes), float32, weights from
    models.init_weights: what the graphattn / pyg providers measure, before their .to(dtype)."""
    nn = models.nn_module("graphattn")
    if job["mode"] == "train":
        module = models.Net(nn, job["model"], job["features"], job["D"], job["H"], job["classes"],
                            job.get("transformer_layers", 1), job.get("dropout", 0.0))
    else:
        module = models.make_layer(nn, job["model"], job["features"], job["D"], job["H"], job.get("dropout", 0.0))
    models.init_weights(module, job["seed"])
    return module.to(device)


def output_grad(shape, dtype=torch.float32) -> torch.Tensor:
    """benchmarks/worker.py's output gradient of a fwdbwd call."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype=dtype)


def write_inputs(folder: Path, job: dict, edge_index: torch.Tensor, state: dict) -> None:
    """job.json, inputs.npz, weights.npz of dgl_worker.py into `folder`."""
    folder = Path(folder)
    n = int(job["N"])
    x, y = models.make_inputs(n, job["features"], job["classes"], job["seed"], "cpu", torch.float32)
    arrays = {"src": edge_index[0].to(torch.int64).numpy(), "dst": edge_index[1].to(torch.int64).numpy(),
              "x": x.numpy()}
    if job["mode"] == "train":
        arrays["y"] = y.numpy()
    else:
        arrays["grad"] = output_grad((n, job["H"] * job["D"])).numpy()
    np.savez(folder / "inputs.npz", **arrays)
    np.savez(folder / "weights.npz", **to_dgl(state, job["model"], job["mode"]))
    keys = ("benchmark", "case", "model", "mode", "N", "H", "D", "dtype", "device", "features", "classes", "dropout",
            "seed", "warmup", "repeats", "budget_s", "threads", "flush_l2", "mem_limit_bytes")
    (folder / "job.json").write_text(json.dumps({k: job.get(k) for k in keys}, indent=1))


def measure(job: dict, timeout_s: float, mem_limit_bytes: Optional[float] = None) -> dict:
    """One dgl measurement (benchmarks/runner.py calls it instead of a forked worker): the
    result dict of benchmarks/worker.py's run_job, plus `env` (DGL's torch, python, ...), which
    the runner writes into the row's environment columns."""
    why = skip_reason(job)
    if why:
        return {"status": "skipped", "reason": why}
    graph = common.make_graph(job["graph"])
    edge_index = graph.edges()
    module = reference_module(job)
    with tempfile.TemporaryDirectory(prefix="graphattn-dgl-") as tmp:
        write_inputs(Path(tmp), {**job, "mem_limit_bytes": mem_limit_bytes}, edge_index, module.state_dict())
        del module
        result = run_worker(job["dgl_python"], "measure", Path(tmp), timeout_s, job.get("threads"))
    result.update(N=graph.num_nodes, E=int(edge_index.shape[1]), max_degree=graph.max_in_degree())
    env = result.get("env") or {}
    if env.get("dgl"):
        result["note"] = (f"dgl {env['dgl']} (torch {env.get('torch', '?')}, {DGL_VERSION_NOTE}); "
                          + describe(job))
    return result


def describe(job: dict) -> str:
    """The note of a dgl row: what the worker builds (dgl_worker.py's docstring)."""
    cls, f, c, h = models.LAYER_CLASSES[job["model"]], job["features"], job["D"], job["H"]
    if job["mode"] == "train":
        what = (f"dgl.nn.{cls}({f},{c},{h}) heads concatenated > ELU > dgl.nn.{cls}({h * c},{job['classes']},{h}) "
                "heads averaged; float32 cross-entropy over all nodes; Adam")
    else:
        what = (f"dgl.nn.{cls}({f},{c},{h}) heads concatenated; forward + backward of the fixed random output "
                "gradient (grads of x and the weights)")
    dropout = job.get("dropout", 0.0)
    return (what + (f"; attention dropout {dropout:g}" if dropout else "")
            + "; PyG's weights and output bias; DGL graph with self-loops (remove_self_loop + add_self_loop, "
              "as PyG's layer adds them) built once in prepare")


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)


def compare(ours: dict, theirs: dict) -> tuple:
    """(output max rel diff, gradients max rel diff): {'out': tensor, 'grad:<name>': tensor} each,
    the same names (PyG's). Gradients relative to the largest gradient of all, as layers.py's
    check does (some are 0 in exact arithmetic: rounding noise)."""
    if set(ours) != set(theirs):
        raise KeyError(f"different tensors: only ours {sorted(set(ours) - set(theirs))}, "
                       f"only theirs {sorted(set(theirs) - set(ours))}")
    out_err = _rel(theirs["out"], ours["out"])
    grads = [k for k in ours if k != "out"]
    scale = max(float(ours[k].abs().max()) for k in grads)
    grad_err = max(float((theirs[k] - ours[k]).abs().max()) for k in grads) / max(scale, 1e-12)
    return out_err, grad_err


def graphattn_outputs(job: dict, edge_index: torch.Tensor) -> dict:
    """graphattn.nn's output and gradients for the agreement check (float32, eval: no dropout)."""
    module = reference_module(job).eval()
    n = int(job["N"])
    x, y = models.make_inputs(n, job["features"], job["classes"], job["seed"], "cpu", torch.float32)
    res = {}
    if job["mode"] == "train":
        out = module(x, edge_index)
        F.cross_entropy(out.float(), y).backward()
    else:
        x.requires_grad_(True)
        out = module(x, edge_index)
        out.backward(output_grad(out.shape))
        res["grad:x"] = x.grad
    res["out"] = out.detach()
    res.update({f"grad:{k}": p.grad for k, p in module.named_parameters()})
    return res


def check_agreement(python: str, model: str, mode: str, *, features: int, hidden: int, heads: int,
                    classes: int, graph: dict, seed: int = 3, timeout_s: float = 300.0) -> tuple:
    """graphattn.nn vs DGL on a small graph, float32, CPU, the same weights (PyG's names mapped to
    DGL's). -> (line to print, out max rel diff or None, grads max rel diff or None)."""
    job = {"benchmark": "agreement", "model": model, "mode": mode, "dtype": "float32", "device": "cpu",
           "features": features, "D": hidden, "H": heads, "classes": classes, "dropout": 0.0, "seed": seed,
           "graph": graph, "N": common.graph_num_nodes(graph), "dgl_python": python}
    what = "training-step model" if mode == "train" else "layer"
    why = skip_reason(job)
    if why:
        return f"check dgl {model} ({what}): skipped - {why}", None, None
    edge_index = common.make_graph(graph).edges()
    with tempfile.TemporaryDirectory(prefix="graphattn-dgl-check-") as tmp:
        write_inputs(Path(tmp), job, edge_index, reference_module(job).state_dict())
        result = run_worker(python, "agree", Path(tmp), timeout_s)
        if result.get("status") != "ok":
            return f"check dgl {model} ({what}): DGL worker failed - {result.get('reason')}", None, None
        with np.load(Path(tmp) / "dgl_out.npz") as f:
            raw = {k: torch.from_numpy(f[k]) for k in f.files}
    theirs = {"out": raw.pop("out")}
    if "grad:x" in raw:
        theirs["grad:x"] = raw.pop("grad:x")
    theirs.update({f"grad:{k}": v for k, v in from_dgl({k[len("grad:"):]: v for k, v in raw.items()},
                                                        model, mode).items()})
    ours = graphattn_outputs(job, edge_index)
    out_err, grad_err = compare(ours, theirs)
    ok = out_err < 1e-3 and grad_err < 1e-3
    env = result.get("env", {})
    line = (f"check dgl {model} ({what}): graphattn.nn vs dgl {env.get('dgl', '?')} (torch {env.get('torch', '?')}), "
            f"N={job['N']}, E={edge_index.shape[1]} ({result.get('self_loop_edges', '?')} with self-loops), float32, "
            f"{len(theirs) - 1} gradients: output max rel diff {out_err:.1e}, grads max rel diff {grad_err:.1e} "
            f"({'agree' if ok else 'DISAGREE'})")
    return line, out_err, grad_err
