"""The CPU kernels at every instruction-set level this machine runs (csrc/cpu/isa.h).

The kernels are compiled once per level (baseline; AVX2+FMA+F16C on x86-64) and the level is
chosen per call from the CPU's features, or forced lower by GRAPHATTN_CPU_ISA (read at every
call, so one process tests every level). Each level must match the float64 reference within
the contract's tolerances (conftest.REL_RMS) and be bitwise reproducible; the sizes exercise the
vector loops and their tails (D = 24: 16 + 8; D = 37: 2 x 16 + 5; Dv = 19: 8 + 8 + 3) and a
hub row longer than one softmax chunk (64 edges)."""
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

import graphattn
from conftest import REL_RMS, assert_matches, leaf
from test_scored_backends import check as check_scored

pytestmark = pytest.mark.skipif(graphattn.dispatch.BACKENDS["cpu"].unavailable_reason("cpu") is not None,
                                reason="the C++ extension is not built")


def cpu_isa():
    """[level of a call now, levels this CPU and build run...]"""
    from graphattn import _C  # noqa: F401

    return list(torch.ops.graphattn.cpu_isa())


LEVELS = cpu_isa()[1:] if graphattn.dispatch.BACKENDS["cpu"].unavailable_reason("cpu") is None else []
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, *HALF, torch.float64)


