"""What is measured: graphattn's backends and the baselines, each as a `Provider`.

A provider turns a job (sizes, dtype, device, mode) and a generated pattern into a forward
function and the leaf tensors whose gradients the backward fills. Preparation (building the
Graph, the boolean mask, the padded layout, the module) happens in `prepare`, outside the timed
region; its time and memory are reported separately (prep_s, prep_mem_bytes).

Forms (what a provider consumes):
- "csr": an explicit edge list [2, E] (sources, targets), q/k/v [N, H, D];
- "segments": a batch of complete graphs given by `ptr`;
- "dense": one complete graph / sequence of N tokens, no edge list.

Names: graphattn-<backend> (a graphattn backend forced by name), graphattn-<backend>+graph (the
raw edge_index passed each call: the Graph is built inside the call), graphattn-<backend>+proj
(graphattn with TransformerConv's q/k/v Linear projections), torch-sdpa, torch-sdpa-mask,
torch-sdpa-padded, pyg-scatter, pyg-transformerconv, flex-blockmask, dgl-edge_softmax; graphattn,
pyg and dgl: whole models' training steps (mode "train") and single layers' forward + backward (mode
"fwdbwd") of benchmarks/models.py, run by benchmarks/layers.py (dgl in DGL's own environment:
benchmarks/dgl_baseline.py).

Dense baselines: torch-sdpa takes SDPA's own contiguous [1, H, N, D] layout (made in prepare);
torch-sdpa-blhd takes the [1, N, H, D] data graphattn takes and transposes inside the timed call
(like for like with graphattn's dense path). FlexAttention: flex (dense, no mask), flex-document
(segments, a document mask), flex-blockmask (edge list, a BlockMask over the adjacency).

Heavy imports (torch_geometric, dgl, flex_attention) happen inside `prepare`, in the worker.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Optional

import torch
import torch.nn.functional as F

from . import common, dgl_baseline, models
from .common import parse_dtype

GiB = 2**30


def _elem_bytes(dtype_name: str) -> int:
    return torch.empty(0, dtype=parse_dtype(dtype_name)).element_size()


def make_qkv(n: int, h: int, d: int, dtype, device, seed: int, requires_grad: bool, layout: str = "nhd"):
    """q, k, v leaves, N(0, 1). layout 'nhd' -> [N, H, D]; 'bhnd' -> [1, H, N, D] (contiguous)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(3):
        t = torch.randn(n, h, d, generator=g, dtype=torch.float32)
        if layout == "bhnd":
            t = t.transpose(0, 1).unsqueeze(0).contiguous()
        out.append(t.to(device=device, dtype=dtype).requires_grad_(requires_grad))
    return out


class Provider:
    name = "?"
    forms: tuple = ()
    devices: tuple = ("cpu", "cuda")
    modules: tuple = ()  # importable modules it needs
    note = ""
    counts_flops = True  # the row's TFLOP/s is the attention's FLOPs over its time

    def parent_skip_reason(self, job: dict) -> Optional[str]:
        """Why the job cannot run, decided without importing anything heavy (None: try it)."""
        if job["device"] not in self.devices:
            return f"{self.name} runs on {'/'.join(self.devices)} only in this harness"
        if job["form"] not in self.forms:
            return f"{self.name} does not take the {job['form']} form"
        for mod in self.modules:
            if importlib.util.find_spec(mod.split(".")[0]) is None:
                return f"{mod} is not installed"
        return None

    def estimate_bytes(self, job: dict, num_edges: int) -> float:
        """A generous estimate of the memory the whole measurement needs (inputs included)."""
        return _inputs_bytes(job)

    def prepare(self, job: dict, graph):
        """-> (forward() -> output tensor, list of leaves whose .grad the harness resets)."""
        raise NotImplementedError

    def bytes_moved(self, job: dict, num_edges: int) -> Optional[float]:
        """Bytes one call must move, for the row's GB/s: a sparse forward's K/V gathers and Q/out
        streams (common.sparse_bytes); None where no such count is meaningful."""
        if job["mode"] != "fwd" or job["form"] != "csr":
            return None
        return common.sparse_bytes(num_edges, job["N"], job["H"], job["D"], _elem_bytes(job["dtype"]))


