"""Evaluation metrics accumulate in float32 whatever dtype the module's weights have."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import Tensor, nn

_HALF = (torch.float16, torch.bfloat16)


def float32_metric_states(module: nn.Module) -> None:
    """Give every torchmetrics metric of ``module`` float32 floating states again.

    Under ``precision: bf16-true`` or ``16-true`` Lightning converts the whole module to the
    16-bit dtype, and torchmetrics converts its metrics' floating states with it (``Module.to``
    reaches them): an epoch's sums then round to 8 bits of mantissa (bf16: a causal LM's
    ``val/loss`` 0.069 nats high over 100 batches, ``val/ppl`` 7 % high) or overflow (fp16: a
    token count past 65,504 made ``val/loss`` NaN). The states, their reset values and the
    dtype inputs are cast to go back to float32; integer counts (accuracy's, F1's) are left as
    they are. Called at the start of each validation and test epoch."""
    for metric in module.modules():
        if not isinstance(metric, torchmetrics.Metric):
            continue
        for key, default in list(metric._defaults.items()):
            metric._defaults[key] = _widened(default)
            setattr(metric, key, _widened(getattr(metric, key)))
        if metric._dtype in _HALF:
            metric._dtype = torch.float32


def _widened(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.dtype in _HALF else value
    if isinstance(value, list):
        return [_widened(v) for v in value]
    return value
