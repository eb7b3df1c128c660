"""Parameter groups shared by every optimizer: the usual no-decay split."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lsframe.optim._registry import info_for


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The parameter names ``model.no_weight_decay()`` returns (timm: ``{'pos_embed',
    'cls_token', ...}``), or an empty set for a model without the method."""
    method = getattr(model, "no_weight_decay", None)
    return set(method()) if callable(method) else set()


def exempt_from_decay(name: str, patterns: Collection[str]) -> bool:
    """Whether ``patterns`` keep parameter ``name`` out of weight decay: timm's rule (an
    ``fnmatch`` pattern, so exact names too), or a module name covering its parameters."""
    return any(fnmatch.fnmatch(name, p) or name.startswith(f"{p}.") for p in patterns)


def weight_decay_groups(
    parameters: nn.Module | Iterable[tuple[str, nn.Parameter]],
    no_weight_decay: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Split parameters into a ``decay`` group and a ``no_decay`` group with ``weight_decay=0``,
    as timm's ``param_groups_weight_decay`` does.

    The rule is by shape, so it holds for any architecture: tensors with at most one dimension
    (biases, LayerNorm/BatchNorm weights, scalars) get no weight decay; matrices and convolution
    kernels keep the optimizer's own ``weight_decay``, unless ``no_weight_decay`` names them
    (a ViT's ``pos_embed`` and ``cls_token``). Empty groups are left out; each keeps the
    parameters' order.

    Args:
        parameters: A model (its trainable parameters, and its ``no_weight_decay()`` names when
            ``no_weight_decay`` is None), or ``(name, parameter)`` pairs, all of which are
            grouped (e.g. ``model.named_parameters()``).
        no_weight_decay: Parameter names, ``fnmatch`` patterns or module names kept out of weight
            decay. Default: a model's own ``no_weight_decay()``; none for pairs.

    Returns:
        A list of param-group dicts with a ``name`` key, ready for any ``torch.optim.Optimizer``.
    """
    if isinstance(parameters, nn.Module):
        if no_weight_decay is None:
            no_weight_decay = no_weight_decay_names(parameters)
        parameters = [(n, p) for n, p in parameters.named_parameters() if p.requires_grad]
    exempt = no_weight_decay or ()
    decay, no_decay = [], []
    for name, p in parameters:
        (no_decay if p.ndim <= 1 or exempt_from_decay(name, exempt) else decay).append(p)
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
