"""The optimizer around :class:`lsframe.modules.ClosureModule`'s closure: the default, how the
trainable parameters are grouped, how many optimizer steps a run has, and its scheduler."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lsframe.errors import ConfigError
from lsframe.optim import info_for
from lsframe.optim.param_groups import (
    exempt_from_decay,
    no_weight_decay_names,
    weight_decay_groups,
)
from lsframe.optim.step_size_schedule import StepSizeSchedule
from lsframe.parts import part_groups


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with lr 2e-5 and weight decay 0.01, the usual transformer fine-tuning baseline."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


def parameter_groups(
    model: nn.Module,
    grouping: str,
    num_parts: int,
    owner: str = "model",
    no_weight_decay: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Named groups of the trainable parameters of ``model`` (``owner`` names it in errors).

    ``grouping="decay"``: 1-D parameters (biases, norm weights) and those ``no_weight_decay``
    names in a ``no_decay`` group with ``weight_decay=0``, the rest in ``decay``
    (:func:`lsframe.optim.weight_decay_groups`); ``"parts"``: one group per part of
    :func:`lsframe.parts.split_into_parts`, named by its ``part``
    (:func:`lsframe.parts.part_groups`); ``"single"``: one group ``all``.

    Args:
        model: The network.
        grouping: ``"decay"``, ``"parts"`` or ``"single"``.
        num_parts: Parts for ``grouping="parts"``.
        owner: Names the model in errors.
        no_weight_decay: Parameter names (or ``fnmatch`` patterns, or module names) kept out of
            weight decay in the ``"decay"`` grouping, as timm's ``no_weight_decay()`` gives
            them. Default (None): the model's own ``no_weight_decay()`` when it has one.

    Raises:
        ValueError: the model has no trainable parameter, or a given ``no_weight_decay`` name
            matches none.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{owner}: the model has no trainable parameter")
    if grouping == "decay":
        if no_weight_decay is None:
            no_weight_decay = no_weight_decay_names(model)
        else:  # the user's names: one that exempts nothing is a typo (the model's may be stale)
            for pattern in no_weight_decay:
                if not any(exempt_from_decay(n, [pattern]) for n, _ in named):
                    raise ValueError(
                        f"{owner}: no_weight_decay name {pattern!r} matches no trainable "
                        "parameter (an exact name, an fnmatch pattern or a module name)"
                    )
        return weight_decay_groups(named, no_weight_decay)
    if grouping == "parts":
        return part_groups(model, num_parts)
    return [{"name": "all", "params": [p for _, p in named]}]


class RunLengthUnknown(ValueError):
    """The run has no known number of optimizer steps: an infinite train dataloader or
    unlimited epochs (``max_epochs`` -1), and no ``max_steps``."""


def count_optimizer_steps(trainer: pl.Trainer, accumulate_grad_batches: int) -> int:
    """Optimizer steps in the whole run: ``max_steps`` when epochs are unlimited, else
    ``epochs · ceil(batches / accumulate_grad_batches)``, capped by a positive ``max_steps``.

    Raises:
        RunLengthUnknown: the train dataloader is infinite, or ``max_epochs`` is -1, and
            ``max_steps`` is not set.
    """
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs == -1:
        return trainer.max_steps
    if trainer.max_epochs == -1:  # and no max_steps: the loader may be finite, the run is not
        raise RunLengthUnknown("trainer.max_epochs -1 (no limit) needs trainer.max_steps")
    trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
    batches = trainer.num_training_batches
    if math.isinf(batches):
        if trainer.max_steps > 0:
            return trainer.max_steps
        raise RunLengthUnknown("an infinite train dataloader needs trainer.max_steps")
    steps = math.ceil(batches / accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps


def known_run_length(count: Callable[[], int]) -> int | None:
    """``count()`` (a module's ``num_optimizer_steps``), or None with a warning where the run has
    no known length (an infinite train dataloader without ``max_steps``): an optimizer whose
    start depends on it then starts at its ``lr``."""
    try:
        return count()
    except RunLengthUnknown as err:
        rank_zero_warn(f"{err}: the optimizer starts at its lr, whatever the run's length")
        return None


def refuse_metric_scheduler(cls: type, where: str) -> None:
    """A ``lr_scheduler`` steps after every optimizer step, with no metric to pass: one that
    steps on a monitored metric (torch's ``ReduceLROnPlateau``) would fail at the first step,
    so it is refused (ConfigError at ``where``) before any."""
    if issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigError(
            f"{cls.__name__} steps on a monitored metric; lsframe steps lr_scheduler after "
            "every optimizer step, without one: use a step-based scheduler "
            "(lsframe.optim.WarmupCosineLR, torch's LambdaLR, StepLR, LinearLR, ...)",
            where=where,
        )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    factory: Callable[[torch.optim.Optimizer], Any],
    total_steps: Callable[[], int],
) -> Any:
    """The scheduler ``factory`` builds for ``optimizer``.

    On a line search (registry record ``searches``) it drives each group's ``lr_multiplier``
    (:class:`lsframe.optim.StepSizeSchedule`), which scales the searched step, never the search
    itself. A scheduler with a ``total_steps`` attribute left None gets ``total_steps()``, the
    number of optimizer steps of the run.
    """
    if info_for(optimizer).searches:
        scheduler = StepSizeSchedule(optimizer, factory)
        refuse_metric_scheduler(type(scheduler.scheduler), "lr_scheduler")
    else:
        scheduler = factory(optimizer)
        refuse_metric_scheduler(type(scheduler), "lr_scheduler")
    if getattr(scheduler, "total_steps", 0) is None:
        scheduler.set_total_steps(total_steps())
    return scheduler
