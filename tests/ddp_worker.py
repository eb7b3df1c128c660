"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit; each rank saves its final parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyRegression, leave_process_group, loader, mlp, regression_data, trainer  # noqa: E402

from lsframe import optim  # noqa: E402
from lsframe.callbacks import DPS, EWC, ChildTuningD, ValleyExploration  # noqa: E402
from lsframe.data import ResumableDataLoader  # noqa: E402


def with_every_callback(module: TinyRegression) -> list:
    """Valley exploration, ChildTuning-D and -F, DPS (frozen) and an active EWC penalty at once."""
    ewc = EWC(ewc_lambda=100.0)
    named = dict(module.model.named_parameters())
    ewc.params = named
    ewc.consolidate(
        {n: torch.ones_like(p) for n, p in named.items()},
        {n: p.detach().clone() for n, p in named.items()},
    )
    return [
        ValleyExploration(alpha=0.5, beta=0.3),
        ChildTuningD(reserve_p=0.5, include=[r"^0\."]),
        DPS(p=0.3, update_ratio=0.25, mask_mode="frozen"),
        ChildTuningD(reserve_p=0.5, variant="F", include=[r"^3\."]),
        ewc,
    ]


def main(out_dir: str, name: str, steps: int) -> None:
    everything = name == "callbacks"
    name = "alsals" if everything else name
    module = TinyRegression(
        model=mlp(dropout=0.1),
        optimizer=lambda p: optim.create(name, p),
        param_grouping="parts" if optim.info(name).param_grouping == "parts" else "decay",
    )
    callbacks = with_every_callback(module) if everything else []
    t = trainer(max_steps=steps, strategy="ddp", devices=2, accelerator="cpu", callbacks=callbacks)
    data = (
        ResumableDataLoader(regression_data(128), batch_size=4, shuffle=True, seed=1)
        if everything
        else loader(128, 4)
    )
    t.fit(module, train_dataloaders=data)
    state = t.optimizers[0].state["line_search"]
    extra = {}
    if everything:  # the Fisher estimated at the end (averaged across ranks) and the masks
        extra["fisher"] = callbacks[4].tasks[-1]["fisher"]
        extra["child_mask"] = callbacks[1].masks
    torch.save(
        {
            "params": [p.detach().clone() for p in module.model.parameters()],
            "searches": state["searches"],
            "forwards": state["forwards"],
            "global_step": t.global_step,
            "sampler": type(t.train_dataloader.sampler).__name__,
            "first_batch": next(iter(t.train_dataloader))[1],
            **extra,
        },
        Path(out_dir) / f"rank{t.global_rank}.pt",
    )
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
