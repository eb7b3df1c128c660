"""Run by test_fsdp.py under torch.distributed.run (2 CPU processes, gloo): every registered
optimizer on an MLP sharded with FSDP2's ``fully_shard``, each rank on its half of every batch.
Rank 0 writes, per optimizer, the largest difference to a one-process run on the whole batches
and whether both ranks kept the same step sizes and search counters."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import leave_process_group
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lsframe import optim
from lsframe.optim import make_closure
from lsframe.parts import part_groups

STEPS = 8
#: extra runs: (registry name, arguments). The strided alignment reads rows k and 8 + k of the
#: 16-row weight (k the step mod 8), as the two shards of 8 rows do, one row each; the smaller
#: weights are read whole by both
EXTRA = {"slope_tracking_adam+stride8": ("slope_tracking_adam", {"alignment_stride": 8})}


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5), torch.nn.Linear(5, 1)
    )


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * 8, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(STEPS * 8, generator=g)
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, STEPS * 8, 8)]


def train(
    model: torch.nn.Module, name: str, shard: slice | None, dtype: torch.dtype = torch.float32
) -> torch.optim.Optimizer:
    name, extra = EXTRA.get(name, (name, {}))
    record = optim.info(name)
    params = part_groups(model) if record.param_grouping == "parts" else model.parameters()
    opt = record.create(params, **({"lr": record.test_lr} if record.test_lr else {}), **extra)
    for x, y in batches():
        if shard is not None:
            x, y = x[shard], y[shard]

        def closure(backward: bool = True, x=x, y=y) -> torch.Tensor:
            with torch.set_grad_enabled(backward):
                if backward:
                    opt.zero_grad()
                loss = F.mse_loss(model(x.to(dtype)).squeeze(-1).float(), y)
                if backward:
                    loss.backward()  # FSDP averages the gradients over the ranks
            value = loss.detach().clone()
            if shard is not None:  # every rank compares the same (mean) loss
                dist.all_reduce(value)
                value /= dist.get_world_size()
            return value

        opt.step(closure)
    return opt


def shard(
    model: torch.nn.Sequential, mesh, root_owns_last: bool = False, **fsdp_options: Any
) -> torch.nn.Sequential:
    """``model`` with each Linear layer and then the whole sharded by FSDP2 (with
    ``root_owns_last``, the last Linear layer's parameters are the root module's own;
    ``fsdp_options`` go to every ``fully_shard``)."""
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for layer in [*(linears[:-1] if root_owns_last else linears), model]:
        fully_shard(layer, mesh=mesh, **fsdp_options)
    return model


def train_with_lsframe_closure(
    model: torch.nn.Module, name: str, shard: slice
) -> list[torch.Tensor]:
    """:func:`train` through lsframe's own closure (``make_closure``), which averages the
    losses over the processes itself; the parameters the optimizer holds (the sharded ones)."""
    record = optim.info(name)
    opt = record.create(model.parameters(), **({"lr": record.test_lr} if record.test_lr else {}))
    for x, y in batches():
        batch = (x[shard], y[shard])
        opt.step(make_closure(model, batch, opt, loss_fn=mse))
    return list(opt.param_groups[0]["params"])


def mse(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name in [*optim.names(), *EXTRA]:
        model = mlp()
        shard(model, mesh)
        half = 8 // world
        opt = train(model, name, slice(rank * half, (rank + 1) * half))
        full = [p.full_tensor() for p in model.parameters()]
        decisions = {
            "lr": [g["lr"] for g in opt.param_groups],
            "search": opt.state.get("line_search", {}),
        }
        gathered = [None] * world
        dist.all_gather_object(gathered, json.loads(json.dumps(decisions, default=float)))
        reference = mlp()
        train(reference, name, None)
        diff = max(float((a - b).abs().max()) for a, b in zip(full, reference.parameters()))
        results[name] = {
            "max_diff": diff,
            "ranks_agree": all(g == gathered[0] for g in gathered),
            "searches": decisions["search"].get("searches"),
            "alignments": decisions["search"].get("alignments"),
            "sharded": type(next(model.parameters())).__name__,
        }
    for name in optim.names():  # bf16 shards: trials placed from a copy of each local shard
        if not optim.info(name).forward_trials:
            continue
        model = shard(mlp().to(torch.bfloat16), mesh)
        opt = train(model, name, slice(rank * half, (rank + 1) * half), torch.bfloat16)
        search = opt.state.get("line_search", {})
        gathered = [None] * world
        dist.all_gather_object(gathered, json.loads(json.dumps(search, default=float)))
        results[f"{name}+bf16"] = {
            "searches": search.get("searches"),
            "ranks_agree": all(g == gathered[0] for g in gathered),
            "finite": all(bool(p.full_tensor().isfinite().all()) for p in model.parameters()),
        }
    # the root module's own parameters stay gathered after a forward under no_grad: every trial
    # must still see the sharded parameters the search moved
    for name in [n for n in optim.line_searches() if optim.info(n).forward_trials]:
        if optim.info(name).param_grouping == "parts":
            continue
        model = shard(mlp(), mesh, root_owns_last=True)
        held = train_with_lsframe_closure(model, name, slice(rank * half, (rank + 1) * half))
        full = [p.full_tensor() for p in held]
        reference = mlp()
        train(reference, name, None)
        diff = max(float((a - b).abs().max()) for a, b in zip(full, reference.parameters()))
        results[f"{name}+root_params"] = {"max_diff": diff}
        # every module left gathered after its forward, not the root's alone
        model = shard(mlp(), mesh, reshard_after_forward=False)
        held = train_with_lsframe_closure(model, name, slice(rank * half, (rank + 1) * half))
        full = [p.full_tensor() for p in held]
        diff = max(float((a - b).abs().max()) for a, b in zip(full, reference.parameters()))
        results[f"{name}+kept_gathered"] = {"max_diff": diff}
        # under a bf16 mixed-precision policy the gathered copies are bf16 casts: the root's
        # own parameters must be gathered afresh too, so where the root holds them cannot matter
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
        runs = [
            train_with_lsframe_closure(
                shard(mlp(), mesh, root_owns_last=root, mp_policy=policy),
                name,
                slice(rank * half, (rank + 1) * half),
            )
            for root in (False, True)
        ]
        diff = max(float((a.full_tensor() - b.full_tensor()).abs().max()) for a, b in zip(*runs))
        results[f"{name}+bf16_policy"] = {"max_diff": diff}
    if rank == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
