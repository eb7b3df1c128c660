"""Telling an optimizer that a new pass over a finite training set begins."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer inside the wrappers that keep it as ``.optimizer`` (Lightning's
    ``LightningOptimizer``, Accelerate's ``AcceleratedOptimizer``)."""
    seen = set()
    while (
        isinstance(getattr(optimizer, "optimizer", None), Optimizer) and id(optimizer) not in seen
    ):
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def start_pass(optimizer: Any, index: int) -> bool:
    """Tell ``optimizer`` (or the one its wrappers hold) that pass ``index`` over the training
    set begins, if it asks (a ``start_pass`` method); True when it did.

    A rule that judges a step by the next batch (:class:`SlopeTrackingAdam`) must know when the
    batches stop being fresh. lsframe's modules, ``LineSearchTrainer`` and the benchmarks call
    this at each epoch; a plain loop may call it or the optimizer's method directly.
    """
    method = getattr(innermost_optimizer(optimizer), "start_pass", None)
    if not callable(method):
        return False
    method(index)
    return True
