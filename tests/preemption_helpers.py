"""A tiny classifier, its data and a signal sender, importable by ``python -m lsframe`` runs that
the preemption tests start (``PYTHONPATH=tests``): seconds per fit on the CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lsframe.data.resumable import make_loader
from lsframe.modules import ClosureModule


class TinyClassifier(ClosureModule):
    """An MLP with dropout on 8 features, 3 classes; logs ``val/acc``."""

    def __init__(self, **kwargs: Any) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 3))
        super().__init__(model=model, **kwargs)

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self.model(x).argmax(-1) == y).float().mean())


class SavedTinyClassifier(TinyClassifier):
    """TinyClassifier whose checkpoints carry its hyperparameters, as lsframe's task modules'."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()


class Blobs(pl.LightningDataModule):
    """Three Gaussian blobs; a shuffled resumable training loader, a plain validation loader."""

    def __init__(self, n: int = 96, batch_size: int = 8, seed: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 8, generator=generator) + 2.0 * F.one_hot(self.y, 8).float()
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(self.x, self.y)
        return make_loader(data, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return make_loader(TensorDataset(self.x[:32], self.y[:32]), 16, shuffle=False)


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process from inside optimizer step ``step`` (1-based) of the
    ``fit``-th fit it sees, while the optimizer evaluates its closure (inside a line search), on
    the ranks in ``ranks``. A run resumed after that step never sends it again."""

    def __init__(
        self, step: int, signum: int = 15, ranks: list[int] | None = None, fit: int = 1
    ) -> None:
        self.step, self.signum, self.ranks, self.fit = step, signum, ranks or [0], fit
        self.sent, self.fits = False, 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.fits += 1

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any):
        if self.sent or self.fits != self.fit or trainer.global_step != self.step - 1:
            return
        self.sent = True
        if trainer.global_rank in self.ranks:
            os.kill(os.getpid(), self.signum)
            time.sleep(0.05)  # the handler runs now, inside the step


class Marker(pl.Callback):
    """Writes ``<dir>/step<k>`` after every training batch and then waits ``delay`` seconds:
    a run slow enough for a test to signal it from outside, mid-epoch."""

    def __init__(self, dirpath: str, delay: float = 0.0) -> None:
        self.dirpath, self.delay = Path(dirpath), delay

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"step{trainer.global_step}").touch()
        time.sleep(self.delay)


class FinalParameters(pl.Callback):
    """Saves ``{"global_step", "state_dict"}`` to ``path`` (rank 0) when the fit ends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save({"global_step": trainer.global_step, "state_dict": state}, self.path)


__all__ = [
    "Blobs",
    "FinalParameters",
    "Marker",
    "SignalAt",
    "TinyClassifier",
]