class CopyBandwidth(Provider):
    """The machine's copy bandwidth in the same run: dst.copy_(src) over buffers as large as the
    bytes a sparse forward of the job's sizes moves; its GB/s counts the read and the write."""

    name = "copy"
    forms = ("csr",)
    counts_flops = False
    note = "dst.copy_(src), buffers of the sparse forward's byte count; GB/s = (read + write) / time"

    def parent_skip_reason(self, job):
        return super().parent_skip_reason(job) or (None if job["mode"] == "fwd" else "copy is timed in fwd mode only")

    def _numel(self, job, num_edges):
        return int(common.sparse_bytes(num_edges, job["N"], job["H"], job["D"], 4) // 4)

    def estimate_bytes(self, job, num_edges):
        return 8.0 * self._numel(job, num_edges)

    def prepare(self, job, graph):
        src = torch.ones(self._numel(job, graph.num_edges), device=job["device"])
        dst = torch.empty_like(src)
        dst.copy_(src)  # touch every page before timing
        return (lambda: dst.copy_(src)), []

    def bytes_moved(self, job, num_edges):
        return 2.0 * 4 * self._numel(job, num_edges)


def _inputs_bytes(job) -> float:
    nhd = job["N"] * job["H"] * job["D"]
    factor = 7 if job["mode"] == "fwdbwd" else 4  # q, k, v, out (+ grad_out, dq, dk, dv)
    return factor * nhd * _elem_bytes(job["dtype"])


def _edge_tensor_bytes(job, num_edges, per_elem_factor) -> float:
    return float(num_edges) * job["H"] * job["D"] * _elem_bytes(job["dtype"]) * per_elem_factor


# ---------------------------------------------------------------------------
# graphattn
# ---------------------------------------------------------------------------
class GraphattnProvider(Provider):
    """graphattn.attention with one backend forced by name.

    csr: the Graph (CSR + the transposed CSR the backward uses) is built once in prepare, as the
    API intends (prepared once, reused across layers and steps); variant 'graph' passes the raw
    edge_index instead, so every call sorts and indexes again."""

    def __init__(self, backend: str, variant: str = ""):
        self.backend = backend
        self.variant = variant
        self.name = f"graphattn-{backend}" + (f"+{variant}" if variant else "")
        self.forms = ("csr",) if variant else self._backend_forms()
        if variant == "proj":
            self.modules = ()
            self.note = "includes the q/k/v Linear(H*D, H*D) projections of TransformerConv"
        elif variant == "graph":
            self.note = "Graph built inside every call (edge_index passed raw)"

    def _backend_forms(self):
        from graphattn.backends import BACKENDS

        b = BACKENDS.get(self.backend)
        if b is None:
            return ()
        return tuple({"csr": "csr", "segments": "segments", "dense": "dense"}[p] for p in b.patterns)

    def parent_skip_reason(self, job):
        from graphattn.backends import BACKENDS

        if self.backend not in BACKENDS:
            return f"graphattn has no backend {self.backend!r} (it has {sorted(BACKENDS)})"
        b = BACKENDS[self.backend]
        if job["device"] not in b.devices:
            return f"backend {self.backend} runs on {'/'.join(b.devices)} tensors, not {job['device']}"
        why = b.unavailable_reason(job["device"])
        if why:
            return f"backend {self.backend}: {why}"
        return super().parent_skip_reason(job)

    def estimate_bytes(self, job, num_edges):
        est = _inputs_bytes(job)
        if job["form"] == "csr":
            # edge_index (16 B/edge) + CSR col/eid + transposed row/eid (8 B each) + sort temporaries
            est += 96.0 * num_edges
        if self.backend == "reference":
            est += _edge_tensor_bytes(job, num_edges, 8 if job["mode"] == "fwdbwd" else 4)
        return est

    def prepare(self, job, graph):
        import graphattn

        device, dtype = job["device"], parse_dtype(job["dtype"])
        n, h, d = graph.num_nodes, job["H"], job["D"]
        bwd = job["mode"] == "fwdbwd"
        backend = self.backend
        if self.variant == "proj":
            return _projected(job, graph, lambda q, k, v, pattern: graphattn.attention(
                q, k, v, pattern, backend=backend))
        q, k, v = make_qkv(n, h, d, dtype, device, job["seed"], bwd)
        if job["form"] == "dense":
            def forward():
                return graphattn.attention(q[None], k[None], v[None], None, backend=backend)
            return forward, [q, k, v]
        if job["form"] == "segments":
            pattern = graphattn.Graph.block_diagonal(graph.segments().to(device))
        else:
            edge_index = graph.edges().to(device)
            if self.variant == "graph":
                pattern = edge_index
            else:
                pattern = graphattn.Graph.from_edge_index(edge_index, num_nodes=(n, n))
                if bwd:
                    _prebuild_backward(pattern)

        def forward():
            return graphattn.attention(q, k, v, pattern, backend=backend)
        return forward, [q, k, v]


def _prebuild_backward(graph) -> None:
    """Build the Graph's cached source-sorted view (used by the backward) in prepare, so that its
    cost lands in prep_s / prep_mem_bytes. (The warmup call would build and cache it anyway.)"""
    build = getattr(graph, "transposed", None)
    if callable(build):
        build()


def _projected(job, graph, attend):
    """TransformerConv's computation (root_weight=False, no edge features, no dropout) with
    `attend` doing the attention: x [N, H*D] -> Linear -> q, k, v [N, H, D] -> attend -> [N, H*D]."""
    device, dtype = job["device"], parse_dtype(job["dtype"])
    n, h, d = graph.num_nodes, job["H"], job["D"]
    torch.manual_seed(job["seed"])
    lins = torch.nn.ModuleList(torch.nn.Linear(h * d, h * d) for _ in range(3)).to(device=device, dtype=dtype)
    x = torch.randn(n, h * d, generator=torch.Generator().manual_seed(job["seed"] + 1)).to(device=device,
                                                                                            dtype=dtype)
    x.requires_grad_(job["mode"] == "fwdbwd")
    import graphattn

    pattern = graphattn.Graph.from_edge_index(graph.edges().to(device), num_nodes=(n, n))
    if job["mode"] == "fwdbwd":
        _prebuild_backward(pattern)

    def forward():
        q, k, v = (lin(x).view(n, h, d) for lin in lins)
        return attend(q, k, v, pattern).reshape(n, h * d)
    return forward, [x, *lins.parameters()]


# ---------------------------------------------------------------------------
# torch SDPA (dense)
# ---------------------------------------------------------------------------
class TorchSdpa(Provider):
    name = "torch-sdpa"
    forms = ("dense",)
    note = ("F.scaled_dot_product_attention on contiguous [1, H, N, D] made in prepare (not the layout graphattn "
            "takes: torch-sdpa-blhd is like for like), no mask")

    def prepare(self, job, graph):
        q, k, v = make_qkv(graph.num_nodes, job["H"], job["D"], parse_dtype(job["dtype"]), job["device"],
                           job["seed"], job["mode"] == "fwdbwd", layout="bhnd")
        return (lambda: F.scaled_dot_product_attention(q, k, v)), [q, k, v]


class TorchSdpaBlhd(Provider):
    """SDPA on exactly the data graphattn's dense path takes: q, k, v [N, H, D] leaves, given a batch
    dim and viewed as [1, H, N, D] (transposes, no copies) inside the timed call, the output viewed
    back as [1, N, H, D]: what graphattn-<b> on the dense form does, without graphattn."""

    name = "torch-sdpa-blhd"
    forms = ("dense",)
    note = ("F.scaled_dot_product_attention on the [1, N, H, D] tensors graphattn takes, transposed to "
            "[1, H, N, D] views and back inside the timed call (like for like with graphattn-<b>), no mask")

    def prepare(self, job, graph):
        q, k, v = make_qkv(graph.num_nodes, job["H"], job["D"], parse_dtype(job["dtype"]), job["device"],
                           job["seed"], job["mode"] == "fwdbwd")

        def forward():
            out = F.scaled_dot_product_attention(q[None].transpose(1, 2), k[None].transpose(1, 2),
                                                 v[None].transpose(1, 2))
            return out.transpose(1, 2)
        return forward, [q, k, v]


class TorchSdpaMask(Provider):
    name = "torch-sdpa-mask"
    forms = ("csr",)
    note = "F.scaled_dot_product_attention with a boolean [N, N] mask built from the edge list (duplicates collapse)"

    def estimate_bytes(self, job, num_edges):
        n2 = float(job["N"]) ** 2
        # bool mask, + (CPU) the float mask / score matrices of the kernels that take a mask
        per_pair = 1 + (4 + 12 * job["H"] if job["device"] == "cpu" else 4)
        return _inputs_bytes(job) + n2 * per_pair + 16.0 * num_edges

    def prepare(self, job, graph):
        device = job["device"]
        n = graph.num_nodes
        q, k, v = make_qkv(n, job["H"], job["D"], parse_dtype(job["dtype"]), device, job["seed"],
                           job["mode"] == "fwdbwd", layout="bhnd")
        src, dst = graph.edges().to(device)
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        mask[dst, src] = True
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), [q, k, v]


