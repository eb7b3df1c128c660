"""SaLSA: smoothed Armijo line search whose searches are amortised once the step size is stable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lsframe.optim._blocked import blocked_on
from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim._sharded import local
from lsframe.optim.adam_moments import (
    adam_directions,
    check_adam_group,
    cohorts,
    next_moment_step,
    one_pass_adam_step,
)
from lsframe.optim.rules import ActiveGroup, Direction, SmoothedArmijo, armijo_verdict
from lsframe.validation import (
    as_tuple,
    check_bool,
    check_int_at_least,
    check_open_unit,
    check_positive,
)

# one search over all groups: these hyperparameters must agree across the groups
RULE_KEYS = ("c", "beta_b", "growth", "max_gap", "warmup_searches", "use_mv", "amortize")


class SaLSA(LineSearchOptimizer):
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
      ``η ← beta_b η``; the accepted trial point is the step, and its η becomes ``η_last``
      (``state["line_search"]["searched_step_size"]``; the groups' ``step_size`` is the step
      taken, ``growth · η_last`` on steps without a search). No search happens when the loss is
      0 or ``Ḡ < 1e-8``: the step is then Adam's ``x − η P ⊙ m̂``;
    * a step without search is ``x ← x − growth · η_last · P ⊙ m̂`` with no extra forward.

    Intentional differences from the package (each an improvement, none changes the rule):
    no parameter copies in fp32 (trial points are in-place moves; bf16/fp16 parameters are
    placed from a copy of ``x``); a failed search (all
    ``max_backtracks`` trials rejected) returns the parameters to ``x`` instead of leaving them at
    the last trial; the no-search branch for a zero loss skips the package's unused forward; a
    non-finite loss or gradient is a rejected step instead of a ValueError; param groups, ``lr``
    and ``lr_multiplier`` work; state is in ``state_dict``; the random state is the caller's
    (the package reseeds from the wall clock). Adam's bias correction is ``1 − β^t``; the
    package's is one step ahead (``1 − β^(t+1)``): ``bias_correction_offset=1`` reproduces it.
    Each parameter's corrections take its own count of updates, as torch's Adam (a parameter
    that joins late starts at 1). On CPU a step without search runs in one pass per tensor
    (:func:`~lsframe.optim.adam_moments.one_pass_adam_step`: torch's fused AdamW kernel, or the
    cache-blocked one), the foreach kernels' step to float rounding.

    Args:
        params: Parameters or param groups (a group's ``betas`` may be Adam's own (β1, β2);
            β3 is then the default's and must agree across groups, as the search is joint).
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
        min_step_size: Floor on the step size after a failed search (0: off). Default: 0.
        bias_correction_offset: 1 reproduces the package's bias correction. Default: 0.
        weight_decay: Decoupled weight decay. Default: 0.
    """

    ADAM_MOMENTS = True

    ONE_SEARCH_KEYS = (*LineSearchOptimizer.ONE_SEARCH_KEYS, *RULE_KEYS, "bias_correction_offset")

    def _one_search_values(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._one_search_values(group), "betas[2]": group["betas"][2]}

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
        min_step_size: float = 0.0,
        bias_correction_offset: int = 0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            c=c,
            betas=as_tuple(betas),
            eps=eps,
            beta_b=beta_b,
            growth=growth,
            max_gap=max_gap,
            warmup_searches=warmup_searches,
            use_mv=use_mv,
            amortize=amortize,
            max_backtracks=max_backtracks,
            min_step_size=min_step_size,
            bias_correction_offset=bias_correction_offset,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_adam_group(group, length=3)
        check_open_unit(c=group["c"], beta_b=group["beta_b"], **{"betas[2]": group["betas"][2]})
        check_bool(use_mv=group["use_mv"], amortize=group["amortize"])
        check_positive(growth=group["growth"], max_gap=group["max_gap"])
        check_int_at_least(
            0,
            warmup_searches=group["warmup_searches"],
            bias_correction_offset=group["bias_correction_offset"],
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        betas = param_group.get("betas")
        # Adam's own (β1, β2): β3 from defaults
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            param_group = {**param_group, "betas": (*betas, self.defaults["betas"][2])}
        super().add_param_group(param_group)

    def _initial_search_state(self) -> dict[str, Any]:
        return {
            **super()._initial_search_state(),
            "searched_step_size": self.param_groups[0]["initial_step_size"],
            "steps_since_search": 100,
            "slow_step_size": 1e-8,
            "fast_step_size": 1e-8,
            "avg_decrease": 0.0,
            "avg_slope": 0.0,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        search = state.get("state", {}).get("line_search", {})
        if "last_step_size" in search:  # the name before lsframe 0.1's restructuring
            search["searched_step_size"] = search.pop("last_step_size")
        defaults = state.get("defaults") or self.defaults
        for group in state.get("param_groups", []):
            if len(group.get("betas", ())) == 2:  # β3 was kept outside the groups
                group["betas"] = (*group["betas"], defaults["betas"][2])
        super().__setstate__(state)

    def search_gap(self) -> float:
        """Steps wanted between searches, from how fast the step size still changes."""
        state = self.search_state
        ratio = state["fast_step_size"] / state["slow_step_size"]
        ratio = 1.0 / ratio if ratio < 1 else ratio
        return min(self.shared("max_gap"), 1.0 / (ratio - 1.0 + 1e-8))

    def _may_search(self) -> bool:
        """Whether this step searches (every step without ``amortize``, the warmup's, then once
        the steps since the last search reach :meth:`search_gap`); read before the step counts."""
        state = self.search_state
        return (
            not self.shared("amortize")
            or state["step"] < self.shared("warmup_searches")
            or state["steps_since_search"] + 1 >= self.search_gap()
        )

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        rule = {key: self.shared(key) for key in RULE_KEYS}
        search = self._may_search()  # before this step is counted
        state["steps_since_search"] += 1
        offset = self.shared("bias_correction_offset")
        eta = rule["growth"] * state["searched_step_size"]
        if not search and blocked_on([local(g) for active in groups for g in active.grads]):
            pairs = cohorts(self.state, groups, state.get("moment_step", 0))
            next_moment_step(state)  # the foreach path's step below, in one pass per tensor
            one_pass_adam_step(self.state, pairs, eta, offset)
            self._decay_applied = True
            self._set_step_sizes(eta)
            return
        adam = adam_directions(self.state, groups, next_moment_step(state), offset)
        momentum = adam.update()
        if not search:
            momentum.move(groups, [eta] * len(groups))
            self._set_step_sizes(eta)
            return
        state["steps_since_search"] = 0
        trial = momentum if rule["use_mv"] else adam.preconditioned_gradient(groups)
        beta3 = self.shared("betas[2]", pick=lambda group: group["betas"][2])
        smoothing = SmoothedArmijo(beta3, rule["c"])
        avg_slope = smoothing.update_slope(state, "avg_slope", trial.slope(groups))
        if loss != 0 and avg_slope >= 1e-8:
            eta = self._searched(loss, forward, groups, trial, eta, smoothing, rule["beta_b"])
        else:
            momentum.move(groups, [eta] * len(groups))
        state["searched_step_size"] = eta
        state["slow_step_size"] = 0.99 * state["slow_step_size"] + 0.01 * eta
        state["fast_step_size"] = 0.9 * state["fast_step_size"] + 0.1 * eta
        self._set_step_sizes(eta)

    def _searched(
        self,
        loss: float,
        forward: Callable[[], Tensor],
        groups: list[ActiveGroup],
        trial: Direction,
        eta: float,
        smoothing: SmoothedArmijo,
        beta_b: float,
    ) -> float:
        """The step size the smoothed Armijo search accepts (the accepted trial is the step)."""
        state = self.search_state
        averages = {"decrease": state["avg_decrease"]}
        verdict = armijo_verdict(
            loss,
            0.0,
            smoothing.c,
            beta_b,
            smoothing,
            averages,
            state["avg_slope"],
            accept_zero_decrease=True,
        )
        result = self._search(
            forward,
            lambda a: trial.move(groups, [a] * len(groups)),
            eta,
            verdict,
            slope=state["avg_slope"],
            averages=averages,
        )
        state["avg_decrease"] = averages["decrease"]
        return result.step_size
