"""Adam's moments as a helper the line searches compose (AdamSLS, PLASLS, ALSALS, SaLSA).

:func:`adam_directions` updates each parameter's ``exp_avg`` and ``exp_avg_sq`` (kept in the
optimizer's per-parameter state, as torch's Adam names them) and returns the two directions a
rule needs: the preconditioned gradient ``P ⊙ g`` and Adam's update ``P ⊙ m̂``, with
``P = 1/(√v̂ + ε)``. ``√v̂ + ε`` is a transient list (as in torch's Adam), never kept in state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lsframe.optim._functional import adam_denominator, adam_moments_, bias_correction
from lsframe.optim.rules import ActiveGroup, Direction
from lsframe.validation import check_positive, check_unit


@dataclass
class AdamDirections:
    """This step's ``√v̂ + ε`` and ``m`` per group, and Adam's first bias correction."""

    denominators: list[list[Tensor]]
    exp_avgs: list[list[Tensor]]
    bias_correction1: float

    def preconditioned_gradient(self, groups: list[ActiveGroup]) -> Direction:
        """``P ⊙ g``: the trial direction of AdamSLS and SaLSA."""
        return Direction([active.grads for active in groups], self.denominators)

    def update(self) -> Direction:
        """``P ⊙ m̂``: Adam's own step direction."""
        return Direction(self.exp_avgs, self.denominators, scale=1.0 / self.bias_correction1)


def adam_directions(
    param_state: dict[Any, dict[str, Any]], groups: list[ActiveGroup], step: int
) -> AdamDirections:
    """Update ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²`` of every active parameter
    (each group's own ``betas`` and ``eps``) and return the directions at Adam step ``step``
    (``t`` of the bias corrections ``1 − β^t``)."""
    denominators, exp_avgs, bc1 = [], [], 1.0
    for active in groups:
        beta1, beta2 = active.group["betas"][:2]  # SaLSA adds a third
        m, v = [], []
        for p in active.params:
            state = moments_of(param_state, p)
            m.append(state["exp_avg"])
            v.append(state["exp_avg_sq"])
        if active.params:
            adam_moments_(active.grads, m, v, beta1, beta2)
        bc1 = bias_correction(beta1, step)
        denominators.append(
            adam_denominator(v, bias_correction(beta2, step), active.group["eps"]) if v else []
        )
        exp_avgs.append(m)
    return AdamDirections(denominators, exp_avgs, bc1)


def moments_of(param_state: dict[Any, dict[str, Any]], param: Tensor) -> dict[str, Any]:
    """``param``'s state, with ``exp_avg`` and ``exp_avg_sq`` created (zeros) on first sight."""
    state = param_state[param]
    if not state:
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


def next_moment_step(search_state: dict[str, Any]) -> int:
    """Count one more update of Adam's moments (``state["line_search"]["moment_step"]``)."""
    search_state["moment_step"] = search_state.get("moment_step", 0) + 1
    return search_state["moment_step"]


def check_adam_group(group: dict[str, Any]) -> None:
    """``betas`` in [0, 1) and ``eps`` > 0."""
    betas = group["betas"]
    check_unit(**{"betas[0]": betas[0], "betas[1]": betas[1]})
    check_positive(eps=group["eps"])