class TorchSdpaPadded(Provider):
    name = "torch-sdpa-padded"
    forms = ("segments",)
    note = "segments padded to the largest into [B, H, Lmax, D], key-padding mask; pad/unpad timed"

    def estimate_bytes(self, job, num_edges):
        sizes_max = job["graph"]["max_size"]
        n_pad = float(job["N"]) / max(1, job["graph"]["min_size"]) * sizes_max  # segments x Lmax, at most
        per_row = job["H"] * job["D"] * _elem_bytes(job["dtype"]) * 8
        scores = n_pad * sizes_max * job["H"] * 4 * (3 if job["device"] == "cpu" else 0)
        return _inputs_bytes(job) + n_pad * per_row + scores

    def prepare(self, job, graph):
        device, dtype = job["device"], parse_dtype(job["dtype"])
        h, d = job["H"], job["D"]
        ptr = graph.segments()
        sizes = (ptr[1:] - ptr[:-1])
        b, lmax = sizes.numel(), int(sizes.max())
        seg = torch.repeat_interleave(torch.arange(b), sizes)
        pos = (seg * lmax + torch.arange(graph.num_nodes) - ptr[:-1][seg]).to(device)
        key_mask = (torch.arange(lmax)[None, :] < sizes[:, None]).to(device)[:, None, None, :]  # [B, 1, 1, Lmax]
        q, k, v = make_qkv(graph.num_nodes, h, d, dtype, device, job["seed"], job["mode"] == "fwdbwd")

        def pad(t):
            return t.new_zeros(b * lmax, h, d).index_copy(0, pos, t).view(b, lmax, h, d).transpose(1, 2)

        def forward():
            out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=key_mask)
            return out.transpose(1, 2).reshape(b * lmax, h, d)[pos]
        return forward, [q, k, v]


