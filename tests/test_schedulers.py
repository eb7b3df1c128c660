"""Schedulers that a subclass's ``configure_optimizers`` or a callback adds follow their config's
interval, frequency and monitor under lsframe's manual optimization, as Lightning's do under
automatic optimization (lsframe.modules.schedulers)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyRegression, loader, mlp, trainer
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging

from lsframe.errors import ConfigError
from lsframe.optim import SaLSA


class _LrAtEachStep(Callback):
    """The lr each optimizer step used, read at its batch's start."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class _WithScheduler(TinyRegression):
    def __init__(self, schedule: dict[str, Any], lr: float = 0.01, **kwargs: Any) -> None:
        super().__init__(optimizer=lambda p: torch.optim.SGD(p, lr=lr), **kwargs)
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        build = self.schedule["scheduler"]
        return {
            "optimizer": optimizer,
            "lr_scheduler": {**self.schedule, "scheduler": build(optimizer)},
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self.compute_loss(batch))


class _Automatic(pl.LightningModule):
    """The same model, loss and schedule under Lightning's automatic optimization."""

    def __init__(self, schedule: dict[str, Any], lr: float = 0.01) -> None:
        super().__init__()
        self.model, self.schedule, self.lr = mlp(), schedule, lr

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.model(x).squeeze(-1), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr)
        build = self.schedule["scheduler"]
        return {
            "optimizer": optimizer,
            "lr_scheduler": {**self.schedule, "scheduler": build(optimizer)},
        }


def _fit(module: pl.LightningModule, epochs: int = 3, **kwargs: Any) -> list[float]:
    record = _LrAtEachStep()
    kwargs.setdefault("limit_val_batches", 0)
    trainer(max_epochs=epochs, callbacks=[record, *kwargs.pop("callbacks", [])], **kwargs).fit(
        module, loader(16, 4), loader(8, 4)
    )
    return record.lrs


def _halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def test_a_scheduler_of_interval_epoch_steps_once_per_epoch_after_its_last_batch():
    # it stepped after every optimizer step: 4 halvings an epoch instead of 1
    lrs = _fit(_WithScheduler({"scheduler": _halving, "interval": "epoch"}))
    assert lrs == pytest.approx([0.01] * 4 + [0.005] * 4 + [0.0025] * 4)


def test_a_scheduler_of_interval_step_with_a_frequency_counts_the_epoch_s_batches_as_lightning():
    # it counted optimizer steps over the run: other steps than Lightning's once an epoch's
    # batches are not a multiple of the frequency
    schedule = {"scheduler": _halving, "interval": "step", "frequency": 3}
    lrs = _fit(_WithScheduler(schedule), epochs=2)
    assert lrs == _fit(_Automatic(schedule), epochs=2)
    assert lrs == pytest.approx([0.01] * 3 + [0.005] * 4 + [0.0025])


def test_an_epoch_scheduler_steps_at_the_last_batch_a_limited_epoch_takes():
    lrs = _fit(_WithScheduler({"scheduler": _halving, "interval": "epoch"}), limit_train_batches=2)
    assert lrs == pytest.approx([0.01] * 2 + [0.005] * 2 + [0.0025] * 2)


def _plateau(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    # mode "max" on a loss that falls: every epoch is a bad one
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=0, factor=0.5)


def test_a_plateau_scheduler_gets_its_monitored_validation_metric_at_each_epoch_end():
    # it was stepped without the metric: a TypeError at the first step
    schedule = {"scheduler": _plateau, "interval": "epoch", "monitor": "val/loss"}
    lrs = _fit(_WithScheduler(schedule), epochs=4, limit_val_batches=None)
    assert lrs == _fit(_Automatic(schedule), epochs=4, limit_val_batches=None)
    assert lrs[-1] < 0.01  # it reduced: the metric reached it


