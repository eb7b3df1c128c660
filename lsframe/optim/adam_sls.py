"""AdamSLS: Adam's preconditioned gradient in the Armijo line search, Adam's momentum in the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from lsframe.optim._functional import adam_denominator, adam_moments_, bias_correction
from lsframe.optim._linesearch import (
    ActiveGroup,
    Direction,
    LineSearchOptimizer,
    SmoothedArmijo,
    armijo,
    backtrack,
    check_open_unit,
    check_positive,
    check_unit,
)
from lsframe.optim.sls import reset_step_size


class AdamSLS(LineSearchOptimizer):
    """Adam with an Armijo line search on the preconditioned gradient (ADAMSLS).

    Kenneweg, Galli, Kenneweg, Hammer, "Faster Convergence for Transformer Fine-tuning with Line
    Search Methods", IJCNN 2023 (P0). With ``P = 1/(√v̂ + ε)``, each step updates Adam's moments,
    starts from ``η ← η_prev · γ^(1/n)``, and backtracks ``η ← β_b η`` until

        f(x) − f(x − η · P ⊙ g) ≥ c · η · Σ g² ⊙ P,

    then takes Adam's step ``x ← x − η · P ⊙ m̂`` (momentum in the update, not in the trial).
    With ``smooth=True`` both sides are exponential averages (rate ``beta_s``), as P0's option.

    Memory: Adam's two moments per parameter; ``√v̂ + ε`` is a transient list (as in torch's
    Adam); trial points are in-place moves, never copies. Bias correction is Adam's ``1 − β^t``.
    When all ``max_backtracks`` trials fail, the parameters stay at ``x``.

    Example::

        opt = AdamSLS(model.parameters())
        for x, y in loader:
            def closure(backward=True):
                with torch.set_grad_enabled(backward):
                    loss = loss_fn(model(x), y)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss.detach()
            opt.step(closure)

    Args:
        params: Parameters or param groups (``lr_multiplier``, ``weight_decay`` per group).
        lr: Initial step size η0. Default: 0.1.
        betas: Adam's (β1, β2). Default: (0.9, 0.999).
        eps: Adam's ε. Default: 1e-8.
        c: Armijo constant (P0's paper: 0.1; its code: 0.2). Default: 0.1.
        beta_b: Backtracking factor. Default: 0.9.
        gamma: Growth of the reset rule. Default: 2.0.
        reset_option: 0 keep, 1 grow by ``γ^(1/n)``, 2 restart from η0. Default: 1.
        n_batches_per_epoch: ``n`` of the reset rule. Default: 500 (P0's code).
        smooth: Smoothed Armijo condition. Default: False.
        beta_s: Averaging rate of the smoothed condition. Default: 0.999.
        max_backtracks: Most trials per step. Default: 100.
        weight_decay: Decoupled weight decay (after the step, with its lr). Default: 0.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        c: float = 0.1,
        beta_b: float = 0.9,
        gamma: float = 2.0,
        reset_option: Literal[0, 1, 2] = 1,
        n_batches_per_epoch: int = 500,
        smooth: bool = False,
        beta_s: float = 0.999,
        max_backtracks: int = 100,
        weight_decay: float = 0.0,
    ) -> None:
        check_open_unit(c=c, beta_b=beta_b, beta_s=beta_s)
        check_unit(**{"betas[0]": betas[0], "betas[1]": betas[1]})
        check_positive(eps=eps, gamma=gamma, n_batches_per_epoch=n_batches_per_epoch)
        if reset_option not in (0, 1, 2):
            raise ValueError(f"reset_option must be 0, 1 or 2, got {reset_option!r}")
        self.c, self.beta_b, self.gamma = c, beta_b, gamma
        self.reset_option, self.n_batches_per_epoch = reset_option, n_batches_per_epoch
        self.smoothing = SmoothedArmijo(beta_s, c) if smooth else None
        self.initial_step_size = lr
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, max_backtracks)

    # ------------------------------------------------------------------------------ pieces
    def _adam_moments(self, groups: list[ActiveGroup], offset: int = 0) -> tuple[list, list, float]:
        """Update m, v; return per-group ``(√v̂ + ε)`` lists, the m lists and ``1 − β1^t``."""
        state = self.search_state
        state["moment_step"] = state.get("moment_step", 0) + 1
        t = state["moment_step"] + offset
        denominators, exp_avgs, bc1 = [], [], 1.0
        for active in groups:
            beta1, beta2 = active.group["betas"]
            m, v = [], []
            for p in active.params:
                param_state = self.state[p]
                if not param_state:
                    param_state["exp_avg"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                    param_state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                m.append(param_state["exp_avg"])
                v.append(param_state["exp_avg_sq"])
            if active.params:
                adam_moments_(active.grads, m, v, beta1, beta2)
            bc1 = bias_correction(beta1, t)
            denominators.append(
                adam_denominator(v, bias_correction(beta2, t), active.group["eps"]) if v else []
            )
            exp_avgs.append(m)
        return denominators, exp_avgs, bc1

    def _parts_to_search(self, step: int, num_groups: int) -> list[int]:
        """Indices of the groups that move in this step's trials (all of them: one η)."""
        return list(range(num_groups))

    def _verdict(
        self, loss: float, slope: float, key: str
    ) -> Callable[[float, float], bool | float]:
        smoothing = self.smoothing
        averages = self.search_state.setdefault("smoothing", {})
        if smoothing is not None:
            entry = averages.setdefault(
                key, dict(averages.get("joint", {"decrease": 0.0, "slope": 0.0}))
            )
            avg_slope = smoothing.update_slope(entry, "slope", slope)

        def verdict(trial_loss: float, eta: float) -> bool | float:
            decrease = loss - trial_loss
            if decrease != decrease:  # NaN or inf trial loss
                return eta * self.beta_b
            if smoothing is None:
                ok = armijo(decrease, eta, slope, self.c)
            else:
                ok = smoothing.accepts(entry["decrease"], decrease, eta, avg_slope)
                if ok:
                    entry["decrease"] = smoothing.smoothed_decrease(entry["decrease"], decrease)
            return True if ok else eta * self.beta_b

        return verdict

    # -------------------------------------------------------------------------------- step
    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        state = self.search_state
        denominators, exp_avgs, bc1 = self._adam_moments(groups)
        trial = Direction([active.grads for active in groups], denominators)
        update = Direction(exp_avgs, denominators, scale=1.0 / bc1)
        etas = [
            reset_step_size(
                g["step_size"],
                self.reset_option,
                self.gamma,
                self.n_batches_per_epoch,
                self.initial_step_size,
            )
            for g in self.param_groups
        ]
        searched = self._parts_to_search(state["step"], len(groups))
        key = "joint" if len(searched) == len(groups) else str(searched[0])

        def amounts(a: float) -> list[float]:
            return [a if i in searched else 0.0 for i in range(len(groups))]

        result = backtrack(
            forward,
            lambda a: trial.move(groups, amounts(a)),
            etas[searched[0]],
            self._verdict(loss, trial.slope(groups, searched), key),
            self.max_backtracks,
        )
        state["searches"] += 1
        state["failed_searches"] += not result.accepted
        for i in searched:
            etas[i] = result.step_size
        if result.accepted:
            trial.move(groups, amounts(-result.step_size))  # back to x, then Adam's step
            update.move(groups, etas)
        else:  # parameters are at x; the searched parts do not move
            update.move(groups, [0.0 if i in searched else eta for i, eta in enumerate(etas)])
        for group, eta in zip(self.param_groups, etas):
            group["step_size"] = eta
