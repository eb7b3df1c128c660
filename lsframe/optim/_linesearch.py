"""The machinery every line-search optimizer shares: closures, in-place trial moves, backtracking.

A line-search optimizer is a :class:`torch.optim.Optimizer` whose ``step`` takes the closure
contract of lsframe, ``closure(backward: bool = True) -> Tensor``, and optionally a separate
forward-only callable (Lightning's precision plugin wraps the closure and calls it without
arguments, so :class:`lsframe.modules.ClosureModule` passes forward-only trials as ``forward``).

Design, shared by all subclasses:

* **Direction and step rule are separate.** A :class:`Direction` says how to move the parameters
  (``x ← x − a·d`` with ``d = num / den · scale``, per group); the step rules in this file
  (:func:`backtrack`, :func:`armijo`, :class:`SmoothedArmijo`) decide the step size from losses.
* **No parameter copies.** Trial points are reached by moving the parameters in place along the
  direction and leaving them by the opposite move; a rejected search returns the parameters to
  ``x`` up to float rounding (one add and one subtract per coordinate, |error| ≤ 1 ulp of ``x``).
* **Step sizes live in the groups.** Each group keeps ``step_size`` (the searched η) and
  ``lr_multiplier`` (default 1; a schedule acts here, see :class:`StepSizeSchedule`), and
  ``lr = step_size · lr_multiplier`` is written after every step so LR monitors see the step
  actually taken. Writing ``lr`` from outside (e.g. a torch scheduler attached directly) is
  detected at the next step and is an error, never a silent overwrite of the search.
* **Robustness.** A non-finite loss at ``x`` or a non-finite gradient is a rejected step (no
  update, counted in ``state["line_search"]["rejected_steps"]``); a non-finite trial loss is a
  rejected trial; every search is bounded by ``max_backtracks``.
* **Distributed.** Decisions use only the losses returned by the closures and global sums of the
  gradients. lsframe's module averages losses across ranks before returning them, and DDP makes the
  gradients identical on all ranks, so every rank takes the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lsframe.optim._functional import all_finite
from lsframe.optim._sharded import local, reduce_sums

Closure = Callable[..., Tensor]


def loss_value(loss: Tensor | float) -> float:
    """A closure's loss as a Python float."""
    return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)


@dataclass
class ActiveGroup:
    """One param group restricted to the parameters that have a gradient this step."""

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]

    @property
    def multiplier(self) -> float:
        return float(self.group["lr_multiplier"])


@dataclass
class Direction:
    """Per-group direction ``d_g = scale · num_g / den_g`` (``den`` None means 1)."""

    num: list[list[Tensor]]
    den: list[list[Tensor]] | None = None
    scale: float = 1.0

    def move(self, groups: list[ActiveGroup], amounts: list[float]) -> None:
        """``x_g ← x_g − amounts[g] · multiplier_g · d_g`` in place, one foreach op per group."""
        for i, (active, amount) in enumerate(zip(groups, amounts)):
            alpha = -amount * active.multiplier * self.scale
            if alpha == 0.0 or not active.params:
                continue
            if self.den is None:
                torch._foreach_add_(active.params, self.num[i], alpha=alpha)
            else:
                torch._foreach_addcdiv_(active.params, self.num[i], self.den[i], value=alpha)

    def slope(self, groups: list[ActiveGroup], which: Iterable[int] | None = None) -> float:
        """``Σ_g multiplier_g ⟨g_g, d_g⟩``: minus the directional derivative of a move by ``d``."""
        total = 0.0
        for i in range(len(groups)) if which is None else which:
            active = groups[i]
            if not active.params:
                continue
            dots = []
            for j, grad in enumerate(active.grads):
                d = self.num[i][j] if self.den is None else self.num[i][j] / self.den[i][j]
                g, d = local(grad).reshape(-1).float(), local(d).reshape(-1).float()
                dots.append(torch.dot(g, d))
            dots = reduce_sums(dots, active.grads)  # sharded parameters: over all pieces
            total += active.multiplier * self.scale * float(torch.stack(dots).sum())
        return total


