"""Parameter groups shared by every optimizer: the usual no-decay split."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lsframe.optim._registry import info_for


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


def apply_part_multipliers(optimizer: Optimizer, multipliers: dict[str, float]) -> None:
    """Scale each ``part`` group of a freshly built optimizer by its multiplier.

    A torch optimizer's group gets ``lr = lr · m``; a line search's group (its registry record
    says it ``searches``) gets ``lr_multiplier = m``, so the searched step size is scaled by ``m`` (a
    :class:`~lsframe.optim.StepSizeSchedule` scales it further). Groups need the ``part`` key of
    :func:`lsframe.parts.part_groups`.
    """
    searches = info_for(optimizer).searches
    for group in optimizer.param_groups:
        part = group.get("part")
        if part is None:
            raise ValueError(f"param group {group.get('name')!r} has no 'part' key")
        if part not in multipliers:
            raise ValueError(f"no multiplier for part {part!r} (have {sorted(multipliers)})")
        m = float(multipliers[part])
        if searches:
            group["lr_multiplier"] = m
            group["lr"] = group["step_size"] * m
        else:
            group["lr"] = group["lr"] * m
