"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit; each rank saves its final parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TinyRegression, loader, mlp, trainer  # noqa: E402

from lsframe import optim  # noqa: E402


def main(out_dir: str, name: str, steps: int) -> None:
    module = TinyRegression(
        model=mlp(dropout=0.1),
        optimizer=lambda p: optim.create(name, p),
        param_grouping="parts" if name == "plasls" else "decay",
    )
    t = trainer(max_steps=steps, strategy="ddp", devices=2, accelerator="cpu")
    t.fit(module, train_dataloaders=loader(128, 4))
    state = t.optimizers[0].state["line_search"]
    torch.save(
        {
            "params": [p.detach().clone() for p in module.model.parameters()],
            "searches": state["searches"],
            "forwards": state["forwards"],
            "global_step": t.global_step,
        },
        Path(out_dir) / f"rank{t.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
