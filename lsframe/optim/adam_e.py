"""AdamE (Zhao et al., NeurIPS 2025, arXiv 2510.27153): Adam(W) on the E-adapted gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lsframe.optim._saved_state import CheckedOptimizer
from lsframe.optim.lamb import check_adam_values
from lsframe.optim.valley import (
    VALLEY_KEYS,
    adapt_with_state,
    check_valley,
    check_valley_group,
    group_kick,
    resolve_valley,
    set_group_valley,
)
from lsframe.validation import check_bool


class AdamE(CheckedOptimizer, torch.optim.AdamW):
    """``torch.optim.AdamW`` run on ``g̃ = g + α a`` (see :mod:`lsframe.optim.valley`): the
    valley-exploration adaptor "E" of Zhao et al., NeurIPS 2025 (arXiv 2510.27153).

    The same as the reference ``E(AdamW(...))`` up to these deliberate differences: the adaptor's
    state (``valley_prev``, ``valley_diff`` in ``self.state[p]``) is saved by ``state_dict``; a
    closure is evaluated first and its gradient is adapted (the reference hands the closure to
    the base optimizer, which recomputes the gradient and drops the adaptation); ``p.grad`` holds
    the raw gradient again after the step; the first step has no kick (``first_step_kick``).

    As :class:`~lsframe.optim.Lamb` (unlike ``torch.optim.AdamW``): ``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``amsgrad`` and the adaptor's keys are checked in the arguments and in every
    param group (a bad one: one ConfigError line naming it and its group), ``lr`` must be > 0,
    and a state dict is stamped with ``saved_by``: another optimizer's is refused, torch's own
    AdamW's included (its run has no α, β1 nor adaptor state: resume it with AdamW).

    Args:
        params: Parameters or param groups.
        lr: As ``torch.optim.AdamW``. Default: 1e-3.
        betas: As ``torch.optim.AdamW``. Default: (0.9, 0.999).
        eps: As ``torch.optim.AdamW``. Default: 1e-8.
        weight_decay: As ``torch.optim.AdamW``, but defaults to 0 (Adam), as the paper's AdamE.
        amsgrad: As ``torch.optim.AdamW``. Default: False.
        alpha: The adaptor's α (None: from ``batch_size``).
        valley_beta: The adaptor's β1 (None: from ``batch_size``).
        batch_size: Effective batch size for the paper's rule (< 1,024: α = 0.5, β1 = 0.01;
            otherwise α = −5, β1 = 0.99). Default: 32, the fine-tuning setting.
        first_step_kick: Start from ``g_0 = 0`` as the reference. Default: False.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        alpha: float | None = None,
        valley_beta: float | None = None,
        batch_size: int | None = 32,
        first_step_kick: bool = False,
    ) -> None:
        values = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        AdamE._check_adam_group(values)  # before torch, whose messages name no argument
        alpha, valley_beta = resolve_valley(alpha, valley_beta, batch_size)
        super().__init__(params, **values)
        set_group_valley(self, alpha, valley_beta, first_step_kick)

    #: The group keys a step reads without a fallback (torch backfills its own flags).
    REQUIRED_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", *VALLEY_KEYS)

    @staticmethod
    def _check_adam_group(group: dict[str, Any]) -> None:
        check_adam_values(group)
        check_bool(amsgrad=group["amsgrad"])

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ConfigError naming the first bad hyperparameter of ``group``: the rules of the
        constructor's arguments (the adaptor's keys once the constructor has set them)."""
        self._check_adam_group(group)
        if "valley_alpha" in self.defaults:
            check_valley_group(group)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fresh = []
        for group in self.param_groups:
            alpha, beta = group["valley_alpha"], group["valley_beta"]
            check_valley(alpha, beta, names=VALLEY_KEYS)
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            fresh += adapt_with_state(states, grads, alpha, beta, group_kick(self, group))
        super().step()  # AdamW initialises its state on an empty dict: add ours after its step
        for state, g_prev, a in fresh:
            state["valley_prev"], state["valley_diff"] = g_prev, a
        for group in self.param_groups:  # leave the raw gradient in p.grad
            for p in group["params"]:
                if p.grad is not None and "valley_prev" in self.state[p]:
                    p.grad.copy_(self.state[p]["valley_prev"])
        return loss
