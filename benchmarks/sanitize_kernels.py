"""Every GPU kernel family once, forward and backward, at small sizes: the program that
`make gpu-check` runs under `compute-sanitizer --tool memcheck` and `--tool racecheck`.

    python -m benchmarks.sanitize_kernels                    # on the GPU: every family of the cuda and triton backends
    compute-sanitizer --tool memcheck --error-exitcode 86 python3 -m benchmarks.sanitize_kernels
    python -m benchmarks.sanitize_kernels --device cpu       # the same calls on CPU (the triton backend through
                                                             # Triton's interpreter; cuda skipped): a rehearsal
    python -m benchmarks.sanitize_kernels --list             # the calls, without running them

What runs (through graphattn.attention with the backend forced, so the bindings and the
autograd wiring are exercised too), each forward then backward into q, k, v (and bias, att):
  cuda    sparse dot product: 16-byte rows (D = 32) and the scalar fallback (D = 20, 40-byte rows),
          with bias, return_lse, empty targets and hub rows above the hub threshold (256 edges),
          float32 and bfloat16
  triton  the same sparse calls (degree classes, hub chunks and their merges); score="gat" and
          score="gatv2" with attention dropout and return_attention; dense attention, causal and
          not, at odd lengths; segments (a batch of complete graphs)
Each result is compared with the reference backend (float32 arithmetic in the reference; a
loose tolerance: the point is that every element was written with sane values, under the
sanitizer's watch). Exit status 1 if any call raised or disagreed.

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 under memcheck (gpu-check does): with torch's caching
allocator, a read past the end of a tensor usually lands in another block of the same cudaMalloc
and memcheck cannot see it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _calls(device: str):
    """[(backend, name, fn() -> (outputs, leaves))]; fn builds fresh inputs each time it runs."""
    import torch

    import graphattn

    def rows(n, h, d, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, h, d, generator=g).to(device=device, dtype=dtype).requires_grad_(True)

    def graph(n_src, n_dst, seed):
        """Random edges, target 0 with 300 edges (a hub, > 256) and the last target with none."""
        g = torch.Generator().manual_seed(seed)
        e = 4 * n_dst
        src = torch.randint(0, n_src, (e,), generator=g)
        dst = torch.randint(1, n_dst - 1, (e,), generator=g)
        hub_src = torch.randint(0, n_src, (300,), generator=g)
        src = torch.cat([src, hub_src])
        dst = torch.cat([dst, torch.zeros(300, dtype=torch.long)])
        return torch.stack([src, dst]).to(device)

    calls = []

    def sparse(backend, dtype, h, d, bias):
        def fn(be=backend):
            n_src, n_dst = 70, 50
            q, k, v = rows(n_dst, h, d, dtype, 1), rows(n_src, h, d, dtype, 2), rows(n_src, h, d, dtype, 3)
            ei = graph(n_src, n_dst, 4)
            b = (torch.randn(ei.shape[1], h, generator=torch.Generator().manual_seed(5)).to(device, dtype)
                 .requires_grad_(True) if bias else None)
            out, lse = graphattn.attention(q, k, v, ei, bias=b, return_lse=True, backend=be)
            return (out, lse), [t for t in (q, k, v, b) if t is not None]
        tag = f"sparse dot {str(dtype).split('.')[-1]} H={h} D={d}" + (" bias" if bias else "")
        calls.append((backend, tag, fn))

    for backend in ("cuda", "triton"):
        for dtype in (torch.float32, torch.bfloat16):
            sparse(backend, dtype, 2, 32, True)
        sparse(backend, torch.float16, 3, 20, False)

    def scored(score):
        def fn(be="triton"):
            n_src, n_dst, h = 70, 50, 2
            d = 1 if score == "gat" else 16
            q, k = rows(n_dst, h, d, torch.float32, 6), rows(n_src, h, d, torch.float32, 7)
            if score == "gat":
                q, k = q.detach()[..., 0].requires_grad_(True), k.detach()[..., 0].requires_grad_(True)
            v = rows(n_src, h, 16, torch.float32, 8)
            att = (torch.randn(h, d, generator=torch.Generator().manual_seed(9)).to(device).requires_grad_(True)
                   if score == "gatv2" else None)
            ei = graph(n_src, n_dst, 10)
            gen = torch.Generator(device=device).manual_seed(11)
            out, alpha = graphattn.attention(q, k, v, ei, score=score, att=att, dropout_p=0.25, generator=gen,
                                             return_attention=True, backend=be)
            return (out, alpha), [t for t in (q, k, v, att) if t is not None]
        calls.append(("triton", f"sparse {score} dropout return_attention", fn))

    scored("gat")
    scored("gatv2")

    def dense(causal):
        def fn(be="triton"):
            q, k, v = (rows(2 * 77, 2, 40, torch.bfloat16, s).detach().view(2, 77, 2, 40).requires_grad_(True)
                       for s in (12, 13, 14))
            out, lse = graphattn.attention(q, k, v, causal=causal, return_lse=True, backend=be)
            return (out, lse), [q, k, v]
        calls.append(("triton", "dense" + (" causal" if causal else ""), fn))

    dense(False)
    dense(True)

    def segments(be="triton"):
        ptr = torch.tensor([0, 5, 70, 71, 140], device=device)
        q, k, v = rows(140, 2, 32, torch.float16, 15), rows(140, 2, 32, torch.float16, 16), rows(140, 2, 32,
                                                                                                  torch.float16, 17)
        out, lse = graphattn.attention(q, k, v, graphattn.Graph.block_diagonal(ptr), return_lse=True, backend=be)
        return (out, lse), [q, k, v]

    calls.append(("triton", "segments", segments))
    return calls


def _check(outs, ref_outs, what):
    import torch

    for a, b in zip(outs, ref_outs):
        if a is None or b is None:
            continue
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        fin = torch.isfinite(b)
        if not torch.equal(torch.isfinite(a), fin):
            raise AssertionError(f"{what}: non-finite values differ from the reference")
        err = float((a[fin] - b[fin]).norm() / (b[fin].norm() + 1e-30)) if fin.any() else 0.0
        if err > 5e-2:
            raise AssertionError(f"{what}: relative error {err:.3g} against the reference")


def run(device: str, backends, list_only: bool = False) -> int:
    import torch

    import graphattn

    available = set(graphattn.available_backends(device))
    failures, ran = 0, 0
    for backend, name, fn in _calls(device):
        if backend not in backends:
            continue
        label = f"{backend:<7} {name}"
        if backend not in available:
            why = graphattn.dispatch.BACKENDS[backend].unavailable_reason(device) or "not available"
            print(f"SKIP  {label}: {why}", flush=True)
            continue
        if list_only:
            print(f"      {label}")
            continue
        t0 = time.perf_counter()
        try:
            outs, leaves = fn(backend)
            loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
                       for o in outs if o is not None and o.is_floating_point())
            torch.autograd.backward(loss, inputs=leaves)
            if device == "cuda":
                torch.cuda.synchronize()
            grads = [t.grad for t in leaves]
            ref_outs, ref_leaves = fn("reference")
            ref_loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
                           for o in ref_outs if o is not None and o.is_floating_point())
            torch.autograd.backward(ref_loss, inputs=ref_leaves)
            # The dropout mask is a hash of (seed, edge, head): the same on every backend.
            _check(outs, ref_outs, f"{label} forward")
            _check(grads, [t.grad for t in ref_leaves], f"{label} backward")
            ran += 1
            print(f"ok    {label} ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001  (every family is tried)
            failures += 1
            print(f"FAIL  {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
    if not list_only:
        print(f"{ran} calls ok, {failures} failed on {device}")
    return 1 if failures or (not list_only and ran == 0) else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sanitize_kernels", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--backends", default="cuda,triton", help="comma list (default cuda,triton)")
    p.add_argument("--list", action="store_true", help="print the calls and whether each backend runs here")
    args = p.parse_args(argv)
    if args.device == "cpu" or args.device is None and not _cuda_available():
        # Triton runs CPU tensors only in its interpreter, which must be on before triton is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device = "cpu"
    else:
        device = "cuda"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    return run(device, backends, args.list)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
