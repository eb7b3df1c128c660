"""Run by test_model_parallel.py under torch.distributed.run (2 CPU processes, gloo): a
ClosureModule sharded with FSDP2's ``fully_shard`` in ``configure_model`` under Lightning's
``ModelParallelStrategy``. Per line search and checkpoint route (a distributed checkpoint, or one
full file: ``save_distributed_checkpoint=False``), a run stopped at step 3 and resumed from its
checkpoint to step 10 is compared with a run through 10 steps, and the sharded run with the same
run under DDP. Rank 0 writes the largest parameter differences, whether the search states agree,
or the error the resume raised."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyRegression, leave_process_group, mlp, regression_data, trainer  # noqa: E402

from lsframe import optim  # noqa: E402
from lsframe.data import ResumableDataLoader  # noqa: E402

STOP, END = 3, 10  # mid-epoch: 8 steps per epoch, each rank on its half of the data


class ShardedRegression(TinyRegression):
    """TinyRegression with dropout, whose processes draw different numbers of random values per
    step (as dropout on batches padded to their longest text does), sharded in
    ``configure_model`` (the ``ddp`` route leaves it whole)."""

    def __init__(self, shard: bool, **kwargs: Any) -> None:
        super().__init__(model=mlp(dropout=0.2), **kwargs)
        self.shard = shard

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        torch.rand(1 + int(batch[0].abs().sum() * 10) % 7)
        return super().compute_loss(batch)

    def configure_model(self) -> None:
        if not self.shard:
            return
        mesh = self.device_mesh["data_parallel"]
        first, *_ = [layer for layer in self.model if isinstance(layer, torch.nn.Linear)]
        fully_shard(first, mesh=mesh)  # the last layer's parameters are the root's own
        fully_shard(self.model, mesh=mesh)


def fit(name: str, steps: int, route: str, ckpt_path: str | None = None, save: str = ""):
    """A fit to ``steps`` (from ``ckpt_path``), checkpointed at ``steps`` into ``save``."""
    record = optim.info(name)
    module = ShardedRegression(
        route != "ddp",
        optimizer=lambda p: record.create(p, **({"lr": record.test_lr} if record.test_lr else {})),
        param_grouping="parts" if record.param_grouping == "parts" else "single",
        **({"num_parts": 3} if record.param_grouping == "parts" else {}),
    )
    strategy = (
        "ddp"
        if route == "ddp"
        else ModelParallelStrategy(
            data_parallel_size=2,
            tensor_parallel_size=1,
            save_distributed_checkpoint=route == "distributed",
        )
    )
    every = [ModelCheckpoint(save, "stop", every_n_train_steps=steps)] if save else []
    t = trainer(
        max_steps=steps,
        strategy=strategy,
        devices=2,
        deterministic=True,
        callbacks=every,
        enable_checkpointing=bool(save),
    )
    data = ResumableDataLoader(regression_data(64), batch_size=4, shuffle=True, seed=1)
    t.fit(module, train_dataloaders=data, ckpt_path=ckpt_path)
    held = t.optimizers[0].param_groups[0]["params"]  # the root's own may be left gathered
    params = [getattr(p, "full_tensor", p.detach)() for p in held]
    return t, params, t.optimizers[0].state["line_search"]


def main(out: str, names: list[str]) -> None:
    folder = Path(out).parent
    results = {}
    for name in names:
        runs = {}
        for route in ("distributed", "full", "ddp"):
            _, through, search = fit(name, END, route)
            runs[route] = through
            fit(name, STOP, route, save=str(folder / f"{name}-{route}"))
            path = str(folder / f"{name}-{route}" / "stop.ckpt")
            try:
                _, resumed, resumed_search = fit(name, END, route, ckpt_path=path)
            except Exception as err:  # noqa: BLE001 - the test reads what stopped the resume
                results[f"{name}/{route}"] = {"error": f"{type(err).__name__}: {err}"}
                continue
            diff = max(float((a - b).abs().max()) for a, b in zip(through, resumed))
            same = json.dumps(search, default=float) == json.dumps(resumed_search, default=float)
            results[f"{name}/{route}"] = {"max_diff": diff, "same_search_state": same}
        sharded = max(float((a - b).abs().max()) for a, b in zip(runs["distributed"], runs["ddp"]))
        results[f"{name}/sharded_vs_ddp"] = {"max_diff": sharded}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results, indent=1))
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or optim.line_searches())