@pytest.fixture(params=LEVELS)
def level(request, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CPU_ISA", request.param)
    assert cpu_isa()[0] == request.param
    return request.param


def hub_edges(n_src=70, n_dst=9, seed=0):
    """Random edges, a hub target with more than one chunk of edges, a duplicate, a target without edges."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_src, (120,), generator=g)
    dst = torch.randint(1, n_dst - 1, (120,), generator=g)
    hub_src = torch.arange(n_src)  # 70 edges into target 0
    src = torch.cat([src, hub_src, src[:1]])
    dst = torch.cat([dst, torch.zeros(n_src, dtype=torch.long), dst[:1]])
    return torch.stack([src, dst])


def test_levels_of_this_machine():
    active, *levels = cpu_isa()
    assert levels[0] == "baseline"
    if os.environ.get("GRAPHATTN_CPU_ISA", "auto") == "auto":
        assert active == levels[-1], "without GRAPHATTN_CPU_ISA a call runs the best level"
    if platform.machine() in ("x86_64", "AMD64"):
        flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        has_avx2 = all(re.search(rf"\b{f}\b", flags) for f in ("avx2", "fma", "f16c"))
        assert ("avx2" in levels) == has_avx2, (levels, "the CPU's flags disagree")
    else:
        assert levels == ["baseline"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d,dv", [(24, 19), (37, 32)])
@pytest.mark.parametrize("score,p,bias", [("dot", 0.0, "eh"), ("dot", 0.3, None), ("gat", 0.2, "e"),
                                          ("gatv2", 0.0, "eh"), ("gatv2", 0.25, None)])
def test_scored_ops_against_float64(level, dtype, d, dv, score, p, bias):
    """out, lse, alpha and the gradients of q, k, v, att, bias (also through alpha) vs float64."""
    check_scored("cpu", score, p=p, bias=bias, dtype=dtype, n_src=70, n_dst=9, heads=3, d=d, dv=dv,
                 edges=hub_edges())


def plain_call(dtype, pattern, seed=0):
    """out, lse and the gradients of q, k, v (and bias for csr) of the plain op on the cpu backend,
    and the same from the reference in float64."""
    g = torch.Generator().manual_seed(seed)
    n, h, d, dv = 150, 4, 32, 19
    q, k, v = (torch.randn(n, h, x, generator=g, dtype=torch.float64) for x in (d, d, dv))
    if pattern == "csr":
        graph = hub_edges(n_src=n, n_dst=n, seed=seed)
        bias = torch.randn(graph.shape[1], h, generator=g, dtype=torch.float64)
    else:  # segments of 1, 0, 70 (more than one chunk) and 79 nodes
        graph = graphattn.Graph.block_diagonal(torch.tensor([0, 1, 1, 71, n]))
        bias = None
    w_out = torch.randn(n, h, dv, generator=g, dtype=torch.float64)
    w_lse = torch.randn(n, h, generator=g, dtype=torch.float64)

    def run(backend, cast):
        leaves = [leaf(cast(t)) for t in (q, k, v)] + ([leaf(cast(bias))] if bias is not None else [])
        out, lse = graphattn.attention(*leaves[:3], graph, bias=leaves[3] if bias is not None else None,
                                       return_lse=True, backend=backend)
        loss = (out.double() * w_out).sum() + (torch.where(torch.isinf(lse), 0, lse).double() * w_lse).sum()
        loss.backward()
        return [out.detach(), lse.detach()] + [t.grad for t in leaves]

    # The reference gets the same (rounded) inputs, in float64: what is left is the kernel's own error.
    return run("cpu", lambda t: t.to(dtype)), run("reference", lambda t: t.to(dtype).double())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern", ["csr", "segments"])
def test_plain_op_against_float64(level, dtype, pattern):
    got, want = plain_call(dtype, pattern)
    for name, a, r in zip(("out", "lse", "grad q", "grad k", "grad v", "grad bias"), got, want):
        # lse is float32 for every input dtype but float64
        tol = torch.float32 if name == "lse" and dtype != torch.float64 else dtype
        assert_matches(a, r, tol, f"{level} {pattern} {name}")


@pytest.mark.parametrize("dtype", (torch.float32, *HALF), ids=str)
@pytest.mark.parametrize("pattern", ["csr", "segments"])
def test_bitwise_reproducible_within_a_level(level, dtype, pattern):
    first, _ = plain_call(dtype, pattern)
    again, _ = plain_call(dtype, pattern)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.skipif(len(LEVELS) < 2, reason="this CPU runs the baseline level only")
@pytest.mark.parametrize("dtype", (torch.float32, *HALF), ids=str)
def test_levels_agree_within_tolerance_and_the_switch_takes_effect(monkeypatch, dtype):
    """Two levels agree as two implementations of the contract do (both within REL_RMS of
    float64); and they are different code: float32 sums rounded in another order (FMA, 8 lanes)
    cannot all come out bitwise equal, so equality would mean the variable switched nothing."""
    results = {}
    for name in LEVELS:
        monkeypatch.setenv("GRAPHATTN_CPU_ISA", name)
        results[name], want = plain_call(dtype, "csr", seed=3)
    low, high = results[LEVELS[0]], results[LEVELS[-1]]
    for a, b in zip(low, high):
        assert_matches(a, b.to(a.dtype), dtype if a.dtype == dtype else torch.float32, "levels")
    if dtype == torch.float32:
        assert not all(torch.equal(a, b) for a, b in zip(low, high))


@pytest.mark.parametrize("value", ["avx9", "AVX2 ", "sse"])
def test_a_bad_level_is_a_value_error(monkeypatch, value):
    monkeypatch.setenv("GRAPHATTN_CPU_ISA", value)
    q = torch.randn(3, 1, 8)
    with pytest.raises(ValueError, match="GRAPHATTN_CPU_ISA"):
        graphattn.attention(q, q, q, torch.tensor([[0, 1], [1, 2]]), backend="cpu")


@pytest.mark.skipif("avx2" in LEVELS or platform.machine() not in ("x86_64", "AMD64"),
                    reason="needs an x86-64 CPU without AVX2")
def test_asking_for_a_level_the_cpu_lacks_is_an_error_not_an_illegal_instruction(monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CPU_ISA", "avx2")
    q = torch.randn(3, 1, 8)
    with pytest.raises(ValueError, match="runs at most 'baseline'"):
        graphattn.attention(q, q, q, torch.tensor([[0, 1], [1, 2]]), backend="cpu")


@pytest.mark.parametrize("forced", [None, "baseline"])
def test_info_says_which_level_runs(forced):
    env = dict(os.environ)
    env.pop("GRAPHATTN_CPU_ISA", None)
    if forced:
        env["GRAPHATTN_CPU_ISA"] = forced
    out = subprocess.run([sys.executable, "-m", "graphattn.info"], capture_output=True, text=True, env=env,
                         timeout=300).stdout
    line = next(x for x in out.splitlines() if x.startswith("cpu isa"))
    assert line.split()[2] == (forced or LEVELS[-1]), line


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
                    reason="needs x86-64 and objdump")
def test_vector_instructions_only_in_the_avx2_level():
    """The ODR hazard of per-level compilation: an inline function of a shared header (ATen, c10,
    std) compiled with AVX2 in one file, merged by the linker with the baseline copies, would be
    called by baseline code and fault on a CPU without AVX2. So every function of the extension
    that holds a VEX-encoded instruction (AVX/AVX2/FMA/F16C; SSE2 code has none) must belong to
    graphattn::cpu::avx2, which only runs after the CPU check."""
    from graphattn import _C

    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", _C.__file__], capture_output=True,
                          text=True, check=True, timeout=600).stdout
    function, with_vex = None, set()
    head = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    vex = re.compile(r"^\s+[0-9a-f]+:\s+v[a-z0-9]+\s")
    for row in text.splitlines():
        m = head.match(row)
        if m:
            function = m.group(1)
        elif vex.match(row):
            with_vex.add(function)
    outside = sorted(f for f in with_vex if "graphattn::cpu::avx2::" not in f)
    assert not outside, f"AVX code outside the avx2 level: {outside[:5]}"
    assert with_vex, "no AVX2 code at all: the avx2 level was not compiled"
