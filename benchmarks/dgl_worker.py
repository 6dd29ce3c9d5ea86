"""DGL's side of the DGL baseline: run by the Python of DGL's own environment (`make dgl-env`:
.venv-dgl, DGL 2.1.0 with torch 2.2.1), never imported by the harness, which runs in .venv
(graphattn's extension is built for that torch and cannot load under torch 2.2).

    DGLBACKEND=pytorch .venv-dgl/bin/python benchmarks/dgl_worker.py measure DIR
        one measurement; prints one line "GRAPHATTN-DGL-RESULT {json}" (the result dict that
        benchmarks/worker.py returns for the graphattn / pyg providers, plus the environment)
    DGLBACKEND=pytorch .venv-dgl/bin/python benchmarks/dgl_worker.py agree DIR
        forward + backward once in float32, no timing; writes DIR/dgl_out.npz: "out" and
        "grad:<name>" for x (fwdbwd mode) and every parameter

DIR is written by benchmarks/dgl_baseline.py in version-neutral files (JSON and numpy, no
torch.save):
  job.json     the job (benchmarks/runner.py's make_job keys, model, features, classes, dropout)
  inputs.npz   src, dst (int64: the generated edges, before self-loops), x (float32 [N, F]), and
               grad (float32 [N, H*C], mode fwdbwd: the output gradient) or y (int64 [N], mode train)
  weights.npz  every parameter of the DGL model below by its name (float32), mapped from PyG's
               parameters (dgl_baseline.NAME_MAPS)

The models compute what PyG's layers compute (benchmarks/models.py), with the same weights:
- graph: dgl.graph((src, dst)), then remove_self_loop + add_self_loop, as PyG's GATConv /
  GATv2Conv do inside every call (add_self_loops=True); built once, outside the timed calls, as
  DGL's API intends (a DGLGraph is prepared once and reused), with its formats created;
- fwdbwd ("--layer"): dgl.nn.GATConv / GATv2Conv(F, C, H) with the heads concatenated to [N, H*C];
  forward, then backward of the fixed output gradient; grads of x and of every weight;
- train: GATConv/GATv2Conv(F, hidden, H) -> ELU -> GATConv/GATv2Conv(H*hidden, classes, H) with
  the heads averaged; float32 cross-entropy over all nodes; Adam (lr 1e-3); zero_grad first.
PyG's output bias is added after the heads are concatenated / averaged. DGL's GATConv adds its
own [H*C] bias per head before that, which is the same thing for concatenated heads, so it is used
there; DGL's GATv2Conv has no output bias (its `bias` is that of fc_src / fc_dst, PyG's lin_l /
lin_r biases), and for averaged heads PyG's bias is [C]: there the model adds it (`out_bias`).

How it measures is benchmarks/worker.py's way, with the same functions: benchmarks/common.py
(standard library and torch only, so it loads under torch 2.2; tests/test_benchmarks.py checks
that) gives the timer, the repeats with their budget, the statistics and the peak memory (CPU:
VmHWM after `clear_refs`, minus the RSS before the call; CUDA: max_memory_allocated). The
address-space cap is benchmarks/worker.py's. Order: load the edges; prepare (timed apart: graph,
model, inputs); warmup calls; one call for the peak memory; the timed repeats; before each call
the leaves' grads are reset.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common  # noqa: E402  (standard library + torch only)

RESULT_MARKER = "GRAPHATTN-DGL-RESULT "
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


# ---------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------
class Conv(torch.nn.Module):
    """dgl.nn.GATConv / GATv2Conv computing PyG's layer: heads concatenated ([N, H*C]) or
    averaged ([N, C]), PyG's output bias (see the module docstring)."""

    def __init__(self, model: str, in_feats: int, out_feats: int, heads: int, concat: bool, dropout: float):
        super().__init__()
        import dgl.nn

        if model == "gat":
            native_bias = concat
            self.conv = dgl.nn.GATConv(in_feats, out_feats, heads, attn_drop=dropout, bias=native_bias)
        elif model == "gatv2":
            native_bias = False
            self.conv = dgl.nn.GATv2Conv(in_feats, out_feats, heads, attn_drop=dropout, bias=True,
                                         share_weights=False)
        else:
            raise ValueError(f"DGL has no counterpart of {model!r} here (gat, gatv2)")
        self.concat = concat
        self.out_bias = None if native_bias else torch.nn.Parameter(
            torch.zeros(heads * out_feats if concat else out_feats))

    def forward(self, g, x):
        out = self.conv(g, x)  # [N, H, C]
        out = out.reshape(out.shape[0], -1) if self.concat else out.mean(dim=1)
        return out if self.out_bias is None else out + self.out_bias


class Net(torch.nn.Module):
    """benchmarks/models.py's 2-layer GAT / GATv2 with DGL's layers."""

    def __init__(self, model: str, features: int, hidden: int, heads: int, classes: int, dropout: float):
        super().__init__()
        self.convs = torch.nn.ModuleList([Conv(model, features, hidden, heads, True, dropout),
                                          Conv(model, heads * hidden, classes, heads, False, dropout)])

    def forward(self, g, x):
        return self.convs[1](g, F.elu(self.convs[0](g, x)))