# ---------------------------------------------------------------------------
# PyG
# ---------------------------------------------------------------------------
def pyg_scatter_attention(q, k, v, edge_index, num_nodes: int, scale: Optional[float] = None):
    """The PyG way: gather per edge, torch_geometric.utils.softmax over each target's edges,
    scatter-sum the weighted messages. [E, H, D] temporaries; backward by autograd."""
    from torch_geometric.utils import scatter, softmax

    src, dst = edge_index[0], edge_index[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q[dst] * k[src]).sum(-1) * scale  # [E, H]
    alpha = softmax(scores, dst, num_nodes=num_nodes)
    return scatter(alpha.unsqueeze(-1) * v[src], dst, dim=0, dim_size=num_nodes, reduce="sum")


class PygScatter(Provider):
    name = "pyg-scatter"
    forms = ("csr",)
    modules = ("torch_geometric",)
    note = "gather (q[dst]*k[src]).sum(-1), torch_geometric.utils.softmax, scatter-sum alpha*v[src]; autograd"

    def estimate_bytes(self, job, num_edges):
        factor = 8 if job["mode"] == "fwdbwd" else 4
        return _inputs_bytes(job) + _edge_tensor_bytes(job, num_edges, factor) + 40.0 * num_edges * job["H"]

    def prepare(self, job, graph):
        n = graph.num_nodes
        q, k, v = make_qkv(n, job["H"], job["D"], parse_dtype(job["dtype"]), job["device"], job["seed"],
                           job["mode"] == "fwdbwd")
        edge_index = graph.edges().to(job["device"])
        import torch_geometric.utils  # noqa: F401  (import before timing)

        return (lambda: pyg_scatter_attention(q, k, v, edge_index, n)), [q, k, v]


