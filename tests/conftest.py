"""Shared helpers: inputs, graphs, and comparison against the float64 reference."""
import os

import torch

# The Triton backend runs CPU tensors only in Triton's interpreter, which must
# be switched on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import graphattn  # noqa: E402
from graphattn import reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Relative RMS error allowed against the float64 reference, by input dtype.
# Inputs are rounded to the dtype first and the reference sees the same
# rounded values, so what remains is accumulation and output rounding.
REL_RMS = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}


def has_triton_kernels(name):
    """The Triton backend's kernel file exists and triton can run on DEVICE."""
    try:
        import importlib

        importlib.import_module(f"graphattn.kernels.{name}")
    except Exception:
        return False
    return not graphattn.dispatch.BACKENDS["triton"].unavailable_reason(DEVICE)


def sparse_backends():
    names = ["cpu", "reference"] if DEVICE == "cpu" else ["reference"]
    if has_triton_kernels("csr_attention"):
        names.append("triton")
    if DEVICE == "cuda" and "cuda" in graphattn.dispatch.BACKENDS:
        names.append("cuda")
    return names


def rel_rms(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / (expected.norm() + 1e-30))


def assert_matches(actual, expected, dtype, what="", floor=0.0):
    """Finite where expected is finite, -inf where expected is -inf, and close:
    relative RMS error within REL_RMS[dtype], or within `floor` where that is larger
    (tests pass 2x the error of torch's own float32 computation where float32
    itself cannot reach REL_RMS, e.g. for logits of 1e4)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite), f"{what}: non-finite pattern differs"
    if (~finite).any():
        assert torch.equal(actual[~finite].double(), expected[~finite].double()), f"{what}: infinities differ"
    err, allowed = rel_rms(actual[finite], expected[finite]), max(REL_RMS[dtype], floor)
    assert err <= allowed, f"{what}: relative RMS error {err:.3g} > {allowed:.2g} ({dtype})"


def random_rows(n, heads, dim, dtype, *, device=DEVICE, scale=1.0, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else n * 1000 + heads * 10 + dim)
    return (scale * torch.randn(n, heads, dim, generator=g)).to(device=device, dtype=dtype)


def random_edges(num_src, num_dst, num_edges, *, seed=0, device=DEVICE, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, max(num_src, 1), (num_edges,), generator=g)
    dst = torch.randint(0, max(num_dst, 1), (num_edges,), generator=g)
    return torch.stack([src, dst]).to(device=device, dtype=dtype)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def reference_sparse(q, k, v, edge_index, bias=None, scale=None, dtype=torch.float64):
    """The reference's (out, lse, leaves) on copies of the inputs in `dtype` (float64: the exact answer)."""
    q64, k64, v64 = (leaf(t.to(dtype)) for t in (q, k, v))
    b64 = None if bias is None else leaf(bias.to(dtype))
    out, lse = reference.sparse_attention(q64, k64, v64, edge_index[0].long(), edge_index[1].long(), b64, scale)
    return out, lse, (q64, k64, v64, b64)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
