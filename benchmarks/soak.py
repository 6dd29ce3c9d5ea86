"""Soak: many graphattn calls in one process, as a long training run makes them, watching for
memory that creeps up and caches that grow without bound.

    python -m benchmarks.soak                 # full: 2,000 calls + 300 layer steps + 100 compiled calls
    python -m benchmarks.soak --quick         # what tests/test_soak.py runs (CI, well under a minute)
    python -m benchmarks.soak --calls 5000 --json /tmp/soak.json

What runs (CPU; the same script measures CUDA backends with --device cuda):
- `calls` forward+backward calls of graphattn.attention, each on a freshly built graph of random
  size (N up to 3,000, average degree up to 12, H 1-4, D 8-64, float32 / bfloat16): raw int64 or
  int32 edge_index, a prebuilt Graph, bipartite graphs, isolated targets, bias with -inf entries,
  return_lse, score kinds gat/gatv2 with dropout and return_attention, complete graphs given as
  edge lists (the dense reroute), segments (block_diagonal / from_batch), and dense calls (causal
  or not); every 25th call forces the reference backend, every 100th the Triton backend (on CPU
  only under TRITON_INTERPRET=1, at a small size);
- `layer_steps` training steps (Adam) of GATConv, GATv2Conv, TransformerConv and
  GraphMultiheadAttention, each step on a freshly generated graph batch;
- `compiled_calls` calls of a torch.compile'd attention (aot_eager) with varying N and E.

Dense and complete-graph calls (the dense reroute) are float32 unless --dense-bf16: torch's own
CPU scaled_dot_product_attention backward in bfloat16 keeps memory for every new sequence length
(about 1-3 MB each; ~300 MB -> ~1 GB over 290 lengths, flat when lengths repeat), which is
torch's, not graphattn's; --dense-bf16 measures it. Reproducer, torch alone:

    for L in range(1, 300):
        q, k, v = (torch.randn(1, 1, L, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).float().sum(), (q, k, v))

What is checked:
- resident memory (RSS) after the warm-up (the first `warmup` calls and layer steps, which load
  kernels, import torch._dynamo, and let the allocator reach its working size) grows by less
  than `max_growth_mb` (50 MB) by the end; the RSS is sampled along the way;
- no Graph outlives its use: a weak reference to every Graph built is dead once the caller drops
  it (so no cache in dispatch, the backends or the Triton plans holds graphs), and no Graph's
  cache holds more than its fixed set of keys;
- the number of live Python objects after the warm-up stays flat (a growing dict or list shows);
- torch.compile compiles a bounded number of graphs for varying sizes (dynamo's automatic dynamic
  shapes: a static graph, then one dynamic graph), and does not hit its recompile limit.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import random
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field

import torch

# The most keys one Graph's cache may hold: is_complete, the Triton CSR plans (with and without
# the transpose), the Triton segment plan, and GraphMultiheadAttention's complete edge list.
MAX_CACHE_KEYS = 5


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import psutil  # not Linux

    return psutil.Process().memory_info().rss / 2 ** 20


def malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc) before a reading, so an RSS figure counts memory
    still held, not free pages the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class SoakReport:
    calls: int = 0
    layer_steps: int = 0
    compiled_calls: int = 0
    triton_calls: int = 0
    warmup: int = 0
    seconds: float = 0.0
    rss_start_mb: float = 0.0
    rss_after_warmup_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_mb: float = 0.0  # end - after warm-up (malloc_trim'd readings)
    rss_growth_untrimmed_mb: float = 0.0  # the same without malloc_trim
    rss_samples_mb: list = field(default_factory=list)
    object_samples: list = field(default_factory=list)  # live Python objects at each RSS sample
    graphs_built: int = 0
    graphs_outlived_call: int = 0  # not freed by refcounting when their call returned
    graphs_alive: int = 0  # of those, still alive after a full collection
    max_cache_keys: int = 0
    cache_keys_seen: list = field(default_factory=list)
    no_grad_calls: list = field(default_factory=list)
    objects_after_warmup: int = 0
    objects_end: int = 0
    compiled_graphs: int = 0
    recompile_limit_hit: bool = False
    phase_seconds: dict = field(default_factory=dict)
    machine: str = ""
    torch_version: str = ""

    def problems(self, max_growth_mb: float = 50.0, max_object_growth=None) -> list:
        """Why the soak fails, or [] when it passes. Live objects may grow by a few one-off entries
        (a shape or dtype met for the first time); a leak of one object per call would show."""
        if max_object_growth is None:
            max_object_growth = max(100, (self.calls + self.layer_steps + self.compiled_calls) // 4)
        out = []
        if self.rss_growth_mb >= max_growth_mb:
            out.append(f"RSS grew {self.rss_growth_mb:.1f} MB after warm-up (limit {max_growth_mb} MB)")
        if self.graphs_outlived_call:
            out.append(f"{self.graphs_outlived_call} of {self.graphs_built} graphs outlived their call "
                       f"({self.graphs_alive} even a full collection): a cache or a reference cycle keeps them")
        if self.max_cache_keys > MAX_CACHE_KEYS:
            out.append(f"a Graph cache holds {self.max_cache_keys} keys (> {MAX_CACHE_KEYS}): "
                       f"{self.cache_keys_seen}")
        if self.objects_end - self.objects_after_warmup > max_object_growth:
            out.append(f"live Python objects grew from {self.objects_after_warmup} to {self.objects_end}")
        # Static, dynamic, and the E = 1 specialisation: 3 graphs at most.
        if self.compiled_calls and (self.compiled_graphs > 3 or self.recompile_limit_hit):
            out.append(f"torch.compile built {self.compiled_graphs} graphs for varying sizes "
                       f"(recompile limit hit: {self.recompile_limit_hit})")
        return out


class _Tracker:
    """Weak references to every Graph built (by the caller, inside attention(), inside the layers)
    and the keys their caches come to hold: Graph.__init__ and Graph.cached are wrapped while the
    tracker is active (not around compiled calls: dynamo would trace the wrappers)."""

    def __init__(self):
        self.refs = []  # the Graphs of the current call
        self.kept = []  # Graphs that outlived their call (by refcount alone)
        self.built = 0
        self.max_keys = 0
        self.keys = set()

    def __enter__(self):
        from graphattn.graph import Graph

        self._init, self._cached = Graph.__init__, Graph.cached
        tracker, init, cached = self, Graph.__init__, Graph.cached

        def tracked_init(graph, *args, **kwargs):
            init(graph, *args, **kwargs)
            tracker.built += 1
            tracker.refs.append(weakref.ref(graph))

        def tracked_cached(graph, key, build):
            value = cached(graph, key, build)
            tracker.max_keys = max(tracker.max_keys, len(graph._cache))
            tracker.keys.add(repr(key))
            return value

        Graph.__init__, Graph.cached = tracked_init, tracked_cached
        return self

    def __exit__(self, *exc):
        from graphattn.graph import Graph

        Graph.__init__, Graph.cached = self._init, self._cached

    def run(self, fn, *args):
        """fn(*args) with the cyclic collector off: once it returns and its results are dropped,
        every Graph it built must already be freed by reference counting (a Graph kept by a cache,
        or caught in a reference cycle that only a full collection would free, is kept here)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            result = fn(*args)
            self.kept.extend(r for r in self.refs if r() is not None)
            self.refs = []
        finally:
            if enabled:
                gc.enable()
        return result

    def alive(self) -> int:
        """Graphs that outlived their call and are still alive after a full collection."""
        gc.collect()
        return sum(r() is not None for r in self.kept)


