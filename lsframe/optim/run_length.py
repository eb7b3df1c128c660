"""Telling an optimizer how many steps its run takes, for a start that depends on it."""

from __future__ import annotations

import math
from collections.abc import Callable

from lsframe.optim.data_passes import innermost_optimizer


def long_run_start(start: float, long_run_steps: int, total_steps: int) -> float:
    """The step size a run of ``total_steps`` optimizer steps starts at: ``start`` up to
    ``long_run_steps`` steps, ``start · √(long_run_steps / total_steps)`` beyond.

    The square root is the constant step size of stochastic approximation over a fixed horizon
    (for a budget of T noisy steps the best constant step falls as 1/√T): a longer run spends
    more steps, each shorter, and its noise averages over more of them.
    """
    return start * min(1.0, math.sqrt(long_run_steps / total_steps))


def set_run_length(optimizer: object, total_steps: int | Callable[[], int | None] | None) -> bool:
    """Tell ``optimizer`` (or the one its wrappers hold) that its run takes ``total_steps``
    optimizer steps (an int, or a callable counted only when the optimizer asks), if it asks
    (its ``needs_run_length`` is true); True when it did. None (a run of unknown length) tells
    it nothing.

    :class:`~lsframe.optim.SlopeTrackingAdam` with ``long_run_steps`` starts lower on a longer
    run. lsframe's modules, ``LineSearchTrainer`` and the benchmarks call this before the first
    step; a plain loop may call it or the optimizer's ``set_run_length`` directly.
    """
    inner = innermost_optimizer(optimizer)
    if not getattr(inner, "needs_run_length", False):
        return False
    steps = total_steps() if callable(total_steps) else total_steps
    if steps is None:
        return False
    inner.set_run_length(steps)
    return True
