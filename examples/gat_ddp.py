"""Data-parallel GAT training with torch DistributedDataParallel (gloo, CPU processes).

Every rank holds the whole (generated, citation-like) graph and computes the full-graph
forward; each rank's loss covers its own shard of the training nodes; DDP averages the
gradients, so all ranks keep identical parameters, equal to one process minimising the
mean of the per-shard losses. This script runs both and compares them:

    python examples/gat_ddp.py [--world 2] [--steps 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gat_citation import GAT, make_citation_graph  # noqa: E402

DTYPE = torch.float64  # exact comparisons with the single-process run


def setup(seed=0):
    data = make_citation_graph(num_nodes=400, num_classes=4, num_features=16, seed=seed)
    torch.manual_seed(seed)
    model = GAT(16, 4, data["num_classes"], heads=2, dropout=0.0).to(DTYPE)
    return data, model


def shard(data, rank, world):
    return torch.nonzero(data["train_mask"]).flatten()[rank::world]


def run_rank(rank, world, port, steps, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data, model = setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        x, ei, y, idx = data["x"].to(DTYPE), data["edge_index"], data["y"], shard(data, rank, world)
        for step in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x, ei)[idx], y[idx])
            loss.backward()
            opt.step()
            if rank == 0:
                print(f"step {step}  rank-0 shard loss {loss.item():.6f}", flush=True)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_single(world, steps):
    data, model = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, ei, y = data["x"].to(DTYPE), data["edge_index"], data["y"]
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x, ei)
        loss = sum(F.cross_entropy(logits[shard(data, r, world)], y[shard(data, r, world)])
                   for r in range(world)) / world
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None, help="folder for rank*.pt and single.pt (default: a temp folder)")
    args = ap.parse_args(argv)
    out_dir = args.out or tempfile.mkdtemp(prefix="gat_ddp_")
    os.makedirs(out_dir, exist_ok=True)
    mp.spawn(run_rank, args=(args.world, free_port(), args.steps, out_dir), nprocs=args.world, join=True)
    single = run_single(args.world, args.steps)
    torch.save(single, os.path.join(out_dir, "single.pt"))
    ranks = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(args.world)]
    same = all(torch.equal(ranks[0][k], r[k]) for r in ranks[1:] for k in single)
    diff = max(float((ranks[0][k] - single[k]).abs().max()) for k in single)
    print(f"ranks identical: {same}; max |DDP - single process| = {diff:.3g}; files in {out_dir}")
    return out_dir


if __name__ == "__main__":
    main()
