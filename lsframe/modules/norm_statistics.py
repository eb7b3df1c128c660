"""BatchNorm running statistics saved before a closure evaluation and put back after it."""

from __future__ import annotations

import torch
from torch import nn


class NormStatistics:
    """A copy of the running statistics of the model's BatchNorm-style layers in training mode.

    Only the first full evaluation of a step, with a finite loss, may move these statistics;
    :class:`lsframe.modules.ClosureModule` restores the copy after every other evaluation (trial
    points and re-evaluations), so that a step counts as one batch whatever its trials.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved = [
            (m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)
            and m.track_running_stats
            and m.training
        ]

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved statistics back into their layers."""
        for module, buffers in self.saved:
            for name, value in buffers.items():
                getattr(module, name).copy_(value)
