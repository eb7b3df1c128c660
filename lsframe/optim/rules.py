"""Step-size rules and trial moves: the pieces every line search composes.

* A :class:`Direction` says how to move the parameters (``x ← x − a·d`` with
  ``d = num / den · scale``, per group) and gives the slope ``⟨g, d⟩`` the conditions need.
* Trial points are reached by moving the parameters in place along the direction and leaving
  them by the opposite move (no parameter copies). Each trial moves from the last one, so a
  failed search returns the parameters to ``x`` up to one rounding per trial and one for the
  way back: measured, about 8 ulps of ``x`` after 100 rejected trials from η0 = 1 in
  float32, about 670 from η0 = 100. In bfloat16 or float16 that drift is larger than a
  fine-tune's updates (two bf16 ulps of half the entries after 5 rejected trials), so there
  :func:`backtrack` places every trial from a copy of ``x`` instead (``place``; the line
  searches keep one, in the parameters' precision, for the step's duration): each trial point
  is ``x − η·d`` rounded once, and a failed search leaves ``x`` exactly.
* :func:`finite_difference_slope` estimates the slope from one extra forward-only evaluation
  (P1's authors' code does; lsframe's optimizers use the exact ``⟨g, d⟩`` unless told otherwise).
* The conditions (:func:`armijo`, :class:`SmoothedArmijo`) decide from losses; a verdict turns a
  condition into a :class:`Decision` (accept, or the next step size to try), and
  :func:`backtrack` runs the bounded search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lsframe.optim._functional import inner_product


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
        """``Σ_g multiplier_g · scale · ⟨g_g, d_g⟩`` over the groups in ``which`` (default all):
        minus the directional derivative of a move by ``d``.

        Each group's inner product is accumulated on the device (float32 at least, float64 for
        float64 models; over whole tensors when sharded, see :func:`inner_product`); the groups'
        sums come to the host together, in one sync per call, and are weighted there.
        """
        indices = [i for i in (range(len(groups)) if which is None else which) if groups[i].params]
        if not indices:
            return 0.0
        sums = [
            inner_product(groups[i].grads, self.num[i], None if self.den is None else self.den[i])
            for i in indices
        ]
        dtype = torch.float64 if any(s.dtype == torch.float64 for s in sums) else torch.float32
        device = sums[0].device
        values = torch.stack([s.to(device=device, dtype=dtype) for s in sums]).tolist()
        slope = sum(groups[i].multiplier * self.scale * value for i, value in zip(indices, values))
        if not math.isfinite(slope):
            raise NonFiniteSlope(slope)
        return slope


class NonFiniteSlope(ArithmeticError):
    """``⟨g, d⟩`` is infinite or NaN although the gradients are finite (an infinite entry of the
    direction): raised before any average of the rule moves or any trial is taken, so the
    optimizer rejects the step with the parameters at ``x``."""


def finite_difference_slope(
    loss: float,
    forward: Callable[[], Tensor],
    move_to: Callable[[float], None],
    probe: float,
) -> float:
    """Estimate of the slope ``⟨g, d⟩`` from one forward-only evaluation (P1's authors' code).

    ``(f(x) − f(x − h·d)) / h`` with ``h = probe``: a backward difference along the direction,
    probed on the side the trial points lie. ``move_to`` is :func:`backtrack`'s (``move_to(a)``
    moves the parameters by ``−a·d``); the parameters go to ``x − h·d`` and come back to ``x``
    (up to float rounding), so a search can start from ``x`` as usual. Returns NaN or ±inf when
    the probe loss is not finite (the caller decides what to use instead).

    Accuracy: the truncation error is ``(h/2)·dᵀ∇²f·d`` (exactly that on a quadratic), the rounding
    error about ``ε·|f|/h`` plus the rounding of ``x − h·d`` itself; with P1's ``h = 5e-9`` and
    float32 parameters and losses (ε ≈ 6e-8) the rounding dominates unless ``⟨g, d⟩`` is large
    (a model with many parameters), which is why lsframe's default is the exact inner product.
    """
    move_to(probe)
    try:
        probe_loss = loss_value(forward())
    finally:
        move_to(-probe)
    return (loss - probe_loss) / probe


def armijo(decrease: float, step_size: float, slope: float, c: float) -> bool:
    """Armijo's sufficient decrease ``f(x) − f(x − η d) ≥ c · η · ⟨g, d⟩``."""
    return decrease >= c * step_size * slope


def zero_averages() -> dict[str, float]:
    """The averages of :class:`SmoothedArmijo` before the first step."""
    return {"decrease": 0.0, "slope": 0.0}


