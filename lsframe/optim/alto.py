"""ALTO (Zhao et al., NeurIPS 2025, arXiv 2510.27153, Alg. 2): LAMB on the E-adapted gradient."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lsframe.optim.lamb import Lamb
from lsframe.optim.valley import (
    VALLEY_KEYS,
    adapt_with_state,
    check_valley,
    check_valley_group,
    group_kick,
    resolve_valley,
    set_group_valley,
)


class ALTO(Lamb):
    """LAMB on ``g̃ = g + α a`` (see :mod:`lsframe.optim.valley` for the adaptor): ALTO of Zhao
    et al., NeurIPS 2025 (arXiv 2510.27153, Alg. 2).

    Order in a step, as the reference: clip the global gradient norm to ``max_grad_norm``, adapt
    the clipped gradient (``g_prev`` stores the clipped one), then LAMB's moments, trust ratio and
    update on ``g̃``. Defaults are the paper's and the reference factory's (``create_ALTO_optimizer``,
    README): ``(β2, β3) = (0.9, 0.99)`` for m and v, ε = 1e-6, λ = 1e-4, and α, β1 from the
    batch-size rule (``batch_size`` ≥ 1,024 or unknown: α = −5, β1 = 0.99; smaller: α = 0.5,
    β1 = 0.01). The reference class's own defaults (β1 = 0.1, ε = 1e-8) break
    ``|α| < 1/(1 − β1)`` at α = −5 and are not used.

    Differences from the reference, on purpose: the adaptor's state (``valley_prev``,
    ``valley_diff``) is in ``state_dict``; ``p.grad`` is never overwritten (clipping and
    adaptation act on an internal copy); the first step has no kick (``first_step_kick=True``
    restores the reference's ``g_0 = 0``); no bias-correction tensors are kept (4 → 2 extra
    tensors per parameter besides m and v).

    Args:
        params: Parameters or param groups.
        lr: Step size η. Default: 1e-3.
        betas: ``(β2, β3)`` for Lamb's m and v. Default: (0.9, 0.99).
        eps: ε. Default: 1e-6.
        weight_decay: λ. Default: 1e-4.
        alpha: The adaptor's α (None: from ``batch_size``).
        valley_beta: The adaptor's β1 (None: from ``batch_size``).
        batch_size: Effective batch size for the rule above (None: large batch).
        max_grad_norm: Global gradient-norm clip before the adaptation. Default: 1.0.
        always_adapt: Trust ratio in groups without weight decay too. Default: False.
        first_step_kick: Start from ``g_0 = 0`` as the reference. Default: False.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 1e-4,
        alpha: float | None = None,
        valley_beta: float | None = None,
        batch_size: int | None = None,
        max_grad_norm: float | None = 1.0,
        always_adapt: bool = False,
        first_step_kick: bool = False,
    ) -> None:
        alpha, valley_beta = resolve_valley(alpha, valley_beta, batch_size)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            always_adapt=always_adapt,
        )
        set_group_valley(self, alpha, valley_beta, first_step_kick)

    #: Lamb's, and the adaptor's α and β1 (``first_step_kick`` falls back to ``defaults``).
    REQUIRED_GROUP_KEYS = (*Lamb.REQUIRED_GROUP_KEYS, *VALLEY_KEYS)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Lamb's checks, and the adaptor's keys of a group added after the constructor (the
        constructor's own groups get theirs once it has set them)."""
        super()._check_group(group)
        if "valley_alpha" in self.defaults:
            check_valley_group(group)

    def _transform_grads(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]):
        alpha, beta = group["valley_alpha"], group["valley_beta"]
        check_valley(alpha, beta, names=VALLEY_KEYS)
        states = [self.state[p] for p in params]
        for state, g_prev, a in adapt_with_state(
            states, grads, alpha, beta, group_kick(self, group)
        ):
            state["valley_prev"], state["valley_diff"] = g_prev, a
