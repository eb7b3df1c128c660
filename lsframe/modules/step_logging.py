"""What :class:`~lsframe.modules.ClosureModule` logs at each optimizer step (the loss, the
closure's evaluations, each group's step size, a line search's diagnostics, skipped and overflow
steps), how it keeps Lightning from writing a step's values again on the micro-batches of
gradient accumulation that take no step, and where a resumed fit's logging step and callback
metrics start."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lsframe.precision import fp16_plugin


def logs_now(trainer: pl.Trainer | None) -> bool:
    """Whether Lightning writes the logged values at the end of this batch."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def align_resumed_logging_step(trainer: pl.Trainer) -> None:
    """At a resumed fit's first training batch: its logging step (the x of every logged curve)
    set to where the uninterrupted fit's is, the number of training batches done.

    Under manual optimization Lightning counts one logging step per training batch and restores
    the count from the checkpoint, corrected for where the checkpoint was written, but not for
    every place: one written at a validation that Lightning ran for a stop (the Trainer's
    ``max_time``, a callback's ``should_stop`` at a batch's end) or between two micro-batches of
    a step resumed every curve one step behind, and one written at an epoch's end one step
    ahead. Its own count of the batches done is right in each case, and equals the logging step
    at every batch of an uninterrupted fit."""
    loop = trainer.fit_loop.epoch_loop
    if hasattr(loop, "_batches_that_stepped"):  # Lightning 2.x's name for the count
        loop._batches_that_stepped = loop.batch_progress.total.completed


def callback_metrics_to_save(trainer: pl.Trainer) -> dict[str, Tensor]:
    """The metrics callbacks read (``trainer.callback_metrics``), as a checkpoint keeps them."""
    metrics = trainer.callback_metrics.items()
    return {
        key: value.detach().cpu().clone() for key, value in metrics if isinstance(value, Tensor)
    }


def restore_callback_metrics(trainer: pl.Trainer, saved: dict[str, Tensor] | None) -> None:
    """A resumed fit starts with the metrics callbacks read as its checkpoint was written (those
    not logged anew). Lightning starts it with none: an ``EarlyStopping`` (or a monitoring
    ``ModelCheckpoint``) checked before the resumed fit's first validation, at the end of an
    epoch that ``max_steps`` cut short, stopped the fit with "conditioned on metric ... which is
    not available", and every resume of its ``last.ckpt`` again; the fit through went on with
    the last validation's value."""
    current = trainer.callback_metrics
    for key, value in (saved or {}).items():
        current.setdefault(key, value)


def hide_written_step(trainer: pl.Trainer | None) -> None:
    """Hide the last step's values, once written, on a micro-batch that takes no step.

    Lightning, which does not know of this accumulation (manual optimization), would write them
    again at every logging batch (``train/closure_evals`` counted twice in a sum). They are
    written once: at the step's batch, or at the first logging batch after it; then hidden (not
    reset: a logged torchmetrics object keeps its state)."""
    results = getattr(trainer, "_results", None)
    for result in results.values() if results is not None else ():
        meta = getattr(result, "meta", None)
        if meta is not None and meta.fx == "training_step" and meta.on_step and not meta.on_epoch:
            result.has_reset = True  # left out of what is written; the next log shows it


def log_step(
    module: Any, optimizer: torch.optim.Optimizer, loss: Tensor | None, evaluations: int
) -> None:
    """Log one optimizer step of ``module`` (a ClosureModule): ``loss`` at the step's start,
    the closure's ``evaluations``, and what ``optimizer`` and the precision plugin report."""
    module.log("train/loss", loss, prog_bar=True)
    module.log("train/closure_evals", float(evaluations))
    last = getattr(optimizer, "last_step", None)  # a line search's per-step diagnostics
    taken = last.get("step_sizes") if isinstance(last, dict) else None
    for i, group in enumerate(optimizer.param_groups):
        name = group.get("name", str(i))
        searched = "step_size" in group and "lr_multiplier" in group  # searched or tracked η
        # the step the update used: a rule may move ``step_size`` (and ``lr``) after it, to
        # where its next search starts (PLASLS's merges)
        size = taken[i] if searched and taken is not None else group.get("step_size")
        lr = size * group["lr_multiplier"] if searched else group["lr"]
        module.log(f"step_size/{name}", float(lr), prog_bar=i == 0)
        if searched:
            module.log(f"linesearch/step_size/{name}", float(size))
    if module.nonfinite_loss == "skip":
        module.log("train/skipped_steps", float(module._skipped_steps))
    fp16 = fp16_plugin(module._trainer)
    if fp16 is not None:  # the scale for the next step, and the steps skipped for overflow
        module.log("train/loss_scale", fp16.scaler.scale)
        module.log("train/overflow_steps", float(fp16.scaler.overflow_steps))
    search = getattr(optimizer, "state", {}).get("line_search")
    if isinstance(search, dict) and "rejected_steps" in search:
        module.log("train/rejected_steps", float(search["rejected_steps"]))
    if isinstance(last, dict) and isinstance(search, dict):
        module.log("linesearch/trials", float(last["trials"]))
        module.log("linesearch/failed_searches", float(search["failed_searches"]))
        # NaN on a step with no accepted search (a key left out would repeat its last value)
        ratio = last["sufficient_decrease_ratio"]
        module.log("linesearch/sufficient_decrease_ratio", float("nan") if ratio is None else ratio)
        if "alignment" in last:  # a step-size tracker's slope along its last step
            alignment = last["alignment"]
            module.log("linesearch/alignment", float("nan") if alignment is None else alignment)