def armijo(decrease: float, step_size: float, slope: float, c: float) -> bool:
    """Armijo's sufficient decrease ``f(x) − f(x − η d) ≥ c · η · ⟨g, d⟩``."""
    return decrease >= c * step_size * slope


class SmoothedArmijo:
    """Armijo on exponential moving averages of the decrease and of the slope (P0 smoothing, P1).

    Accept ``η`` when ``β·D̄ + (1 − β)·Δ(η) ≥ c'·η·Ḡ``, where ``Ḡ`` already includes this step's
    slope and ``D̄`` is the average of the decreases of accepted steps; ``c' = c`` when ``Ḡ > 0``
    and ``c' = flip_c`` otherwise (``1/c`` in ALSALS; ``None`` keeps ``c``).
    """

    def __init__(self, beta: float, c: float, flip_c: float | None = None) -> None:
        self.beta = beta
        self.c = c
        self.flip_c = flip_c

    def update_slope(self, state: dict[str, Any], key: str, slope: float) -> float:
        state[key] = self.beta * state.get(key, 0.0) + (1 - self.beta) * slope
        return state[key]

    def smoothed_decrease(self, avg_decrease: float, decrease: float) -> float:
        return self.beta * avg_decrease + (1 - self.beta) * decrease

    def accepts(
        self, avg_decrease: float, decrease: float, step_size: float, avg_slope: float
    ) -> bool:
        c = self.c if avg_slope > 0 or self.flip_c is None else self.flip_c
        return self.smoothed_decrease(avg_decrease, decrease) >= c * step_size * avg_slope


@dataclass
class SearchResult:
    step_size: float
    trial_loss: float | None
    accepted: bool
    trials: int


def backtrack(
    forward: Callable[[], Tensor],
    move_to: Callable[[float], None],
    step_size: float,
    verdict: Callable[[float, float], bool | float],
    max_backtracks: int,
) -> SearchResult:
    """Bounded search over trial points ``x − η d``, moving the parameters in place.

    Args:
        forward: Forward-only loss at the current parameters.
        move_to: ``move_to(a)`` moves the parameters by ``−a·d`` from where they are.
        step_size: First η to try.
        verdict: ``verdict(trial_loss, η)`` returns True to accept η, else the next η to try.
            A non-finite trial loss is passed on too; verdicts must reject it.
        max_backtracks: Most trials. When all fail the parameters are moved back to ``x``.

    Returns:
        The accepted η (parameters left at ``x − η d``), or on failure the last η proposed
        (parameters back at ``x``).
    """
    at = 0.0
    for trial in range(1, max_backtracks + 1):
        move_to(step_size - at)
        at = step_size
        trial_loss = loss_value(forward())
        outcome = verdict(trial_loss, step_size)
        if outcome is True:
            return SearchResult(step_size, trial_loss, True, trial)
        step_size = float(outcome)
    move_to(-at)
    return SearchResult(step_size, None, False, max_backtracks)


def check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{key} must be a positive finite number, got {value}")


def check_open_unit(**values: float) -> None:
    for key, value in values.items():
        if not 0.0 < value < 1.0:
            raise ValueError(f"{key} must be in (0, 1), got {value}")


def check_unit(**values: float) -> None:
    for key, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {value}")


