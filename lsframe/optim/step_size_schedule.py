"""Schedules for line-search optimizers: a torch LR scheduler that drives ``lr_multiplier``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from lsframe.optim._registry import info_for
from lsframe.optim.data_passes import innermost_optimizer


class StepSizeSchedule:
    """Run any torch LR scheduler on a line-search optimizer's ``lr_multiplier``.

    A line search owns its step size, so a scheduler must not write ``lr``. This wrapper gives the
    scheduler a shadow optimizer with one group per real group, each with ``lr = 1``, and after
    every ``step()`` copies the shadow learning rates into the real groups' ``lr_multiplier``.
    The step rule then moves by ``η_searched · lr_multiplier`` (trial points included), and the
    groups' ``lr`` shows that product. For a plain optimizer (no ``lr_multiplier``), use the
    scheduler directly; :class:`lsframe.modules.ClosureModule` picks the right one.

    The wrapper forwards ``step`` (with its arguments: timm's schedulers take the epoch) and
    timm's ``step_update(num_updates)``, copying the multipliers after each; only the learning
    rates are applied (a momentum cycle, OneCycleLR's ``cycle_momentum``, is warned about).

    Args:
        optimizer: A line-search optimizer (its registry record ``searches``; its groups have
            ``lr_multiplier``).
        scheduler: Callable building a torch scheduler from an optimizer, e.g.
            ``lambda opt: WarmupCosineLR(opt, total_steps=1000)``.
    """

    def __init__(self, optimizer: Optimizer, scheduler: Callable[[Optimizer], Any]) -> None:
        optimizer = innermost_optimizer(optimizer)  # Accelerate's or Lightning's wrapper
        if not info_for(optimizer).searches:
            raise ValueError(
                f"StepSizeSchedule needs a line-search optimizer; {type(optimizer).__name__} "
                "groups have no 'lr_multiplier' (use the scheduler directly)"
            )
        self.optimizer = optimizer
        placeholders = [torch.zeros(0, requires_grad=True) for _ in optimizer.param_groups]
        # each shadow group starts at the group's own multiplier (1, or a per-part learning-rate
        # distribution), so the schedule scales it rather than replacing it. The first schedule
        # records it in the group (as torch's schedulers record ``initial_lr``): a later one
        # (HF Trainer's second ``train()``) starts from it again, not from the 0 where a decay
        # to zero left ``lr_multiplier``
        bases = [
            float(g.setdefault("initial_lr_multiplier", float(g["lr_multiplier"])))
            for g in optimizer.param_groups
        ]
        self.shadow = torch.optim.SGD(
            [{"params": [p], "lr": base} for p, base in zip(placeholders, bases)], lr=1.0
        )
        self.scheduler = scheduler(self.shadow)
        if getattr(self.scheduler, "cycle_momentum", False):
            warnings.warn(
                f"StepSizeSchedule applies the learning rates of {type(self.scheduler).__name__}, "
                "not its momentum cycle (cycle_momentum=True moves the shadow optimizer's "
                f"momentum, not {type(optimizer).__name__}'s): pass cycle_momentum=False",
                stacklevel=2,
            )
        self._copy()

    def __getattr__(self, name: str) -> Any:
        # total_steps / set_total_steps and other attributes of the wrapped scheduler
        if name in ("scheduler", "optimizer", "shadow"):
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def _copy(self) -> None:
        for group, shadow in zip(self.optimizer.param_groups, self.shadow.param_groups):
            group["lr_multiplier"] = float(shadow["lr"])
            group["lr"] = group["step_size"] * group["lr_multiplier"]

    def step(self, *args: Any, **kwargs: Any) -> None:
        """The scheduler's ``step`` with these arguments (none for torch's; timm's takes the
        epoch), then the multipliers copied."""
        # the shadow's placeholders have no gradient, so this moves nothing; it tells the torch
        # scheduler that an optimizer step came first (otherwise it warns about the order)
        self.shadow.step()
        self.scheduler.step(*args, **kwargs)
        self._copy()

    def step_update(self, *args: Any, **kwargs: Any) -> None:
        """timm's per-update step (``step_update(num_updates)``), then the multipliers copied."""
        self.scheduler.step_update(*args, **kwargs)
        self._copy()

    def set_total_steps(self, total_steps: int) -> None:
        self.scheduler.set_total_steps(total_steps)
        self._copy()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        # the shadow groups' lr is where the schedule stands: a torch scheduler's own state does
        # not hold it, so without it a resumed run would restart the schedule
        shadow_lrs = [float(g["lr"]) for g in self.shadow.param_groups]
        return {"scheduler": self.scheduler.state_dict(), "shadow_lrs": shadow_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group, lr in zip(self.shadow.param_groups, state_dict.get("shadow_lrs", [])):
            group["lr"] = lr
        # after the saved learning rates: a scheduler that recomputes them when it loads
        # (WarmupCosineLR over a run extended past the checkpoint's length) has the last word
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self._copy()
