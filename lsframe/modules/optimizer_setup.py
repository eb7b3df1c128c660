"""The optimizer around :class:`lsframe.modules.ClosureModule`'s closure: the default, how the
trainable parameters are grouped, how many optimizer steps a run has, and its scheduler."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lsframe.optim import info_for
from lsframe.optim.param_groups import weight_decay_groups
from lsframe.optim.step_size_schedule import StepSizeSchedule
from lsframe.parts import part_groups


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with lr 2e-5 and weight decay 0.01, the usual transformer fine-tuning baseline."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


def parameter_groups(
    model: nn.Module, grouping: str, num_parts: int, owner: str = "model"
) -> list[dict[str, Any]]:
    """Named groups of the trainable parameters of ``model`` (``owner`` names it in errors).

    ``grouping="decay"``: 1-D parameters (biases, norm weights) in a ``no_decay`` group with
    ``weight_decay=0``, the rest in ``decay`` (:func:`lsframe.optim.weight_decay_groups`);
    ``"parts"``: one group per part of :func:`lsframe.parts.split_into_parts`, named by its
    ``part`` (:func:`lsframe.parts.part_groups`); ``"single"``: one group ``all``.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{owner}: the model has no trainable parameter")
    if grouping == "decay":
        return weight_decay_groups(named)
    if grouping == "parts":
        return part_groups(model, num_parts)
    return [{"name": "all", "params": [p for _, p in named]}]


def count_optimizer_steps(trainer: pl.Trainer, accumulate_grad_batches: int) -> int:
    """Optimizer steps in the whole run: ``max_steps`` when epochs are unlimited, else
    ``epochs · ceil(batches / accumulate_grad_batches)``, capped by a positive ``max_steps``.

    Raises:
        ValueError: the train dataloader is infinite and ``max_steps`` is not set.
    """
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs == -1:
        return trainer.max_steps
    trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
    batches = trainer.num_training_batches
    if math.isinf(batches):
        if trainer.max_steps > 0:
            return trainer.max_steps
        raise ValueError("an infinite train dataloader needs trainer.max_steps")
    steps = math.ceil(batches / accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
    return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps


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
    else:
        scheduler = factory(optimizer)
    if getattr(scheduler, "total_steps", 0) is None:
        scheduler.set_total_steps(total_steps())
    return scheduler