class SmoothedArmijo:
    """Armijo on exponential moving averages of the decrease and of the slope (P0 smoothing, P1).

    Accept ``η`` when ``β·D̄ + (1 − β)·Δ(η) ≥ c'·η·Ḡ``, where ``Ḡ`` already includes this step's
    slope and ``D̄`` is the average of the decreases of accepted steps; ``c' = c`` when ``Ḡ > 0``
    and ``c' = flip_c`` otherwise (``1/c`` in ALSALS; ``None`` keeps ``c``). The averages live in
    a plain dict of the optimizer's state (keys ``decrease`` and ``slope`` unless told otherwise).
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


@dataclass(frozen=True)
class Decision:
    """A verdict on one trial: accept its step size, or try ``next_step_size`` instead."""

    accept: bool
    next_step_size: float = 0.0

    @classmethod
    def accepted(cls) -> Decision:
        return cls(True)

    @classmethod
    def retry(cls, step_size: float) -> Decision:
        return cls(False, step_size)


Verdict = Callable[[float, float], Decision]


def armijo_verdict(
    loss: float,
    slope: float,
    c: float,
    beta_b: float,
    smoothing: SmoothedArmijo | None = None,
    averages: dict[str, float] | None = None,
    avg_slope: float = 0.0,
    accept_zero_decrease: bool = False,
) -> Verdict:
    """Armijo (or, with ``smoothing``, its smoothed form) with backtracking ``η ← beta_b · η``.

    With ``smoothing``, ``averages["decrease"]`` is ``D̄`` and is updated when a trial is
    accepted; ``avg_slope`` is ``Ḡ`` (already updated by the caller). A NaN or infinite trial
    loss is a rejected trial. ``accept_zero_decrease`` accepts a trial whose loss equals
    ``f(x)`` exactly (the SaLSA package's rule).
    """

    def verdict(trial_loss: float, eta: float) -> Decision:
        if not math.isfinite(trial_loss):  # −inf too: its infinite decrease passes any test
            return Decision.retry(eta * beta_b)
        decrease = loss - trial_loss
        if accept_zero_decrease and decrease == 0:
            return Decision.accepted()
        if smoothing is None:
            ok = armijo(decrease, eta, slope, c)
        else:
            assert averages is not None
            ok = smoothing.accepts(averages["decrease"], decrease, eta, avg_slope)
            if ok:
                averages["decrease"] = smoothing.smoothed_decrease(averages["decrease"], decrease)
        return Decision.accepted() if ok else Decision.retry(eta * beta_b)

    return verdict


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
    verdict: Verdict,
    max_backtracks: int,
    place: Callable[[float], None] | None = None,
) -> SearchResult:
    """Bounded search over trial points ``x − η d``, moving the parameters in place.

    Args:
        forward: Forward-only loss at the current parameters.
        move_to: ``move_to(a)`` moves the parameters by ``−a·d`` from where they are.
        step_size: First η to try.
        verdict: ``verdict(trial_loss, η)`` decides; a non-finite trial loss is passed on too,
            and verdicts must reject it.
        max_backtracks: Most trials. When all fail the parameters are moved back to ``x``.
        place: ``place(a)`` puts the parameters at ``x − a·d`` (from a copy of ``x``); used
            instead of ``move_to`` when given.

    Returns:
        The accepted η (parameters left at ``x − η d``), or on failure the last η proposed
        (parameters back at ``x``).

    An exception during a trial (a failing batch, Ctrl-C in a notebook) moves the parameters
    back to ``x`` before it propagates, so neither the model nor a checkpoint saved on the
    exception holds a trial point that belongs to no step. The optimizer's state (moments,
    counters) may already hold the interrupted step's update: a resume repeats that batch with
    it counted once more.
    """
    at = 0.0  # the parameters are at x − at·d

    def go(a: float) -> None:
        nonlocal at
        if place is not None:
            place(a)
        else:
            move_to(a - at)
        at = a

    try:
        for trial in range(1, max_backtracks + 1):
            go(step_size)
            trial_loss = loss_value(forward())
            decision = verdict(trial_loss, step_size)
            if decision.accept:
                return SearchResult(step_size, trial_loss, True, trial)
            step_size = decision.next_step_size
    except BaseException:
        go(0.0)
        raise
    go(0.0)
    return SearchResult(step_size, None, False, max_backtracks)


def reset_step_size(
    step_size: float, option: int, gamma: float, n_batches_per_epoch: int, initial: float
) -> float:
    """The step size a search starts from (Vaswani et al. 2019, Alg. 2, "reset").

    Option 0 keeps the previous η, option 1 grows it by ``γ^(1/n)`` per step (so it can double
    every ``n`` steps with ``γ = 2``), option 2 restarts from the initial η.
    """
    if option == 0:
        return step_size
    if option == 1:
        return step_size * gamma ** (1.0 / n_batches_per_epoch)
    return initial


def sufficient_decrease_ratio(decrease: float, step_size: float, slope: float) -> float | None:
    """``D / (η · s)``: the decrease the rule tests at the accepted trial point per unit of the
    decrease its right-hand side scales with, so that a search accepts when it is ``≥ c`` (with
    ``s < 0``, where ALSALS's condition takes ``c' = 1/c``, dividing by ``η · s`` turns it round:
    an accepted search then reads ``≤ 1/c``).

    ``D`` and ``s`` are what the rule's condition compares, passed to ``_search`` by the rule:
    ``f(x) − f(x − η d)`` and ``⟨g, d⟩`` for the Armijo and Goldstein conditions of SGDSLS,
    AdamSLS and PLASLS without smoothing (Goldstein also asks ``≤ 1 − c``); the moving averages
    ``D̄`` (with this trial's decrease) and ``Ḡ`` for the smoothed Armijo condition of
    AdamSLS/PLASLS with ``smooth``, ALSALS and SaLSA. (One step's decrease over ``Ḡ`` would
    read ``1/(1 − β)`` times too large while the averages fill from 0.) None when ``η · s`` is
    0 or not finite. Pure Python on losses the search already read: no host sync.
    """
    scale = step_size * slope
    if scale == 0 or not math.isfinite(scale):
        return None
    return decrease / scale
