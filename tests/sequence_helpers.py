"""What the sequential runner's tests share: a tiny classifier, tasks on the sign of one
feature (one of them failing when asked), and a two-stage runner."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lsframe.modules import ClosureModule
from lsframe.sequential import SequenceRunner, Stage


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.classifier = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


class TinyClassifier(ClosureModule):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("optimizer", partial(torch.optim.Adam, lr=0.05))
        super().__init__(model=Net(), **kwargs)

    def compute_loss(self, batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx) -> None:
        x, y = batch
        self.log("val/acc", (self.model(x).argmax(-1) == y).float().mean())


class Task(pl.LightningDataModule):
    """Label = sign of one input feature; ``broken`` fails when training starts."""

    def __init__(self, feature: int, seed: int, broken: bool = False, shuffle: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(64, 4, generator=gen)
        self.y = (self.x[:, feature] > 0).long()
        self.broken, self.shuffle = broken, shuffle

    def train_dataloader(self) -> DataLoader:
        if self.broken:
            raise RuntimeError("interrupted")
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=64)


TRAINER = dict(
    accelerator="cpu",
    max_epochs=6,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


def runner(
    tmp_path, broken: bool = False, callbacks=(), shuffle: bool = False, **kwargs
) -> SequenceRunner:
    stages = [
        Stage("a", Task(0, seed=1, shuffle=shuffle)),
        Stage("b", Task(1, seed=2, broken=broken, shuffle=shuffle), max_epochs=8),
    ]
    trainer = dict(TRAINER, callbacks=list(callbacks))
    return SequenceRunner(TinyClassifier(), stages, trainer, output_dir=tmp_path, **kwargs)
