"""Faults: non-finite losses are logged rejections, an exception in a data batch stops the run
clearly, a checkpoint is never half-written."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import TinyRegression, registry_module, regression_data, trainer
from torch.utils.data import DataLoader, Dataset

from lsframe import optim
from lsframe.callbacks import ClosureCallback


class FailingData(Dataset):
    """The regression data, with an exception when item ``fail_at`` is read."""

    def __init__(self, fail_at: int) -> None:
        self.data, self.fail_at = regression_data(32), fail_at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        if index == self.fail_at:
            raise OSError(f"corrupt record {index}")
        return self.data[index]


def test_an_exception_in_a_data_batch_stops_with_its_message_and_finite_parameters():
    module = TinyRegression()
    with pytest.raises(OSError, match="corrupt record 13"):
        trainer(max_steps=8).fit(module, DataLoader(FailingData(13), batch_size=4))
    assert module.trainer.global_step == 3  # batches 0-2 trained, batch 3 holds record 13
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    module = TinyRegression()
    run = trainer(max_steps=2)
    run.fit(module, DataLoader(regression_data(16), batch_size=4))
    path = tmp_path / "last.ckpt"
    run.save_checkpoint(path)
    before = path.read_bytes()

    def broken_write(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(local.LocalFileOpener, "write", broken_write)
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        run.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=False)["global_step"] == 2


class RandomFaults(ClosureCallback):
    """NaN or inf added to the loss of a random 30 % of all closure evaluations (trials too)."""

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)
        self.injected = 0

    def closure_loss(self, trainer, pl_module):
        if self.random.random() < 0.3:
            self.injected += 1
            return torch.tensor(self.random.choice([float("nan"), float("inf")]))
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert all(torch.isfinite(p).all() for p in pl_module.parameters()), trainer.global_step


@pytest.mark.parametrize("name", optim.names())
def test_random_nonfinite_losses_are_logged_rejections_never_nonfinite_parameters(name):
    module = registry_module(name, nonfinite_loss="skip")
    faults = RandomFaults()
    run = trainer(max_steps=20, callbacks=[faults])
    run.fit(module, DataLoader(regression_data(80), batch_size=4))
    metrics = run.callback_metrics
    logged = float(metrics["train/skipped_steps"]) + float(metrics.get("train/rejected_steps", 0))
    assert faults.injected > 0 and logged > 0
    assert run.global_step == 20