def build_model(job: dict) -> torch.nn.Module:
    if job["mode"] == "train":
        return Net(job["model"], job["features"], job["D"], job["H"], job["classes"], job.get("dropout", 0.0))
    return Conv(job["model"], job["features"], job["D"], job["H"], True, job.get("dropout", 0.0))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    with np.load(path) as w:
        state = {k: torch.from_numpy(w[k]) for k in w.files}
    model.load_state_dict(state, strict=True)  # every parameter given, no other name


def build_graph(src: torch.Tensor, dst: torch.Tensor, n: int, device: str):
    import dgl

    g = dgl.graph((src, dst), num_nodes=n)
    g = dgl.add_self_loop(dgl.remove_self_loop(g))
    g = g.to(device)
    g.create_formats_()
    return g


# ---------------------------------------------------------------------------
# Environment, errors
# ---------------------------------------------------------------------------
def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda or "",
           "triton": ""}
    try:
        import dgl

        env["dgl"] = dgl.__version__
    except Exception as exc:  # noqa: BLE001  (reported by the caller)
        env["dgl_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return env


def _check_device(device: str) -> None:
    if device == "cuda":
        import dgl

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False in the DGL environment")
        try:
            dgl.graph(([0], [0])).to("cuda")
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"this DGL build has no CUDA (PyPI's dgl wheels are CPU builds): "
                               f"{common.first_line(exc)}") from None


# ---------------------------------------------------------------------------
# measure / agree
# ---------------------------------------------------------------------------
def measure(folder: Path) -> dict:
    job = json.loads((folder / "job.json").read_text())
    device, dtype = job["device"], DTYPES[job["dtype"]]
    result = {"status": "skipped", "env": environment()}
    stage = common.Stage()
    stack = contextlib.ExitStack()
    try:
        if "dgl_error" in result["env"]:
            raise RuntimeError(f"dgl does not import: {result['env']['dgl_error']}")
        if device == "cpu":
            common.limit_cpu_memory(job.get("mem_limit_bytes"))
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        _check_device(device)
        stage.name = "graph"
        data = stack.enter_context(np.load(folder / "inputs.npz"))  # read lazily, key by key
        n = int(job["N"])
        src, dst = torch.from_numpy(data["src"]), torch.from_numpy(data["dst"])  # before the baseline

        stage.name = "prepare"
        mem0 = common.memory_in_use(device, collect=True)
        t0 = time.perf_counter()
        g = build_graph(src, dst, n, device)
        model = build_model(job)
        load_weights(model, folder / "weights.npz")
        model.to(device=device, dtype=dtype).train()
        x = torch.from_numpy(data["x"]).to(device=device, dtype=dtype)
        if job["mode"] == "train":
            y = torch.from_numpy(data["y"]).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            leaves = list(model.parameters())

            def step():
                opt.zero_grad(set_to_none=True)
                out = model(g, x)
                loss = F.cross_entropy(out.float(), y)
                loss.backward()
                opt.step()
        elif job["mode"] == "fwdbwd":
            x.requires_grad_(True)
            leaves = [x, *model.parameters()]
            holder = {}

            def step():
                out = model(g, x)
                grad = holder.get("g")
                if grad is None:  # made by the first (warmup) call, as benchmarks/worker.py does
                    grad = holder["g"] = torch.from_numpy(data["grad"]).to(device=device, dtype=dtype)
                out.backward(grad)
        else:
            raise ValueError(f"mode {job['mode']!r}: the DGL worker measures fwdbwd (--layer) and train")
        if device == "cuda":
            torch.cuda.synchronize()
        result["prep_s"] = time.perf_counter() - t0
        result["prep_mem_bytes"] = max(0, common.memory_in_use(device) - mem0)

        result.update(common.measure_step(step, leaves, job, device, stage), self_loop_edges=int(g.num_edges()))
        return result
    except BaseException as exc:  # noqa: BLE001  (reported as a skipped row, like benchmarks/worker.py)
        return common.skipped_because(result, exc, stage)
    finally:
        stack.close()


def agree(folder: Path) -> None:
    """Outputs and gradients on the harness's (small) inputs, float32, no dropout."""
    job = json.loads((folder / "job.json").read_text())
    device = job["device"]
    _check_device(device)
    with np.load(folder / "inputs.npz") as data:
        arrays = {k: data[k] for k in data.files}
    g = build_graph(torch.from_numpy(arrays["src"]), torch.from_numpy(arrays["dst"]), int(job["N"]), device)
    model = build_model(job)
    load_weights(model, folder / "weights.npz")
    model.to(device).eval()
    x = torch.from_numpy(arrays["x"]).to(device)
    out_np = {}
    if job["mode"] == "train":
        out = model(g, x)
        F.cross_entropy(out.float(), torch.from_numpy(arrays["y"]).to(device)).backward()
    else:
        x.requires_grad_(True)
        out = model(g, x)
        out.backward(torch.from_numpy(arrays["grad"]).to(device))
        out_np["grad:x"] = x.grad.cpu().numpy()
    out_np["out"] = out.detach().cpu().numpy()
    for name, p in model.named_parameters():
        out_np[f"grad:{name}"] = p.grad.cpu().numpy()
    np.savez(folder / "dgl_out.npz", **out_np)
    print(RESULT_MARKER + json.dumps({"status": "ok", "env": environment(), "self_loop_edges": int(g.num_edges())}),
          flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("measure", "agree"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "agree":
        agree(folder)
        return 0
    print(RESULT_MARKER + json.dumps(measure(folder)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
