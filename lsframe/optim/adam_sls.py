"""AdamSLS: Adam's preconditioned gradient in the Armijo line search, Adam's momentum in the step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.adam_moments import adam_directions, check_adam_group, next_moment_step
from lsframe.optim.rules import (
    ActiveGroup,
    SmoothedArmijo,
    armijo_verdict,
    reset_step_size,
    zero_averages,
)
from lsframe.validation import as_tuple, check_bool, check_choice, check_open_unit, check_positive

# what one AdamSLS search over several groups reads once (search_parts_then_adam_step: the
# reset rule of the first group searched gives the step size the search starts from)
ADAM_SLS_SEARCH_KEYS = (
    "c",
    "beta_b",
    "smooth",
    "beta_s",
    "gamma",
    "reset_option",
    "n_batches_per_epoch",
)


class AdamSLS(LineSearchOptimizer):
    """Adam with an Armijo line search on the preconditioned gradient (ADAMSLS).

    Kenneweg, Galli, Kenneweg, Hammer, "Faster Convergence for Transformer Fine-tuning with Line
    Search Methods", IJCNN 2023 (P0). With ``P = 1/(√v̂ + ε)``, each step updates Adam's moments,
    starts from ``η ← η_prev · γ^(1/n)``, and backtracks ``η ← β_b η`` until

        f(x) − f(x − η · P ⊙ g) ≥ c · η · Σ g² ⊙ P,

    then takes Adam's step ``x ← x − η · P ⊙ m̂`` (momentum in the update, not in the trial).
    With ``smooth=True`` both sides are exponential averages (rate ``beta_s``), as P0's option.

    Memory: Adam's two moments per parameter; ``√v̂ + ε`` is a transient list (as in torch's
    Adam); trial points are in-place moves (from a copy of ``x`` for bf16/fp16 parameters, see
    :mod:`lsframe.optim.rules`). Bias correction is Adam's ``1 − β^t``.
    When all ``max_backtracks`` trials fail, the parameters stay at ``x`` (in float32 up to one
    rounding per trial: :mod:`lsframe.optim.rules`).

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
        min_step_size: Floor on the step size after a failed search (0: off). Default: 0.
        weight_decay: Decoupled weight decay (after the step, with its lr). Default: 0.
    """

    ADAM_MOMENTS = True

    ONE_SEARCH_KEYS = (*LineSearchOptimizer.ONE_SEARCH_KEYS, *ADAM_SLS_SEARCH_KEYS)

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
        min_step_size: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=as_tuple(betas),
            eps=eps,
            c=c,
            beta_b=beta_b,
            gamma=gamma,
            reset_option=reset_option,
            n_batches_per_epoch=n_batches_per_epoch,
            smooth=smooth,
            beta_s=beta_s,
            max_backtracks=max_backtracks,
            min_step_size=min_step_size,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _initial_search_state(self) -> dict[str, Any]:
        return {**super()._initial_search_state(), "smoothing": {"joint": zero_averages()}}

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_adam_sls_group(group)

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        search_parts_then_adam_step(self, loss, forward, groups, list(range(len(groups))))


def check_adam_sls_group(group: dict[str, Any]) -> None:
    """The hyperparameters AdamSLS and PLASLS share."""
    check_open_unit(c=group["c"], beta_b=group["beta_b"], beta_s=group["beta_s"])
    check_adam_group(group)
    check_positive(gamma=group["gamma"], n_batches_per_epoch=group["n_batches_per_epoch"])
    check_choice("reset_option", group["reset_option"], (0, 1, 2))
    check_bool(smooth=group["smooth"])


def smoothed_averages(state: dict[str, Any], averaged_as: str) -> dict[str, Any]:
    """The smoothed condition's averages kept under ``averaged_as``. A part's averages
    (PLASLS) start from the joint ones when the part first searches alone: until then they
    are unset (:func:`unset_averages`)."""
    by_key = state["smoothing"]
    averages = by_key.get(averaged_as)
    if averages is None or averages["slope"] is None:
        averages = by_key[averaged_as] = dict(by_key["joint"])
    return averages


def unset_averages() -> dict[str, Any]:
    """A part's averages before it first searches alone. Every key a run will write exists
    from the start, so that a state rebuilt from a fresh optimizer's template
    (``torch.distributed.checkpoint``) names it."""
    return {"decrease": None, "slope": None}


def search_parts_then_adam_step(
    opt: LineSearchOptimizer,
    loss: float,
    forward: Callable[[], Tensor],
    groups: list[ActiveGroup],
    searched: Sequence[int],
    averaged_as: str = "joint",
) -> None:
    """One AdamSLS step in which the groups ``searched`` share one Armijo search along
    ``P ⊙ g`` (all groups: AdamSLS; one part: PLASLS), then every group takes Adam's step
    ``x ← x − η_g · P ⊙ m̂`` with its own η (the groups not searched grow theirs by the reset
    rule). A failed search leaves the searched groups at ``x``. With ``smooth``, the search's
    averages are kept under ``averaged_as`` (PLASLS: a part's representative; a part's first
    averages are the joint ones)."""
    state = opt.search_state
    adam = adam_directions(opt.state, groups, next_moment_step(state))
    trial, update = adam.preconditioned_gradient(groups), adam.update()
    etas = [
        reset_step_size(
            g["step_size"],
            g["reset_option"],
            g["gamma"],
            g["n_batches_per_epoch"],
            g["initial_step_size"],
        )
        for g in opt.param_groups
    ]
    slope = trial.slope(groups, searched)
    c, beta_b = opt.shared("c", searched), opt.shared("beta_b", searched)
    smoothing, averages, avg_slope = None, None, 0.0
    if opt.shared("smooth", searched):
        smoothing = SmoothedArmijo(opt.shared("beta_s", searched), c)
        averages = smoothed_averages(state, averaged_as)
        avg_slope = smoothing.update_slope(averages, "slope", slope)

    def amounts(a: float) -> list[float]:
        return [a if i in searched else 0.0 for i in range(len(groups))]

    result = opt._search(
        forward,
        lambda a: trial.move(groups, amounts(a)),
        etas[searched[0]],
        armijo_verdict(loss, slope, c, beta_b, smoothing, averages, avg_slope),
        searched,
        slope=slope if smoothing is None else avg_slope,
        averages=averages,
    )
    for i in searched:
        etas[i] = result.step_size
    if result.accepted:
        # back to x (from the search's copy in reduced precision), then Adam's step
        opt.back_to_start(lambda: trial.move(groups, amounts(-result.step_size)))
        update.move(groups, etas)
    else:  # parameters are at x; the searched parts do not move
        update.move(groups, [0.0 if i in searched else eta for i, eta in enumerate(etas)])
    opt._set_step_sizes(etas)
