"""Parameter groups shared by every optimizer: the usual no-decay split."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def weight_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
) -> list[dict[str, Any]]:
    """Split parameters into a ``decay`` group and a ``no_decay`` group with ``weight_decay=0``.

    The rule is by shape, so it holds for any architecture: tensors with at most one dimension
    (biases, LayerNorm/BatchNorm weights, scalars) get no weight decay; matrices and convolution
    kernels keep the optimizer's own ``weight_decay``. Empty groups are left out.

    Args:
        named_parameters: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``.

    Returns:
        A list of param-group dicts with a ``name`` key, ready for any ``torch.optim.Optimizer``.
    """
    decay, no_decay = [], []
    for _, p in named_parameters:
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"name": "decay", "params": decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
