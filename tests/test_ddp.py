"""DDP training of a graphattn GAT on 2 CPU processes (gloo): both ranks end with identical
parameters, equal to a single-process run on the same data (examples/gat_ddp.py)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "gat_ddp.py")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_ddp_two_ranks_match_single_process(tmp_path):
    proc = subprocess.run([sys.executable, EXAMPLE, "--world", "2", "--steps", "4", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = torch.load(tmp_path / "single.pt")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert single.keys() == r0.keys() == r1.keys()
    initial_moved = False
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(r0[k], single[k], rtol=1e-10, atol=1e-12, msg=f"DDP vs single process: {k}")
    # training did something: the parameters left their initial values
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    try:
        import gat_ddp
    finally:
        sys.path.pop(0)
    _, model = gat_ddp.setup()
    initial_moved = any(not torch.equal(v, single[k]) for k, v in model.state_dict().items())
    assert initial_moved
