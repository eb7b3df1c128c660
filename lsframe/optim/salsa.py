"""SaLSA: smoothed Armijo line search whose searches are amortised once the step size is stable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lsframe.optim._linesearch import (
    ActiveGroup,
    Direction,
    SmoothedArmijo,
    backtrack,
    check_open_unit,
    check_positive,
)
from lsframe.optim.adam_sls import AdamSLS


class SaLSA(AdamSLS):
    """Stable Armijo Line Search Adaptation (SaLSA).

    Kenneweg, Kenneweg, Fumagalli, Hammer, "No learning rates needed: Introducing SaLSA",
    IJCNN 2024; the successor of ALSALS (P1). The rule, as in the authors' package
    (``salsa-optimizer`` 0.1.0):

    * every step updates Adam's moments; the candidate step size is ``growth · η_last``, where
      ``η_last`` changes only on search steps;
    * a step searches when ``t < 10`` or when at least ``gap`` steps passed since the last
      search, ``gap = min(max_gap, 1/(r − 1 + 1e-8))`` with ``r = EMA_0.9(η)/EMA_0.99(η)``
      (inverted if < 1; both averages start at 1e-8 and move on search steps only);
    * a search step averages ``Ḡ ← β3 Ḡ + (1 − β3) Σ g² ⊙ P`` (``use_mv``: ``⟨g, P ⊙ m̂⟩``),
      tries ``x − η P ⊙ g`` (``use_mv``: ``x − η P ⊙ m̂``), accepts when
      ``β3 D̄ + (1 − β3)(f(x) − f(trial)) ≥ c η Ḡ`` or when the decrease is exactly 0, else
      ``η ← beta_b η``; the accepted trial point is the step. No search happens when the loss is
      0 or ``Ḡ < 1e-8``: the step is then Adam's ``x − η P ⊙ m̂``;
    * a step without search is ``x ← x − growth · η_last · P ⊙ m̂`` with no extra forward.

    Intentional differences from the package (each an improvement, none changes the rule):
    no parameter copies (trial points are in-place moves); a failed search (all
    ``max_backtracks`` trials rejected) returns the parameters to ``x`` instead of leaving them at
    the last trial; the no-search branch for a zero loss skips the package's unused forward; a
    non-finite loss or gradient is a rejected step instead of a ValueError; param groups, ``lr``
    and ``lr_multiplier`` work; state is in ``state_dict``; the random state is the caller's
    (the package reseeds from the wall clock). Adam's bias correction is ``1 − β^t``; the
    package's is one step ahead (``1 − β^(t+1)``): ``bias_correction_offset=1`` reproduces it.

    Args:
        params: Parameters or param groups.
        lr: Initial step size η0. Default: 1.0.
        c: Armijo constant. Default: 0.5.
        betas: (β1, β2, β3): Adam's moments and the Armijo averages. Default: (0.9, 0.999, 0.9).
        eps: Adam's ε. Default: 1e-8.
        beta_b: Backtracking factor. Default: 0.8.
        growth: Candidate step size ``growth · η_last``. Default: 1.1.
        max_gap: Longest gap between searches. Default: 10.
        warmup_searches: Search on every step while ``t < warmup_searches``. Default: 10.
        use_mv: Search along Adam's momentum direction. Default: False.
        amortize: Amortise searches (False: search every step). Default: True.
        max_backtracks: Most trials per search. Default: 100.
        bias_correction_offset: 1 reproduces the package's bias correction. Default: 0.
        weight_decay: Decoupled weight decay. Default: 0.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        c: float = 0.5,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        eps: float = 1e-8,
        beta_b: float = 0.8,
        growth: float = 1.1,
        max_gap: int = 10,
        warmup_searches: int = 10,
        use_mv: bool = False,
        amortize: bool = True,
        max_backtracks: int = 100,
        bias_correction_offset: int = 0,
        weight_decay: float = 0.0,
    ) -> None:
        if len(betas) != 3:
            raise ValueError(f"betas must be (beta1, beta2, beta3), got {betas!r}")
        # c, beta_b, betas[0:2] and eps are checked by AdamSLS
        check_open_unit(**{"betas[2]": betas[2]})
        check_positive(growth=growth, max_gap=max_gap)
        if warmup_searches < 0 or bias_correction_offset < 0:
            raise ValueError(
                "warmup_searches and bias_correction_offset must be >= 0, got "
                f"{warmup_searches} and {bias_correction_offset}"
            )
        super().__init__(
            params,
            lr=lr,
            betas=betas[:2],
            eps=eps,
            c=c,
            beta_b=beta_b,
            max_backtracks=max_backtracks,
            weight_decay=weight_decay,
        )
        self.smoothing = SmoothedArmijo(betas[2], c)
        self.growth, self.max_gap, self.warmup_searches = growth, max_gap, warmup_searches
        self.use_mv, self.amortize = use_mv, amortize
        self.bias_correction_offset = bias_correction_offset
        self.search_state.update(
            last_step_size=lr,
            steps_since_search=100,
            slow_step_size=1e-8,
            fast_step_size=1e-8,
            avg_decrease=0.0,
            avg_slope=0.0,
        )

    def search_gap(self) -> float:
        """Steps wanted between searches, from how fast the step size still changes."""
        state = self.search_state
        ratio = state["fast_step_size"] / state["slow_step_size"]
        ratio = 1.0 / ratio if ratio < 1 else ratio
        return min(self.max_gap, 1.0 / (ratio - 1.0 + 1e-8))

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        gap = self.search_gap()
        state["steps_since_search"] += 1
        denominators, exp_avgs, bc1 = self._adam_moments(groups, self.bias_correction_offset)
        momentum = Direction(exp_avgs, denominators, scale=1.0 / bc1)
        eta = self.growth * state["last_step_size"]
        search = (
            not self.amortize
            or state["step"] < self.warmup_searches
            or state["steps_since_search"] >= gap
        )
        if not search:
            momentum.move(groups, [eta] * len(groups))
            self._set_step_size(eta)
            return
        state["steps_since_search"] = 0
        trial = momentum if self.use_mv else Direction([a.grads for a in groups], denominators)
        avg_slope = self.smoothing.update_slope(state, "avg_slope", trial.slope(groups))
        if loss != 0 and avg_slope >= 1e-8:
            eta = self._search(loss, forward, groups, trial, eta, avg_slope)
        else:
            momentum.move(groups, [eta] * len(groups))
        state["last_step_size"] = eta
        state["slow_step_size"] = 0.99 * state["slow_step_size"] + 0.01 * eta
        state["fast_step_size"] = 0.9 * state["fast_step_size"] + 0.1 * eta
        self._set_step_size(eta)

    def _search(
        self,
        loss: float,
        forward: Callable[[], Tensor],
        groups: list[ActiveGroup],
        trial: Direction,
        eta: float,
        avg_slope: float,
    ) -> float:
        state, smoothing = self.search_state, self.smoothing

        def verdict(trial_loss: float, step_size: float) -> bool | float:
            decrease = loss - trial_loss
            if decrease == 0:
                return True
            if decrease != decrease:
                return step_size * self.beta_b
            if smoothing.accepts(state["avg_decrease"], decrease, step_size, avg_slope):
                state["avg_decrease"] = smoothing.smoothed_decrease(state["avg_decrease"], decrease)
                return True
            return step_size * self.beta_b

        result = backtrack(
            forward,
            lambda a: trial.move(groups, [a] * len(groups)),
            eta,
            verdict,
            self.max_backtracks,
        )
        state["searches"] += 1
        state["failed_searches"] += not result.accepted
        return result.step_size

    def _set_step_size(self, eta: float) -> None:
        for group in self.param_groups:
            group["step_size"] = eta