class LineSearchOptimizer(Optimizer):
    """Base class: the step protocol, group bookkeeping and state shared by the family.

    Subclasses implement :meth:`_line_search_step`. Per-step counters live in
    ``self.state["line_search"]`` (saved by ``state_dict``): ``step``, ``forwards`` (trial
    evaluations), ``searches``, ``failed_searches``, ``rejected_steps``.
    """

    # norms/inner products over whole parameters: refused under FSDP1 (flat slices)
    reduces_over_parameters = True

    accepts_forward_closure = True

    def __init__(self, params: Any, defaults: dict[str, Any], max_backtracks: int) -> None:
        check_positive(lr=defaults["lr"])
        if defaults.get("weight_decay", 0.0) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {defaults['weight_decay']}")
        if not isinstance(max_backtracks, int) or max_backtracks < 1:
            raise ValueError(f"max_backtracks must be an integer >= 1, got {max_backtracks}")
        defaults = {"weight_decay": 0.0, "lr_multiplier": 1.0, **defaults}
        super().__init__(params, defaults)
        self.max_backtracks = max_backtracks
        for group in self.param_groups:
            group.setdefault("step_size", group["lr"])
            group["lr"] = group["step_size"] * group["lr_multiplier"]
        self.state["line_search"] = {
            "step": 0,
            "forwards": 0,
            "searches": 0,
            "failed_searches": 0,
            "rejected_steps": 0,
        }

    @property
    def search_state(self) -> dict[str, Any]:
        return self.state["line_search"]

    def _check_lr_untouched(self) -> None:
        for i, group in enumerate(self.param_groups):
            expected = group["step_size"] * group["lr_multiplier"]
            if not math.isclose(group["lr"], expected, rel_tol=1e-12, abs_tol=0.0):
                raise RuntimeError(
                    f"{type(self).__name__}: param group {i} ('{group.get('name', i)}') has "
                    f"lr={group['lr']!r} but its searched step size times lr_multiplier is "
                    f"{expected!r}: something (a torch LR scheduler?) wrote 'lr' directly. "
                    "Line-search optimizers search their own step size; schedule the "
                    "'lr_multiplier' instead (lsframe.optim.StepSizeSchedule)."
                )

    def _write_lr(self) -> None:
        for group in self.param_groups:
            group["lr"] = group["step_size"] * group["lr_multiplier"]

    def _active_groups(self) -> list[ActiveGroup]:
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            groups.append(ActiveGroup(group, params, [p.grad for p in params]))
        return groups

    @torch.no_grad()
    def step(
        self, closure: Closure | None = None, forward: Callable[[], Tensor] | None = None
    ) -> Tensor:
        """One step: one backward evaluation, then forward-only trials as the rule needs.

        Args:
            closure: ``closure(backward=True)`` zeroes the gradients, computes the loss at the
                current parameters and back-propagates it, and returns the loss.
            forward: Forward-only loss at the current parameters, no graph. Default:
                ``closure(backward=False)``.

        Returns:
            The loss at the parameters before the step.
        """
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (line search)")
        self._check_lr_untouched()
        if forward is None:
            forward = lambda: closure(backward=False)  # noqa: E731
        state = self.search_state
        counted = self._counting(forward, state)
        with torch.enable_grad():
            loss = closure()
        state["step"] += 1
        value = loss_value(loss)
        groups = self._active_groups()
        grads = [g for active in groups for g in active.grads]
        if not math.isfinite(value) or not grads or not all_finite(grads):
            state["rejected_steps"] += 1
            self._write_lr()
            return loss
        self._line_search_step(value, counted, groups)
        self._apply_weight_decay(groups)
        self._write_lr()
        return loss

    @staticmethod
    def _counting(forward: Callable[[], Tensor], state: dict[str, Any]) -> Callable[[], Tensor]:
        def counted() -> Tensor:
            state["forwards"] += 1
            return forward()

        return counted

    def _apply_weight_decay(self, groups: list[ActiveGroup]) -> None:
        """Decoupled weight decay ``x ← x · (1 − lr · λ)`` with this step's lr (after the search)."""
        for active in groups:
            decay = active.group["weight_decay"]
            if decay and active.params:
                rate = active.group["step_size"] * active.multiplier * decay
                torch._foreach_mul_(active.params, 1.0 - rate)

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        raise NotImplementedError
