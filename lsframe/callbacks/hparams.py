"""TensorBoard's HPARAMS tab filled with a fit's final and best validation metrics."""

from __future__ import annotations

import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

#: the checkpoint key of the last validation's metrics (:class:`HParamsMetrics`)
CHECKPOINT_KEY = "lsframe_last_validation"


class HParamsMetrics(pl.Callback):
    """At the end of a fit, write the run's hyperparameters together with its final and best
    validation metrics to every :class:`~lightning.pytorch.loggers.TensorBoardLogger` of the
    trainer, so that TensorBoard's HPARAMS tab compares runs by what they reached.

    Metrics (``TensorBoardLogger.log_hyperparams(params, metrics, step=...)``; each is also a
    scalar of that name at the fit's last point on the x axis the other scalars use,
    :func:`logger_step`):

    * ``final/<name>``: every ``val/...`` metric of the last validation, and each further
      evaluation set's ``val_<set>/...`` (MNLI's ``val_mismatched/``); a fit resumed from a
      checkpoint that runs no validation of its own takes the last one the checkpoint holds;
    * ``best/<monitor>``: the best score of each :class:`ModelCheckpoint` that monitors a metric
      (``python -m lsframe fit``: ``best/val/acc``, or the task's main metric);
    * ``hp_metric``: only for a logger built with ``default_hp_metric=True`` (Lightning's
      default): the first ``best/...`` value, else the first ``final/...`` one.

    The hyperparameters are those Lightning logs when the fit starts (the module's and the
    DataModule's saved hyperparameters, nested keys joined with ``/``). A fit without any
    validation metric writes nothing.

    TensorBoard keeps the *first* HPARAMS entry of a run directory, and a logger with
    ``default_hp_metric=True`` writes a placeholder (``hp_metric = -1``) when the fit starts: this
    callback turns that placeholder off for the fit (and restores the setting after it), so the
    entry written at the end is the one TensorBoard shows. A run continued in the same version
    directory (``--ckpt_path last``) after a fit that had finished keeps that first fit's entry.

    The last validation's metrics and step go into checkpoints (``lsframe_last_validation``); a
    second instance in the same trainer does nothing.
    Loggers other than TensorBoard are left alone. ``python -m lsframe fit`` adds one to every
    fit, and :class:`lsframe.sequential.SequenceRunner` (``sequential``, ``search``) to every
    stage.

    Example (YAML, for a Trainer that is not built by lsframe's CLI)::

        trainer:
          callbacks:
            - class_path: lsframe.callbacks.HParamsMetrics
    """

    def __init__(self) -> None:
        self._placeholders_off: list[TensorBoardLogger] = []
        #: the last validation of the fit (or of the one a checkpoint resumes): metric → value
        self.last_validation: dict[str, float] = {}
        self.last_validation_step: int | None = None
        #: whether the current (or last) fit ran a validation of its own
        self.validated_in_fit = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validated_in_fit = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or not self._active(trainer):
            return
        self.last_validation = validation_metrics(trainer)
        self.last_validation_step = trainer.global_step
        self.validated_in_fit = True

    # in the checkpoint's own key, not a callback state: Lightning refuses two stateful
    # instances of one type, and a second instance here is allowed (it does nothing)
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._active(trainer) and self.last_validation:
            saved = {"metrics": self.last_validation, "step": self.last_validation_step}
            checkpoint[CHECKPOINT_KEY] = saved

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if self._active(trainer) and isinstance(saved, dict):
            self.last_validation = dict(saved.get("metrics") or {})
            self.last_validation_step = saved.get("step")

    def _active(self, trainer: pl.Trainer) -> bool:
        first = next(cb for cb in trainer.callbacks if isinstance(cb, HParamsMetrics))
        return first is self

    @staticmethod
    def _tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._active(trainer):
            return
        self.teardown(trainer, pl_module, stage)  # a fit that raised left its loggers changed
        # before Lightning logs the hyperparameters (after the setup hooks): no placeholder
        for logger in self._tensorboard_loggers(trainer):
            if getattr(logger, "_default_hp_metric", False):
                logger._default_hp_metric = False
                self._placeholders_off.append(logger)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in self._placeholders_off:
            logger._default_hp_metric = True
        self._placeholders_off = []

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        loggers = self._tensorboard_loggers(trainer)
        if not loggers:
            return
        metrics = self.metrics(trainer, self.last_validation)
        if not metrics:
            return
        params = self.hyperparameters_of(pl_module, trainer.datamodule)
        for logger in loggers:
            values = dict(metrics)
            if logger in self._placeholders_off:
                main = [k for k in values if k.startswith("best/")] or list(values)
                values["hp_metric"] = values[main[0]]
            logger.log_hyperparams(params, values, step=logger_step(trainer))
            logger.save()

    @staticmethod
    def metrics(
        trainer: pl.Trainer, last_validation: dict[str, float] | None = None
    ) -> dict[str, float]:
        """``best/<monitor>`` of each monitoring ModelCheckpoint that has a best score, then
        ``final/val/...`` and ``final/val_<set>/...`` of the last validation (``callback_metrics``,
        else ``last_validation``: a resumed fit that ran none)."""
        out: dict[str, float] = {}
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor:
                score = callback.best_model_score
                if score is not None:
                    out[f"best/{callback.monitor}"] = float(score)
        final = validation_metrics(trainer) or last_validation or {}
        out.update({f"final/{key}": value for key, value in sorted(final.items())})
        return out

    @staticmethod
    def hyperparameters_of(
        module: pl.LightningModule, datamodule: pl.LightningDataModule | None = None
    ) -> dict[str, Any]:
        """What Lightning logs as hyperparameters at the start of a fit: the module's and the
        DataModule's saved ones (LightningCLI's internal ``_...`` keys left out)."""
        params: dict[str, Any] = {}
        if datamodule is not None and datamodule._log_hyperparams:
            params.update(datamodule.hparams_initial)
        if module._log_hyperparams:
            params.update(module.hparams_initial)
        return {k: v for k, v in params.items() if not str(k).startswith("_")}


def logger_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the fit's scalars at now: batches under manual optimization
    (lsframe's modules, whose ``accumulate_grad_batches`` Lightning does not know), optimizer
    steps under automatic optimization; ``global_step`` counts optimizer steps in both."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def validation_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The validation metrics in ``trainer.callback_metrics``: ``val/...`` and each further
    evaluation set's ``val_<set>/...``."""
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if re.match(r"val(_\w+)?/", key)
    }
