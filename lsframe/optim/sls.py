"""SGDSLS: stochastic gradient descent with an Armijo (or Goldstein) line search."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.rules import ActiveGroup, Decision, Direction, armijo, reset_step_size
from lsframe.validation import check_choice, check_interval, check_open_unit, check_positive

# one search over all groups: these hyperparameters must agree across the groups
RULE_KEYS = (
    "c",
    "beta_b",
    "gamma",
    "reset_option",
    "n_batches_per_epoch",
    "line_search_fn",
    "beta_f",
    "eta_max",
)


class SGDSLS(LineSearchOptimizer):
    """SGD with stochastic Armijo line search (SLS).

    Vaswani et al., "Painless Stochastic Gradient", NeurIPS 2019 (Alg. 1 and 2), as used for
    transformers by Kenneweg et al., IJCNN 2023 (P0, "SGDSLS"). Each step:
    ``η ← reset(η_prev)``; backtrack ``η ← β_b η`` until
    ``f(x − η g) ≤ f(x) − c · η · ‖g‖²``; then ``x ← x − η g``. P0's reference code multiplies by
    ‖g‖ instead of ‖g‖²; lsframe uses the paper's ‖g‖².

    With ``line_search_fn="goldstein"`` a trial must also satisfy
    ``f(x − η g) ≥ f(x) − (1 − c) · η · ‖g‖²``; when only that lower bound fails, η grows
    ``η ← min(β_f η, η_max)``, and ``η_max`` itself is accepted when the bound still fails there.

    When ``max_backtracks`` trials all fail, the parameters stay at ``x`` (in float32 up to one
    rounding per trial: :mod:`lsframe.optim.rules`; the reference instead steps with η = 1e-6)
    and the next search starts from ``β_b`` times the last η tried.

    Example::

        opt = SGDSLS(model.parameters(), n_batches_per_epoch=len(loader))
        for x, y in loader:
            def closure(backward=True):
                if not backward:
                    with torch.no_grad():
                        return loss_fn(model(x), y)
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)

    Args:
        params: Parameters or param groups (groups may set ``lr_multiplier`` and
            ``weight_decay``; the step size is shared).
        lr: Initial step size η0. Default: 1.0.
        c: Armijo constant. Default: 0.1.
        beta_b: Backtracking factor. Default: 0.9.
        gamma: Growth of the reset rule. Default: 2.0.
        reset_option: 0 keep, 1 grow by ``γ^(1/n)``, 2 restart from η0. Default: 1.
        n_batches_per_epoch: ``n`` of the reset rule. Default: 500 (P0).
        line_search_fn: ``"armijo"`` or ``"goldstein"``. Default: ``"armijo"``.
        beta_f: Goldstein growth factor. Default: 2.0.
        eta_max: Goldstein upper bound on η. Default: 10.0.
        max_backtracks: Most trials per step. Default: 100 (the reference bound).
        min_step_size: Floor on the step size after a failed search (0: off). Default: 0.
        weight_decay: Decoupled weight decay λ (``x ← x(1 − ηλ)`` after the step). Default: 0.
    """

    ONE_SEARCH_KEYS = (*LineSearchOptimizer.ONE_SEARCH_KEYS, *RULE_KEYS)

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        c: float = 0.1,
        beta_b: float = 0.9,
        gamma: float = 2.0,
        reset_option: Literal[0, 1, 2] = 1,
        n_batches_per_epoch: int = 500,
        line_search_fn: Literal["armijo", "goldstein"] = "armijo",
        beta_f: float = 2.0,
        eta_max: float = 10.0,
        max_backtracks: int = 100,
        min_step_size: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            c=c,
            beta_b=beta_b,
            gamma=gamma,
            reset_option=reset_option,
            n_batches_per_epoch=n_batches_per_epoch,
            line_search_fn=line_search_fn,
            beta_f=beta_f,
            eta_max=eta_max,
            max_backtracks=max_backtracks,
            min_step_size=min_step_size,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_open_unit(c=group["c"], beta_b=group["beta_b"])
        check_positive(
            gamma=group["gamma"],
            n_batches_per_epoch=group["n_batches_per_epoch"],
            eta_max=group["eta_max"],
        )
        check_choice("reset_option", group["reset_option"], (0, 1, 2))
        check_choice("line_search_fn", group["line_search_fn"], ("armijo", "goldstein"))
        check_interval(1.0, math.inf, True, True, beta_f=group["beta_f"])
        if group["line_search_fn"] == "goldstein" and group["c"] >= 0.5:
            raise ValueError(f"c must be < 0.5 for the Goldstein conditions, got {group['c']!r}")

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        rule = {key: self.shared(key) for key in RULE_KEYS}
        direction = Direction([active.grads for active in groups])
        slope = direction.slope(groups)
        first = self.param_groups[0]
        eta = reset_step_size(
            first["step_size"],
            rule["reset_option"],
            rule["gamma"],
            rule["n_batches_per_epoch"],
            first["initial_step_size"],
        )
        goldstein = rule["line_search_fn"] == "goldstein"
        if goldstein:
            eta = min(eta, rule["eta_max"])
        c, beta_b, beta_f, eta_max = rule["c"], rule["beta_b"], rule["beta_f"], rule["eta_max"]

        def verdict(trial_loss: float, eta: float) -> Decision:
            decrease = loss - trial_loss
            if not math.isfinite(trial_loss) or not armijo(decrease, eta, slope, c):
                return Decision.retry(eta * beta_b)  # −inf too: its decrease passes Armijo
            if goldstein and decrease > (1 - c) * eta * slope:
                if eta >= eta_max:
                    return Decision.accepted()  # cannot grow: accept the largest allowed step
                return Decision.retry(min(eta * beta_f, eta_max))
            return Decision.accepted()

        result = self._search(
            forward, lambda a: direction.move(groups, [a] * len(groups)), eta, verdict, slope=slope
        )
        self._set_step_sizes(result.step_size)
