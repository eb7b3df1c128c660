"""Run by test_ddp.py under torch.distributed.run (2 CPU processes, gloo): a plain DDP loop, each
rank on its own half of every batch, stepped with ``make_closure``; then a model that rank 0
trains alone, beside the idle rank 1. Rank 0 writes, per line search, the largest parameter
difference between the DDP ranks and the warnings the steps raised, and whether its own model
trained."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import leave_process_group
from torch.nn.parallel import DistributedDataParallel

from lsframe import optim
from lsframe.optim import make_closure

NAMES = ("salsa", "adamsls", "sgdsls")


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(40, generator=g)
    mine = slice(rank, None, 2)  # each rank its own half, as a DistributedSampler gives
    return [(x[mine][i : i + 4], y[mine][i : i + 4]) for i in range(0, 20, 4)]


def criterion(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), target)


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def train(name: str, rank: int) -> tuple[float, list[str]]:
    model = DistributedDataParallel(net())
    opt = optim.create(name, model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for xb, yb in batches(rank):
            opt.step(make_closure(model, (xb, yb), opt, criterion=criterion))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return float((gathered[0] - gathered[1]).abs().max()), [str(w.message) for w in caught]


def train_alone(name: str) -> bool:
    """Rank 0 alone trains a model of its own (a probe beside the job): nothing to average."""
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = optim.create(name, model.parameters())
    for xb, yb in batches(0):
        opt.step(make_closure(model, (xb, yb), opt, criterion=criterion))
    return any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails in a minute
    rank = dist.get_rank()
    results = {}
    for name in NAMES:
        diff, caught = train(name, rank)
        results[name] = {"max_diff": diff, "warnings": caught}
        if rank == 0:
            results[name]["trained_alone"] = train_alone(name)
        dist.barrier()  # rank 1 waits here while rank 0 trains its own model
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