def test_a_plateau_scheduler_on_a_metric_never_logged_is_one_line_naming_configure_optimizers():
    schedule = {"scheduler": _plateau, "interval": "epoch", "monitor": "val/acc"}
    with pytest.raises(ConfigError) as caught:
        _fit(_WithScheduler(schedule), limit_val_batches=None)
    assert caught.value.where == "_WithScheduler.configure_optimizers"
    assert (
        "monitors 'val/acc', which is not logged (logged: step_size/all, train/closure_evals, train/loss, val/loss)"
        in caught.value.message
    )
    schedule["strict"] = False  # Lightning's: the update is skipped, with a warning
    with pytest.warns(UserWarning, match="its update is skipped"):
        lrs = _fit(_WithScheduler(schedule), limit_val_batches=None)
    assert lrs == pytest.approx([0.01] * 12)


def test_swa_anneals_over_epochs_as_in_lightning():
    # SWALR (interval "epoch") stepped at every optimizer step reached the SWA lr in one epoch
    def swa() -> StochasticWeightAveraging:
        return StochasticWeightAveraging(swa_lrs=0.001, swa_epoch_start=1, annealing_epochs=2)

    schedule = {"scheduler": _halving, "interval": "epoch"}
    lrs = _fit(_WithScheduler(schedule), epochs=4, callbacks=[swa()])
    assert lrs == _fit(_Automatic(schedule), epochs=4, callbacks=[swa()])
    assert len(set(lrs)) >= 3  # it annealed, epoch by epoch


def test_a_line_search_under_swa_is_refused_before_its_first_step():
    # SWALR wrote lr, and the line search raised a RuntimeError traceback one step later
    swa = StochasticWeightAveraging(swa_lrs=0.001, swa_epoch_start=1)
    module = TinyRegression(optimizer=SaLSA)
    with pytest.raises(ConfigError, match="StochasticWeightAveraging anneals") as caught:
        _fit(module, callbacks=[swa])
    assert caught.value.where == "trainer.callbacks" and module.trainer.global_step == 0


def test_a_torch_scheduler_of_configure_optimizers_on_a_line_search_is_refused_before_any_step():
    class _SaLSAWithStepLR(TinyRegression):
        def configure_optimizers(self) -> Any:
            optimizer = SaLSA(self.model.parameters())
            return {"optimizer": optimizer, "lr_scheduler": _halving(optimizer)}

    module = _SaLSAWithStepLR()
    with pytest.raises(ConfigError, match="StepLR would write 'lr'") as caught:
        _fit(module)
    assert caught.value.where == "_SaLSAWithStepLR.configure_optimizers"
    assert module.trainer.global_step == 0


def test_learning_rate_monitor_beside_a_line_search_is_warned_to_show_the_previous_step(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    with pytest.warns(UserWarning, match="shows the previous step's"):
        trainer(max_steps=1, logger=CSVLogger(tmp_path), callbacks=[LearningRateMonitor()]).fit(
            TinyRegression(optimizer=SaLSA), loader(8, 4)
        )


def test_lightning_s_lr_finder_records_the_losses_of_a_torch_optimizer(tmp_path):
    # training_step returned None: every loss recorded was NaN and no suggestion came
    from lightning.pytorch.tuner import Tuner

    module = TinyRegression(optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    finder = Tuner(trainer(default_root_dir=tmp_path, max_epochs=1)).lr_find(
        module, loader(64, 4), min_lr=1e-4, max_lr=1.0, num_training=10, update_attr=False
    )
    losses = finder.results["loss"]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))


def test_lightning_s_lr_finder_on_a_line_search_is_refused_for_what_it_is(tmp_path):
    # it blamed configure_optimizers and told the user to wrap Lightning's private scheduler
    from lightning.pytorch.tuner import Tuner

    with pytest.raises(ConfigError, match="the learning-rate finder sweeps 'lr', which SaLSA"):
        Tuner(trainer(default_root_dir=tmp_path, max_epochs=1)).lr_find(
            TinyRegression(optimizer=SaLSA), loader(64, 4), num_training=10, update_attr=False
        )
