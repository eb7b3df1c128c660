"""BatchNorm running statistics saved before a closure evaluation and put back after it.

The class lives with lsframe's plain-loop closure (:class:`lsframe.optim.closure.NormStatistics`);
:class:`lsframe.modules.ClosureModule` uses the same one: only the first full evaluation of a step,
with a finite loss, may move the statistics, so a step counts as one batch whatever its trials.
"""

from __future__ import annotations

from lsframe.optim.closure import NormStatistics

__all__ = ["NormStatistics"]
