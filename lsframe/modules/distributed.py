"""Where the closure meets the distributed strategy: gradient accumulation without a needless
all-reduce per micro-batch, and one loss value for every process."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import lightning.pytorch as pl
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