def _triton_usable(device: str) -> bool:
    from graphattn.dispatch import BACKENDS

    try:
        import graphattn.kernels.csr_attention  # noqa: F401
    except Exception:
        return False
    return BACKENDS["triton"].unavailable_reason(device) is None


def _random_edges(rng, n_src, n_dst, e, device, dtype=torch.int64):
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    src = torch.randint(0, max(n_src, 1), (e,), generator=g)
    dst = torch.randint(0, max(n_dst, 1), (e,), generator=g)
    return torch.stack([src, dst]).to(device=device, dtype=dtype)


KINDS = ["sparse", "graph", "bipartite", "bias", "gat", "gatv2", "complete", "segments", "dense"]
TRITON_KINDS = ["sparse", "graph", "bias", "gatv2", "segments"]


def draw(i: int, rng: random.Random, triton_ok: bool):
    """The (kind, backend) of call i: mostly auto, every 25th the reference, every 100th Triton."""
    if triton_ok and i % 100 == 99:
        return rng.choice(TRITON_KINDS), "triton"
    kind = rng.choice(KINDS + ["sparse", "sparse"])
    return kind, "reference" if i % 25 == 24 else "auto"


def warmup_plan(triton_ok: bool, triton_kinds=TRITON_KINDS):
    """Every (kind, backend) once, so the warm-up loads everything the soak will use."""
    plan = [(kind, backend) for backend in ("auto", "reference") for kind in KINDS]
    return plan + ([(kind, "triton") for kind in triton_kinds] if triton_ok else [])


