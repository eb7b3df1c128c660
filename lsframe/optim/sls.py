"""SGDSLS: stochastic gradient descent with an Armijo (or Goldstein) line search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import (
    ActiveGroup,
    Direction,
    LineSearchOptimizer,
    armijo,
    backtrack,
    check_open_unit,
    check_positive,
)


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

    When ``max_backtracks`` trials all fail, the parameters stay at ``x`` (the reference instead
    steps with η = 1e-6) and the next search starts from the last η tried.

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
        weight_decay: Decoupled weight decay λ (``x ← x(1 − ηλ)`` after the step). Default: 0.
    """

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
        weight_decay: float = 0.0,
    ) -> None:
        check_open_unit(c=c, beta_b=beta_b)
        check_positive(gamma=gamma, n_batches_per_epoch=n_batches_per_epoch, eta_max=eta_max)
        if reset_option not in (0, 1, 2):
            raise ValueError(f"reset_option must be 0, 1 or 2, got {reset_option!r}")
        if line_search_fn not in ("armijo", "goldstein"):
            raise ValueError(
                f"line_search_fn must be 'armijo' or 'goldstein', got {line_search_fn!r}"
            )
        if beta_f <= 1:
            raise ValueError(f"beta_f must be > 1, got {beta_f}")
        if line_search_fn == "goldstein" and c >= 0.5:
            raise ValueError(f"c must be < 0.5 for the Goldstein conditions, got {c}")
        self.c, self.beta_b, self.gamma = c, beta_b, gamma
        self.reset_option, self.n_batches_per_epoch = reset_option, n_batches_per_epoch
        self.line_search_fn, self.beta_f, self.eta_max = line_search_fn, beta_f, eta_max
        self.initial_step_size = lr
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, max_backtracks)

    def _verdict(self, loss: float, slope: float) -> Callable[[float, float], bool | float]:
        def verdict(trial_loss: float, eta: float) -> bool | float:
            decrease = loss - trial_loss
            if not (decrease == decrease) or not armijo(decrease, eta, slope, self.c):
                return eta * self.beta_b  # NaN decrease lands here too
            if self.line_search_fn == "goldstein" and decrease > (1 - self.c) * eta * slope:
                if eta >= self.eta_max:
                    return True  # cannot grow further: accept the largest allowed step
                return min(eta * self.beta_f, self.eta_max)
            return True

        return verdict

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        direction = Direction([active.grads for active in groups])
        slope = direction.slope(groups)
        eta = reset_step_size(
            self.param_groups[0]["step_size"],
            self.reset_option,
            self.gamma,
            self.n_batches_per_epoch,
            self.initial_step_size,
        )
        if self.line_search_fn == "goldstein":
            eta = min(eta, self.eta_max)
        result = backtrack(
            forward,
            lambda a: direction.move(groups, [a] * len(groups)),
            eta,
            self._verdict(loss, slope),
            self.max_backtracks,
        )
        state["searches"] += 1
        state["failed_searches"] += not result.accepted
        for group in self.param_groups:
            group["step_size"] = result.step_size
