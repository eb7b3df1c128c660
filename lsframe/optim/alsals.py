"""ALSALS: Adam's momentum direction inside a smoothed Armijo condition."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.adam_moments import adam_directions, check_adam_group, next_moment_step
from lsframe.optim.rules import (
    ActiveGroup,
    Direction,
    SmoothedArmijo,
    armijo_verdict,
    finite_difference_slope,
    zero_averages,
)
from lsframe.validation import as_tuple, check_choice, check_open_unit, check_positive


class ALSALS(LineSearchOptimizer):
    """Armijo line search on Adam's own update direction, with smoothed sides (ALSALS).

    Kenneweg, Kenneweg, Fumagalli, Hammer, "Improving Line Search Methods for Large Scale
    Neural Network Training", 2024 (P1). With ``d = m̂ ⊙ P`` (Adam's update) each step computes
    the exact inner product ``G = ⟨g, d⟩``, averages ``Ḡ ← β Ḡ + (1 − β) G``, starts from
    ``η_prev · growth`` and backtracks ``η ← β_b η`` until

        β D̄ + (1 − β)(f(x) − f(x − η d)) ≥ c' · η · Ḡ,    c' = c if Ḡ > 0 else 1/c,

    commits ``D̄`` and steps to ``x − η d`` (the accepted trial point is the step).

    ``slope="finite_difference"`` estimates ``G`` as the reference code does,
    ``(f(x) − f(x − h·d)) / h`` with ``h = probe``
    (:func:`~lsframe.optim.rules.finite_difference_slope`): one extra forward-only evaluation
    per step, counted in ``state["line_search"]["forwards"]``;
    when that probe's loss is not finite, the step uses the exact ``G``. With float32 parameters
    and ``h = 5e-9`` the estimate is mostly rounding noise unless ``G`` is large (see that
    function), hence the exact default.

    A failed search (all ``max_backtracks`` trials rejected) leaves the parameters at ``x``; the
    step size is then ``max(min_step_size, β_b · last η tried)``, and the next search starts
    from it times ``growth``.

    Differences from the reference code: ``G`` is the exact inner product by default; the
    finite-difference option does not retry a zero estimate with a 10× larger probe (the code
    does, in an unbounded loop), so it costs exactly one forward per step; the code stops
    backtracking below η = 5e-9 and always steps at the last η tried, even when the condition
    never held, where lsframe stays at ``x`` after ``max_backtracks`` rejected trials and floors
    the step size only if asked (``min_step_size=5e-9`` floors it as the code does, without the
    step); no parameter copies (in-place trial moves; bf16/fp16 parameters: from a copy of ``x``).

    Args:
        params: Parameters or param groups.
        lr: Initial step size η0. Default: 1.0.
        betas: Adam's (β1, β2). Default: (0.9, 0.999).
        eps: Adam's ε. Default: 1e-8.
        c: Armijo constant; P1 uses 0.3 for NLP and 0.5 for images. Default: 0.3.
        beta_b: Backtracking factor. Default: 0.9.
        beta: Averaging rate of D̄ and Ḡ. Default: 0.99.
        growth: Each search starts from ``η_prev · growth``. Default: 1/0.999.
        max_backtracks: Most trials per step. Default: 100.
        weight_decay: Decoupled weight decay. Default: 0.
        slope: ``"exact"`` (``⟨g, d⟩``) or ``"finite_difference"`` (the reference code's
            estimate, one extra forward per step). Default: ``"exact"``.
        probe: ``h`` of the finite difference (P1's code: 5e-9). Default: 5e-9.
        min_step_size: Floor on the step size after a failed search (0: off). Default: 0.
    """

    ADAM_MOMENTS = True

    ONE_SEARCH_KEYS = (
        *LineSearchOptimizer.ONE_SEARCH_KEYS,
        "c",
        "beta",
        "beta_b",
        "growth",
        "slope",
        "probe",
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        c: float = 0.3,
        beta_b: float = 0.9,
        beta: float = 0.99,
        growth: float = 1 / 0.999,
        max_backtracks: int = 100,
        weight_decay: float = 0.0,
        slope: Literal["exact", "finite_difference"] = "exact",
        probe: float = 5e-9,
        min_step_size: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=as_tuple(betas),
            eps=eps,
            c=c,
            beta_b=beta_b,
            beta=beta,
            growth=growth,
            max_backtracks=max_backtracks,
            weight_decay=weight_decay,
            slope=slope,
            probe=probe,
            min_step_size=min_step_size,
        )
        super().__init__(params, defaults)

    def _initial_search_state(self) -> dict[str, Any]:
        return {**super()._initial_search_state(), "smoothing": {"joint": zero_averages()}}

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_open_unit(c=group["c"], beta_b=group["beta_b"], beta=group["beta"])
        check_adam_group(group)
        check_positive(growth=group["growth"], probe=group["probe"])
        check_choice("slope", group["slope"], ("exact", "finite_difference"))

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        direction = adam_directions(self.state, groups, next_moment_step(state)).update()
        c = self.shared("c")
        smoothing = SmoothedArmijo(self.shared("beta"), c, flip_c=1.0 / c)
        averages = state["smoothing"]["joint"]
        move = lambda a: direction.move(groups, [a] * len(groups))  # noqa: E731
        slope = self._slope(loss, forward, groups, direction, move)
        avg_slope = smoothing.update_slope(averages, "slope", slope)
        result = self._search(
            forward,
            move,
            self.param_groups[0]["step_size"] * self.shared("growth"),
            armijo_verdict(loss, slope, c, self.shared("beta_b"), smoothing, averages, avg_slope),
            slope=avg_slope,
            averages=averages,
        )
        self._set_step_sizes(result.step_size)

    def _slope(
        self,
        loss: float,
        forward: Callable[[], Tensor],
        groups: list[ActiveGroup],
        direction: Direction,
        move: Callable[[float], None],
    ) -> float:
        """``G`` of this step: exact, or the finite-difference estimate (exact if not finite)."""
        if self.shared("slope") == "finite_difference":
            estimate = finite_difference_slope(loss, forward, move, self.shared("probe"))
            if math.isfinite(estimate):
                return estimate
        return direction.slope(groups)