NO_GRAD_CALLS = []  # calls whose outputs came back detached from autograd (a defect, reported, not a leak)


def one_call(i: int, rng: random.Random, device: str, kind: str, backend: str, n_max: int = 3000,
             dense_bf16: bool = False) -> str:
    """One forward+backward call of the given kind on a freshly drawn graph; returns its label."""
    import graphattn
    from graphattn import Graph

    small = backend != "auto"  # the reference and the Triton interpreter are slow: small sizes
    n_max = 60 if small else n_max
    n = rng.randint(1, n_max)
    heads = rng.choice([1, 2, 4])
    dim = rng.choice([8, 16, 32, 64]) if not small else rng.choice([4, 8])
    dtype = rng.choice([torch.float32, torch.bfloat16])
    if kind in ("dense", "complete") and backend == "auto" and not dense_bf16:
        # torch's own CPU SDPA backward in bfloat16 keeps ~1-3 MB per new sequence length (see
        # the module docstring); measured on its own with --dense-bf16, not charged to graphattn.
        dtype = torch.float32
    degree = rng.uniform(0, 12)
    e = int(n * degree)
    g = torch.Generator().manual_seed(i)

    def rows(m, h=heads, d=dim):
        return torch.randn(m, h, d, generator=g).to(device=device, dtype=dtype).requires_grad_()

    kwargs = {}
    if kind in ("sparse", "graph", "bias", "gat", "gatv2"):
        edge_index = _random_edges(rng, n, n, e, device, rng.choice([torch.int64, torch.int32]))
        q, k, v = rows(n), rows(n), rows(n)
        pattern = edge_index
        if kind == "graph":
            pattern = Graph.from_edge_index(edge_index, num_nodes=n)
        if kind == "bias":
            bias = torch.randn(e, heads, generator=g)
            bias[torch.rand(e, heads, generator=g) < 0.2] = -math.inf  # masked edges, some whole targets
            kwargs["bias"] = bias.to(device=device, dtype=dtype).requires_grad_()
        if kind == "gat":
            q, k = rows(n, heads, 1)[..., 0].detach().requires_grad_(), rows(n, heads, 1)[..., 0].detach().requires_grad_()
            kwargs.update(score="gat", dropout_p=0.1, return_attention=True)
        if kind == "gatv2":
            kwargs.update(score="gatv2", att=torch.randn(heads, dim, generator=g).to(device, dtype).requires_grad_(),
                          dropout_p=0.2, return_attention=True)
    elif kind == "bipartite":
        n_src = rng.randint(1, n_max)
        pattern = _random_edges(rng, n_src, n, e, device)
        q, k, v = rows(n), rows(n_src), rows(n_src)
    elif kind == "complete":
        n = min(n, 40)
        src, dst = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        perm = torch.randperm(n * n, generator=g)
        pattern = torch.stack([src.flatten()[perm], dst.flatten()[perm]]).to(device)
        q, k, v = rows(n), rows(n), rows(n)
    elif kind == "segments":
        sizes = [rng.randint(0, 50 if small else 200) for _ in range(rng.randint(1, 8))]
        n = sum(sizes)
        ptr = torch.tensor([0] + sizes, device=device).cumsum(0)
        pattern = Graph.block_diagonal(ptr) if rng.random() < 0.5 else Graph.from_batch(
            torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)))
        q, k, v = rows(n), rows(n), rows(n)
    else:  # dense
        b, lq = rng.randint(1, 3), rng.randint(1, 20 if small else 300)
        q, k, v = (torch.randn(b, lq, heads, dim, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        pattern = None
        kwargs["causal"] = rng.random() < 0.5
    if kind == "bias" or rng.random() < 0.3:
        kwargs.setdefault("return_lse", True)
    result = graphattn.attention(q, k, v, pattern, backend=backend, **kwargs)
    outs = result if isinstance(result, tuple) else (result,)
    loss = sum(o.float().nan_to_num(0.0, 0.0, 0.0).square().sum() for o in outs)
    leaves = [t for t in (q, k, v, kwargs.get("bias"), kwargs.get("att")) if t is not None]
    if not torch.is_tensor(loss) or not loss.requires_grad:
        NO_GRAD_CALLS.append(f"call {i}: {kind}/{backend}, q {list(q.shape)}")
        return f"{kind}/{backend}"
    torch.autograd.grad(loss, leaves, allow_unused=True)
    return f"{kind}/{backend}"


class _Models:
    """The layers of graphattn.nn, trained a step at a time on fresh random graph batches."""

    def __init__(self, device, seed=0):
        from graphattn.nn import GATConv, GATv2Conv, GraphMultiheadAttention, TransformerConv

        torch.manual_seed(seed)
        self.device = device
        self.models = {
            "gat": torch.nn.ModuleList([GATConv(32, 16, heads=4, dropout=0.1), GATConv(64, 8, heads=1)]),
            "gatv2": torch.nn.ModuleList([GATv2Conv(32, 16, heads=2, dropout=0.1, edge_dim=4),
                                          GATv2Conv(32, 8, heads=1)]),
            "transformer": torch.nn.ModuleList([TransformerConv(32, 16, heads=2, edge_dim=4, beta=True),
                                                TransformerConv(32, 8, heads=1)]),
            "gps": torch.nn.ModuleList([GraphMultiheadAttention(32, 4, dropout=0.1), torch.nn.Linear(32, 8)]),
        }
        for m in self.models.values():
            m.to(device).train()
        self.opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in self.models.items()}

    def step(self, i, rng):
        name = list(self.models)[i % len(self.models)]
        model, opt = self.models[name], self.opts[name]
        n = rng.randint(20, 1500)
        e = int(n * rng.uniform(1, 10))
        g = torch.Generator().manual_seed(10_000 + i)
        x = torch.randn(n, 32, generator=g).to(self.device)
        edge_index = _random_edges(rng, n, n, e, self.device)
        edge_attr = torch.randn(e, 4, generator=g).to(self.device)
        target = torch.randint(0, 8, (n,), generator=g).to(self.device)
        opt.zero_grad(set_to_none=True)
        if name == "gat":
            h = torch.relu(model[0](x, edge_index))
            out = model[1](h, edge_index)
        elif name in ("gatv2", "transformer"):
            h = torch.relu(model[0](x, edge_index, edge_attr))
            out = model[1](h, edge_index)
        else:
            sizes = [rng.randint(1, 120) for _ in range(rng.randint(1, 10))]
            n = sum(sizes)
            x = torch.randn(n, 32, generator=g).to(self.device)
            target = torch.randint(0, 8, (n,), generator=g).to(self.device)
            ptr = torch.tensor([0] + sizes, device=self.device).cumsum(0)
            from graphattn import Graph

            graph = Graph.block_diagonal(ptr)
            out = model[1](torch.relu(model[0](x, graph)))
        loss = torch.nn.functional.cross_entropy(out, target)
        loss.backward()
        opt.step()
        return float(loss.detach())


class _Compiled:
    """One torch.compile'd attention, called on graphs of varying N and E for the whole soak (as
    a training loop calls its compiled model): how many graphs dynamo builds for it.

    torch._dynamo.reset() is called once, before: each reset-and-recompile leaves a few thousand
    Python objects of torch's own behind (fake-tensor dispatch cache entries, stack summaries),
    which is torch's business and not what this soak measures."""

    def __init__(self, device):
        import graphattn
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        self.counters = counters
        self.device = device
        self.calls = 0
        self.fn = torch.compile(lambda q, k, v, e: graphattn.attention(q, k, v, e), fullgraph=True,
                                backend="aot_eager")

    def run(self, count, rng, sizes=()):
        """`count` calls of random N and E, after the given (N, E) pairs."""
        draws = list(sizes) + [None] * count
        for size in draws:
            n = rng.randint(2, 400) if size is None else size[0]
            e = rng.randint(1, 8 * n) if size is None else size[1]
            g = torch.Generator().manual_seed(20_000 + self.calls)
            q, k, v = (torch.randn(n, 2, 8, generator=g).to(self.device).requires_grad_() for _ in range(3))
            out = self.fn(q, k, v, _random_edges(rng, n, n, e, self.device))
            out.square().sum().backward()
            self.calls += 1

    def graphs(self) -> int:
        return int(self.counters["stats"]["unique_graphs"])


def soak(calls=2000, layer_steps=300, compiled_calls=100, warmup=200, warmup_steps=20, seed=0, device="cpu",
         n_max=3000, dense_bf16=False, triton_warmup_kinds=TRITON_KINDS, sample_every=100, log=None) -> SoakReport:
    import graphattn  # noqa: F401

    rng = random.Random(seed)
    report = SoakReport(warmup=warmup, machine=f"{platform.processor() or platform.machine()}, "
                                                f"{os.cpu_count()} cpus", torch_version=torch.__version__)
    tracker = _Tracker()
    triton_ok = _triton_usable(device)
    start = time.perf_counter()
    report.rss_start_mb = rss_mb()
    models = _Models(device, seed)

    def reading():
        gc.collect()
        report.object_samples.append(len(gc.get_objects()))
        untrimmed = rss_mb()
        malloc_trim()
        return untrimmed, rss_mb()

    def phase(name, since):
        report.phase_seconds[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    t = time.perf_counter()
    # Warm-up: kernels loaded, torch._dynamo imported by the first custom op, allocator at size.
    with tracker:
        for i, (kind, backend) in enumerate(warmup_plan(triton_ok, triton_warmup_kinds)):
            tracker.run(one_call, i, rng, device, kind, backend, n_max, dense_bf16)
        for i in range(warmup):
            tracker.run(one_call, i, rng, device, *draw(i, rng, triton_ok), n_max, dense_bf16)
        for i in range(warmup_steps):
            tracker.run(models.step, i, rng)
    compiled = _Compiled(device) if compiled_calls else None
    if compiled:
        # dynamo's one-time setup, and its three graphs: static (first call), dynamic (first new
        # size; it guards E >= 2, as dynamo specialises sizes 0 and 1), and E = 1, which the
        # random draws meet now and then.
        compiled.run(min(4, compiled_calls), rng, sizes=[(50, 20), (60, 30), (70, 1)])
    t = phase("warmup", t)
    warm_untrimmed, report.rss_after_warmup_mb = reading()
    report.objects_after_warmup = len(gc.get_objects())
    report.rss_samples_mb.append(round(report.rss_after_warmup_mb, 1))

    kinds = {}
    with tracker:
        for i in range(warmup, warmup + calls):
            kind = tracker.run(one_call, i, rng, device, *draw(i, rng, triton_ok), n_max, dense_bf16)
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind.endswith("/triton"):
                report.triton_calls += 1
            if (i - warmup + 1) % sample_every == 0:
                report.rss_samples_mb.append(round(reading()[1], 1))
                if log:
                    log(f"  call {i - warmup + 1}/{calls}: RSS {report.rss_samples_mb[-1]:.1f} MB")
        report.calls = calls
        t = phase("calls", t)
        for i in range(warmup_steps, warmup_steps + layer_steps):
            tracker.run(models.step, i, rng)
            if (i + 1) % sample_every == 0:
                report.rss_samples_mb.append(round(reading()[1], 1))
                if log:
                    log(f"  layer step {i + 1 - warmup_steps}/{layer_steps}: RSS {report.rss_samples_mb[-1]:.1f} MB")
        report.layer_steps = layer_steps
        t = phase("layer_steps", t)
    if compiled:
        compiled.run(compiled_calls, rng)
        report.compiled_calls = compiled_calls
        report.compiled_graphs = compiled.graphs()
        limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
        report.recompile_limit_hit = report.compiled_graphs >= limit
        t = phase("compiled", t)

    untrimmed, report.rss_end_mb = reading()
    report.rss_growth_mb = report.rss_end_mb - report.rss_after_warmup_mb
    report.rss_growth_untrimmed_mb = untrimmed - warm_untrimmed
    report.objects_end = len(gc.get_objects())
    report.rss_samples_mb.append(round(report.rss_end_mb, 1))
    report.graphs_built = tracker.built
    report.no_grad_calls = list(NO_GRAD_CALLS)
    report.graphs_outlived_call = len(tracker.kept)
    report.graphs_alive = tracker.alive()
    report.max_cache_keys = tracker.max_keys
    report.cache_keys_seen = sorted(tracker.keys)
    report.seconds = time.perf_counter() - start
    if log:
        log(f"  call kinds: {dict(sorted(kinds.items()))}")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--layer-steps", type=int, default=300)
    parser.add_argument("--compiled-calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="the CI size (tests/test_soak.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--dense-bf16", action="store_true",
                        help="dense and complete-graph calls in bfloat16 too (torch's SDPA backward grows then)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # lets the Triton calls run (interpreted, small)
    sizes = QUICK if args.quick else dict(calls=args.calls, layer_steps=args.layer_steps,
                                          compiled_calls=args.compiled_calls, warmup=args.warmup)
    print(f"soak: {sizes} on {args.device}, torch {torch.__version__}, {os.cpu_count()} cpus", flush=True)
    report = soak(device=args.device, seed=args.seed, dense_bf16=args.dense_bf16, log=lambda s: print(s, flush=True),
                  **sizes)
    print(f"RSS: start {report.rss_start_mb:.1f} MB, after warm-up {report.rss_after_warmup_mb:.1f} MB, "
          f"end {report.rss_end_mb:.1f} MB: growth {report.rss_growth_mb:+.1f} MB "
          f"({report.rss_growth_untrimmed_mb:+.1f} MB without malloc_trim)")
    print(f"RSS samples (MB): {report.rss_samples_mb}")
    print(f"live Python objects at those samples: {report.object_samples}")
    print(f"{report.calls} calls ({report.triton_calls} on triton), {report.layer_steps} layer steps, "
          f"{report.compiled_calls} compiled calls -> {report.compiled_graphs} compiled graphs; "
          f"{report.graphs_built} graphs built, {report.graphs_outlived_call} outlived their call, "
          f"{report.graphs_alive} alive at the end; "
          f"largest Graph cache {report.max_cache_keys} keys {report.cache_keys_seen}; "
          f"Python objects {report.objects_after_warmup} -> {report.objects_end}; {report.seconds:.0f} s "
          f"{report.phase_seconds}")
    if report.no_grad_calls:
        print(f"outputs detached from autograd (not a memory problem; a defect to report): {report.no_grad_calls}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(report), f, indent=1)
    problems = report.problems(args.max_growth_mb)
    for p in problems:
        print("FAIL:", p)
    print("PASS" if not problems else "FAIL")
    return 1 if problems else 0


# What tests/test_soak.py runs: enough calls of every kind to see a per-call leak through the
# weak references and the object count, inside the CI budget on 2 cores.
# The Triton interpreter is slow (seconds per call): one kind in the quick warm-up, and the
# quick run's 100 calls include one Triton call (call 99).
QUICK = dict(calls=100, layer_steps=12, compiled_calls=6, warmup=10, warmup_steps=4, n_max=300, sample_every=50,
             triton_warmup_kinds=("sparse",))

if __name__ == "__main__":
    sys.exit(main())
