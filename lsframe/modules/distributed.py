"""Where the closure meets the distributed strategy: gradient accumulation without a needless
all-reduce per micro-batch, one loss value for every process, and a warning for a callback that
waits for every process."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


def no_backward_sync(trainer: pl.Trainer) -> AbstractContextManager:
    """The strategy's context that skips the gradient all-reduce of a backward (DDP's
    ``no_sync``), for every micro-batch but the last; a null context where it has none."""
    block = getattr(trainer.strategy, "block_backward_sync", None)
    return block() if block is not None else nullcontext()


def mean_over_processes(trainer: pl.Trainer | None, loss: Tensor) -> Tensor:
    """``loss`` averaged over the processes (unchanged with one process or without a trainer),
    so that every rank takes the same accept/reject decisions."""
    if trainer is None or trainer.world_size == 1:
        return loss
    return trainer.strategy.reduce(loss, reduce_op="mean")


def warn_exception_checkpoint(trainer: pl.Trainer) -> None:
    """Warn, once the run's processes are known, about a save on an exception beside several
    processes (Lightning's ``OnExceptionCheckpoint``, a ``ModelCheckpoint`` such as the
    ``checkpoint`` section's with ``save_on_exception: true``): it waits for every process, so
    an exception on one rank (a bad example, a failing callback) hangs the job until the
    process group times out (30 minutes by default) instead of ending it."""
    if trainer.world_size == 1:
        return
    for callback in trainer.callbacks:
        if isinstance(callback, OnExceptionCheckpoint):
            what = "OnExceptionCheckpoint"
        elif isinstance(callback, ModelCheckpoint) and callback.save_on_exception:
            what = f"{type(callback).__name__}'s save_on_exception"
        else:
            continue
        rank_zero_warn(
            f"{what} beside {trainer.world_size} processes: an exception on one of them hangs "
            "the job until the process group times out (its save waits for the others); "
            "lsframe's own checkpoints (last.ckpt, Preemption) need no such save"
        )
