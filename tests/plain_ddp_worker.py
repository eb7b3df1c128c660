"""Run by test_ddp.py under torch.distributed.run (2 CPU processes, gloo): a plain DDP loop, each
rank on its own half of every batch, stepped with ``make_closure`` and with a closure that
returns each rank's own loss. Rank 0 writes, per line search and closure, the largest parameter
difference between the ranks and the warnings the optimizer raised."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lsframe import optim
from lsframe.optim import make_closure

NAMES = ("salsa", "adamsls", "sgdsls")


def train(name: str, closure_kind: str, rank: int) -> tuple[float, list[str]]:
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    )
    opt = optim.create(name, model.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(40, generator=g)
    mine = slice(rank, None, 2)  # each rank its own half, as a DistributedSampler gives

    def criterion(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.squeeze(-1), target)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(0, 20, 4):
            xb, yb = x[mine][i : i + 4], y[mine][i : i + 4]
            if closure_kind == "make_closure":
                closure = make_closure(model, (xb, yb), opt, criterion=criterion)
            else:

                def closure(backward: bool = True, xb=xb, yb=yb) -> torch.Tensor:
                    with torch.set_grad_enabled(backward):
                        loss = criterion(model(xb), yb)
                    if backward:
                        opt.zero_grad()
                        loss.backward()
                    return loss.detach()

            opt.step(closure)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return float((gathered[0] - gathered[1]).abs().max()), [str(w.message) for w in caught]


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    for name in NAMES:
        for kind in ("make_closure", "own_losses"):
            diff, caught = train(name, kind, rank)
            results[f"{name}/{kind}"] = {"max_diff": diff, "warnings": caught}
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