class PygTransformerConv(Provider):
    name = "pyg-transformerconv"
    forms = ("csr",)
    modules = ("torch_geometric",)
    note = ("torch_geometric.nn.TransformerConv(H*D, D, heads=H, root_weight=False): includes the q/k/v "
            "Linear projections; compare with graphattn-<b>+proj")

    def estimate_bytes(self, job, num_edges):
        factor = 10 if job["mode"] == "fwdbwd" else 5
        return 2 * _inputs_bytes(job) + _edge_tensor_bytes(job, num_edges, factor) + 40.0 * num_edges * job["H"]

    def prepare(self, job, graph):
        from torch_geometric.nn import TransformerConv

        device, dtype = job["device"], parse_dtype(job["dtype"])
        n, h, d = graph.num_nodes, job["H"], job["D"]
        torch.manual_seed(job["seed"])
        conv = TransformerConv(h * d, d, heads=h, root_weight=False).to(device=device, dtype=dtype)
        x = torch.randn(n, h * d, generator=torch.Generator().manual_seed(job["seed"] + 1)).to(device=device,
                                                                                                dtype=dtype)
        x.requires_grad_(job["mode"] == "fwdbwd")
        edge_index = graph.edges().to(device)
        return (lambda: conv(x, edge_index)), [x, *conv.parameters()]


# ---------------------------------------------------------------------------
# FlexAttention, DGL
# ---------------------------------------------------------------------------
class FlexAttention(Provider):
    """torch.compile(flex_attention) on the [N, H, D] data graphattn takes (viewed as [1, H, N, D]
    and the output viewed back inside the timed call), one provider per form:
    - flex (dense): no mask;
    - flex-document (segments): the document mask `doc[q] == doc[kv]` of the segment ids, a
      BlockMask built by create_block_mask with _compile=True (no [N, N] mask is materialised);
    - flex-blockmask (edge list): a BlockMask over a boolean [N, N] adjacency (duplicates collapse).
    The mask and the compile of the first call (in the grad mode of the timed calls) happen in
    prepare: prep_s includes them, the timed calls do not. Where torch has no FlexAttention for a
    job (torch 2.13: no backward on CPU, no float64 on CPU), the row records torch's own error."""

    form = "?"
    mask_note = ""

    def __init__(self):
        self.forms = (self.form,)
        self.note = (f"torch.compile(flex_attention){self.mask_note}; q, k, v [N, H, D] as graphattn takes them; "
                     "mask build and compile in prep_s")

    def estimate_bytes(self, job, num_edges):
        return _inputs_bytes(job)

    def block_mask(self, job, graph):
        return None

    def prepare(self, job, graph):
        from torch.nn.attention.flex_attention import flex_attention

        n = graph.num_nodes
        q, k, v = make_qkv(n, job["H"], job["D"], parse_dtype(job["dtype"]), job["device"], job["seed"],
                           job["mode"] == "fwdbwd")
        block_mask = self.block_mask(job, graph)
        flex = torch.compile(flex_attention, dynamic=False)

        def forward():
            out = flex(q[None].transpose(1, 2), k[None].transpose(1, 2), v[None].transpose(1, 2),
                       block_mask=block_mask)
            return out.transpose(1, 2)

        with torch.set_grad_enabled(job["mode"] == "fwdbwd"):
            forward()  # the compile, in the grad mode of the timed calls
        return forward, [q, k, v]


class FlexDense(FlexAttention):
    name = "flex"
    form = "dense"
    mask_note = ", no mask"


