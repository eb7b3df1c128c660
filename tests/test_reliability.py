"""Faults: an exception in a data batch stops the run clearly; a checkpoint is never half-written."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyRegression, regression_data, trainer
from torch.utils.data import DataLoader, Dataset


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
