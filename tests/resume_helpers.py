"""What the resume tests share: a run killed at a step, its data and modules, failures."""

from __future__ import annotations

import torch
from helpers import TinyRegression, mlp, registry_module, regression_data
from lightning.pytorch.callbacks import Callback

from lsframe.data.resumable import ResumableDataLoader
from lsframe.errors import DataError

STEPS, EVERY, CRASH = 17, 4, 15  # 10 batches per epoch: the last checkpoint (12) is mid-epoch


class Crash(Callback):
    def __init__(self, at: int = CRASH) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def data(seed: int = 3) -> ResumableDataLoader:
    return ResumableDataLoader(regression_data(40), batch_size=4, shuffle=True, seed=seed)


def make_module(name: str, **kwargs) -> TinyRegression:
    return registry_module(name, model=mlp(dropout=0.2), **kwargs)


class FailsOnce(Callback):
    """At the batch of optimizer step ``at`` (once): a DataError from ``on_train_batch_start``
    (a check of the fetched batch), or a non-finite loss from the module's closure."""

    def __init__(self, at: int, how: str) -> None:
        self.at, self.how, self.done = at, how, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # a check of the step's outputs, before the checkpoint callback's own batch end
        if self.how == "check after the step" and trainer.global_step == self.at + 1:
            if not self.done:
                self.done = True
                raise DataError("the step's outputs fail their check", where="side.txt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        last_micro_batch = (batch_idx + 1) % pl_module.accumulate_grad_batches == 0
        if trainer.global_step != self.at or self.done or not last_micro_batch:
            return
        if self.how == "check after the step":
            return
        self.done = True
        if self.how == "batch check":
            raise DataError("batch fails its check", where="side.txt")
        loss = pl_module.compute_loss
        pl_module.compute_loss = lambda batch: loss(batch) * float("nan")
        pl_module.compute_loss_restore = loss


class Restores(Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        if hasattr(pl_module, "compute_loss_restore"):
            pl_module.compute_loss = pl_module.__dict__.pop("compute_loss_restore")


def assert_same_parameters(expected: torch.nn.Module, actual: torch.nn.Module, *label) -> None:
    """Every parameter of ``actual`` equals ``expected``'s bit for bit (``label`` names the case)."""
    for (key, a), b in zip(expected.named_parameters(), actual.parameters()):
        assert torch.equal(a, b), (*label, key)