class FlexDocument(FlexAttention):
    name = "flex-document"
    form = "segments"
    mask_note = " with a document-mask BlockMask (create_block_mask, _compile=True) from the segment ids"

    def estimate_bytes(self, job, num_edges):
        blocks = float(job["N"]) / 128 + 1
        return _inputs_bytes(job) + 16.0 * blocks * blocks + 16.0 * job["N"]  # block tables, segment ids

    def block_mask(self, job, graph):
        from torch.nn.attention.flex_attention import create_block_mask

        ptr, n = graph.segments(), graph.num_nodes
        doc = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr[1:] - ptr[:-1]).to(job["device"])

        def mask_mod(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        return create_block_mask(mask_mod, None, None, n, n, device=job["device"], _compile=True)


class FlexBlockMask(FlexAttention):
    name = "flex-blockmask"
    form = "csr"
    mask_note = " with a BlockMask from create_block_mask over a boolean [N, N] adjacency (duplicates collapse)"

    def estimate_bytes(self, job, num_edges):
        return _inputs_bytes(job) + float(job["N"]) ** 2 * 1.2 + 16.0 * num_edges

    def block_mask(self, job, graph):
        from torch.nn.attention.flex_attention import create_block_mask

        device, n = job["device"], graph.num_nodes
        src, dst = graph.edges().to(device)
        adj = torch.zeros(n, n, dtype=torch.bool, device=device)
        adj[dst, src] = True

        def mask_mod(b, h, q_idx, kv_idx):
            return adj[q_idx, kv_idx]

        return create_block_mask(mask_mod, None, None, n, n, device=device)


class DglEdgeSoftmax(Provider):
    name = "dgl-edge_softmax"
    forms = ("csr",)
    modules = ("dgl",)
    note = "dgl.ops.u_dot_v, dgl.nn.functional.edge_softmax, dgl.ops.u_mul_e_sum; autograd"

    def estimate_bytes(self, job, num_edges):
        return _inputs_bytes(job) + _edge_tensor_bytes(job, num_edges, 2) + 40.0 * num_edges * job["H"]

    def prepare(self, job, graph):
        import dgl
        from dgl.nn.functional import edge_softmax

        device = job["device"]
        n = graph.num_nodes
        q, k, v = make_qkv(n, job["H"], job["D"], parse_dtype(job["dtype"]), device, job["seed"],
                           job["mode"] == "fwdbwd")
        src, dst = graph.edges().to(device)
        g = dgl.graph((src, dst), num_nodes=n, device=device)
        g.create_formats_()
        scale = 1.0 / math.sqrt(job["D"])

        def forward():
            scores = dgl.ops.u_dot_v(g, k, q) * scale  # [E, H, 1]
            alpha = edge_softmax(g, scores)
            return dgl.ops.u_mul_e_sum(g, v, alpha)
        return forward, [q, k, v]


# ---------------------------------------------------------------------------
# Whole models (mode "train": prepare returns one whole training step; benchmarks/layers.py)
# ---------------------------------------------------------------------------
class LayerProvider(Provider):
    """On graphattn.nn ('graphattn') or torch_geometric.nn ('pyg'): a training step of models.Net
    (mode 'train'), or one layer's forward + backward (mode 'fwdbwd', models.make_layer:
    `benchmarks.layers --layer`). Job keys beyond make_job's: model, features, classes,
    transformer_layers, dropout."""

    forms = ("csr",)

    def __init__(self, name: str):
        self.name = name
        self.modules = ("torch_geometric",) if name == "pyg" else ()
        self.note = ""

    def parent_skip_reason(self, job):
        if job["mode"] not in ("train", "fwdbwd") or "model" not in job:
            return (f"{self.name} (benchmarks.layers) measures training steps (mode 'train') and layers' "
                    "forward + backward (mode 'fwdbwd') of its models only")
        return super().parent_skip_reason(job)

    def estimate_bytes(self, job, num_edges):
        n, h, d, elem = job["N"], job["H"], job["D"], _elem_bytes(job["dtype"])
        e = num_edges + (n if job["model"] in ("gat", "gatv2") else 0)  # self-loops
        if job["mode"] != "train":  # one layer
            widths = [h * d]
        else:
            widths = ([h * d, h * job["classes"]] if job["model"] != "transformer"
                      else [h * d] * job.get("transformer_layers", 1))
        nodes = n * (job["features"] + 12 * h * d) * elem
        if self.name in ("pyg", "dgl"):
            # [E, H, C] tensors per layer: those saved for backward (GATv2: x_i + x_j, its LeakyReLU, x_j;
            # GAT / transformer: x_j or k_j, v_j, ...), forward temporaries, their gradients. Not more
            # generous than that: on an 80 GB GPU, PyG's full-size cases must be tried, not skipped.
            per_edge = sum((8 if job["model"] == "gatv2" else 6) * w * elem for w in widths)
        else:  # the edge list, the CSR and its transpose, sort temporaries, [E, H] scores / alpha
            per_edge = 128.0 + 8 * h * elem * len(widths)
        return nodes + e * per_edge

    def prepare(self, job, graph):
        if job["mode"] == "fwdbwd":
            return self._prepare_layer(job, graph)
        device, dtype = job["device"], parse_dtype(job["dtype"])
        nn = models.nn_module(self.name)
        n = graph.num_nodes
        model = models.Net(nn, job["model"], job["features"], job["D"], job["H"], job["classes"],
                           job.get("transformer_layers", 1), job.get("dropout", 0.0))
        models.init_weights(model, job["seed"])
        model.to(device=device, dtype=dtype).train()
        x, y = models.make_inputs(n, job["features"], job["classes"], job["seed"], device, dtype)
        edge_index = graph.edges().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.note = models.describe_model(job["model"], job["features"], job["D"], job["H"], job["classes"],
                                          job.get("transformer_layers", 1), job.get("dropout", 0.0))
        state = {"first": True}

        def train_step():
            opt.zero_grad(set_to_none=True)
            out = model(x, edge_index)
            loss = F.cross_entropy(out.float(), y)
            loss.backward()
            opt.step()
            return loss

        def step():
            if state["first"] and self.name == "graphattn":
                state["first"] = False
                backends = models.record_backends(train_step)
                self.note += f"; graphattn auto backend: {'/'.join(backends) or '?'}"
                return None
            return train_step()

        return step, list(model.parameters())

    def _prepare_layer(self, job, graph):
        """One layer (heads concatenated), x [N, F] with requires_grad: the worker's fwdbwd step runs
        forward, then backward of its fixed output gradient (grads of x and of every weight)."""
        device, dtype = job["device"], parse_dtype(job["dtype"])
        conv = models.make_layer(models.nn_module(self.name), job["model"], job["features"], job["D"], job["H"],
                                 job.get("dropout", 0.0))
        models.init_weights(conv, job["seed"])
        conv.to(device=device, dtype=dtype).train()
        x, _ = models.make_inputs(graph.num_nodes, job["features"], job["classes"], job["seed"], device, dtype)
        x.requires_grad_(True)
        edge_index = graph.edges().to(device)
        self.note = models.describe_layer(job["model"], job["features"], job["D"], job["H"], job.get("dropout", 0.0))
        state = {"first": True}

        def forward():
            if state["first"] and self.name == "graphattn":
                state["first"] = False
                out = []
                backends = models.record_backends(lambda: out.append(conv(x, edge_index)))
                self.note += f"; graphattn auto backend: {'/'.join(backends) or '?'}"
                return out[0]
            return conv(x, edge_index)

        return forward, [x, *conv.parameters()]


class DglLayerProvider(LayerProvider):
    """DGL's GATConv / GATv2Conv (a layer, or the 2-layer model's training step) with PyG's
    weights, measured by benchmarks/dgl_worker.py in DGL's own environment (job key dgl_python,
    `--dgl-python`): benchmarks/dgl_baseline.py writes the inputs, runs it, reads the result."""

    def __init__(self):
        super().__init__("dgl")

    def parent_skip_reason(self, job):
        return super().parent_skip_reason(job) or dgl_baseline.skip_reason(job)

    def prepare(self, job, graph):
        raise RuntimeError("the dgl provider measures in DGL's environment: benchmarks.runner calls run_external")

    @staticmethod
    def run_external(job, *, timeout_s, mem_limit_bytes=None):
        return dgl_baseline.measure(job, timeout_s, mem_limit_bytes)


# The providers of benchmarks/layers.py (mode "train": whole models; mode "fwdbwd": one layer).
LAYER_PROVIDERS = ("graphattn", "pyg", "dgl")

_FIXED = {p.name: p for p in (CopyBandwidth(), TorchSdpa(), TorchSdpaMask(), TorchSdpaPadded(), PygScatter(),
                              PygTransformerConv(), FlexBlockMask(), DglEdgeSoftmax(),
                              LayerProvider("graphattn"), LayerProvider("pyg"), DglLayerProvider())}


_FIXED.update({p.name: p for p in (TorchSdpaBlhd(), FlexDense(), FlexDocument())})


def get_provider(name: str) -> Provider:
    if name in _FIXED:
        return _FIXED[name]
    if name.startswith("graphattn-"):
        backend, _, variant = name[len("graphattn-"):].partition("+")
        if variant not in ("", "graph", "proj"):
            raise ValueError(f"unknown graphattn provider variant {variant!r} in {name!r}")
        return GraphattnProvider(backend, variant)
    raise ValueError(f"unknown provider {name!r}; known: graphattn-<backend>[+graph|+proj], {sorted(_FIXED)}")


def graphattn_backends(device: str, form: str, include=None) -> list:
    """graphattn backends (names) that can run `form` on `device` here. By default the reference
    (an oracle, not a contender) and, on CPU, triton (Triton's interpreter, available when
    TRITON_INTERPRET=1 as in the test suite: a correctness tool, orders of magnitude slow) are
    left out; `include`, an explicit list of backend names, overrides that."""
    import graphattn
    from graphattn.backends import BACKENDS

    names = [b for b in graphattn.available_backends(device) if b in BACKENDS]
    names = [b for b in names if form in GraphattnProvider(b)._backend_forms()]
    if include:
        return [b for b in names if b in include]
    return [b for b in names if b != "reference" and not (device == "cpu" and b == "triton")]
