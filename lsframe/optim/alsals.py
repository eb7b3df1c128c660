"""ALSALS: Adam's momentum direction inside a smoothed Armijo condition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.adam_moments import adam_directions, check_adam_group, next_moment_step
from lsframe.optim.rules import ActiveGroup, SmoothedArmijo, armijo_verdict
from lsframe.validation import check_open_unit, check_positive


class ALSALS(LineSearchOptimizer):
    """Armijo line search on Adam's own update direction, with smoothed sides (ALSALS).

    Kenneweg, Kenneweg, Fumagalli, Hammer, "Improving Line Search Methods for Large Scale
    Neural Network Training", 2024 (P1). With ``d = m̂ ⊙ P`` (Adam's update) each step computes
    the exact inner product ``G = ⟨g, d⟩``, averages ``Ḡ ← β Ḡ + (1 − β) G``, starts from
    ``η_prev · growth`` and backtracks ``η ← β_b η`` until

        β D̄ + (1 − β)(f(x) − f(x − η d)) ≥ c' · η · Ḡ,    c' = c if Ḡ > 0 else 1/c,

    commits ``D̄`` and steps to ``x − η d`` (the accepted trial point is the step).

    Differences from the reference code: ``G`` is the exact inner product (the code estimates it
    by a finite difference with probe 5e-9); no parameter copies (in-place trial moves).

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
    """

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
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            c=c,
            beta_b=beta_b,
            beta=beta,
            growth=growth,
            max_backtracks=max_backtracks,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_open_unit(c=group["c"], beta_b=group["beta_b"], beta=group["beta"])
        check_adam_group(group)
        check_positive(growth=group["growth"])

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        direction = adam_directions(self.state, groups, next_moment_step(state)).update()
        c = self.shared("c")
        smoothing = SmoothedArmijo(self.shared("beta"), c, flip_c=1.0 / c)
        averages = state.setdefault("smoothing", {}).setdefault(
            "joint", {"decrease": 0.0, "slope": 0.0}
        )
        slope = direction.slope(groups)
        avg_slope = smoothing.update_slope(averages, "slope", slope)
        result = self._search(
            forward,
            lambda a: direction.move(groups, [a] * len(groups)),
            self.param_groups[0]["step_size"] * self.shared("growth"),
            armijo_verdict(loss, slope, c, self.shared("beta_b"), smoothing, averages, avg_slope),
        )
        self._set_step_sizes(result.step_size)
