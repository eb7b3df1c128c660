"""LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
ICLR 2020, Alg. 2), and the contract :class:`Lamb`, :class:`~lsframe.optim.ALTO` and
:class:`~lsframe.optim.AdamE` share with the line searches
(:class:`~lsframe.optim._saved_state.CheckedOptimizer`):

* **Every param group is checked**, the constructor's and any added later with
  ``add_param_group``, by the checks of the constructor's arguments: a bad value is refused with
  one :class:`~lsframe.errors.ConfigError` line naming the group and the key
  (``Lamb: param group 0: lr must be >= 0, got -0.05``; the constructor's ``lr`` must be
  positive), and a refused group leaves the optimizer as it was.
* **A state dict says which optimizer saved it** (``param_groups[0]["saved_by"]``, as the line
  searches stamp theirs), and another optimizer's, or one saved for other parameters, is
  refused with a :class:`~lsframe.errors.DataError`
  (:func:`~lsframe.optim._saved_state.state_to_load`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lsframe.optim._dtypes import check_real_parameters
from lsframe.optim._saved_state import CheckedOptimizer
from lsframe.optim._sharded import any_sharded, local, squared_norms
from lsframe.validation import (
    as_tuple,
    check_bool,
    check_non_negative,
    check_numbers,
    check_positive,
    check_unit,
)


def check_adam_values(values: Mapping[str, Any]) -> None:
    """Adam's hyperparameters in ``values`` (the constructor's arguments or a param group):
    ``lr`` > 0 (a param group's ≥ 0: Lightning's gradual unfreezing adds groups at lr 0 during
    a warmup from 0), ``betas`` two numbers in [0, 1), ``eps`` and ``weight_decay`` >= 0."""
    if "params" in values:
        check_non_negative(lr=values["lr"])
    else:
        check_positive(lr=values["lr"])
    betas = values["betas"]
    check_numbers("betas", betas, 2, "a list of 2 numbers (beta1, beta2)")
    check_unit(**{"betas[0]": betas[0], "betas[1]": betas[1]})
    check_non_negative(eps=values["eps"], weight_decay=values["weight_decay"])


class Lamb(CheckedOptimizer, Optimizer):
    """LAMB: Adam's direction with a per-tensor trust ratio (You et al., "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020, Alg. 2).

    For each parameter tensor ``x`` (paper, Alg. 2, with φ the identity)::

        m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
        r = m̂ / (√v̂ + ε) + λ x            (m̂, v̂ bias-corrected)
        x ← x − η · (‖x‖ / ‖r‖) · r         (trust ratio 1 when either norm is 0)

    Choices, compared with ``timm.optim.Lamb`` (the same unless stated):

    * bias correction on (``bias_correction``);
    * the gradient is clipped to global norm ``max_grad_norm`` (1.0) over all parameters before
      the moments, as timm and the paper's BERT recipe; ``p.grad`` is left untouched (the
      clipped copy is internal);
    * the trust ratio applies only to groups with ``weight_decay != 0`` unless ``always_adapt``
      (timm's ``always_adapt=False``; the ALTO reference does the same), so biases and norms in a
      ``no_decay`` group take plain Adam steps;
    * ``trust_clip`` optionally caps the ratio (timm's ``trust_clip`` caps it at 1.0); off here.

    Args:
        params: Parameters or param groups.
        lr: Step size η. Default: 1e-3.
        betas: ``(β1, β2)``. Default: (0.9, 0.999).
        eps: ε. Default: 1e-6.
        weight_decay: λ, added to the update before the trust ratio. Default: 0.01.
        max_grad_norm: Global gradient-norm clip (None: off). Default: 1.0.
        always_adapt: Apply the trust ratio in groups without weight decay too. Default: False.
        trust_clip: Upper bound of the trust ratio (None: no bound). Default: None.
        bias_correction: Bias-correct the moments. Default: True.

    Example::

        opt = Lamb(model.parameters(), lr=2e-3)
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = 1.0,
        always_adapt: bool = False,
        trust_clip: float | None = None,
        bias_correction: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            always_adapt=always_adapt,
            trust_clip=trust_clip,
            bias_correction=bias_correction,
            max_grad_norm=max_grad_norm,
        )
        # the arguments, by the rules every group meets (Lamb's: a subclass adds its own keys
        # after torch has built the groups, see ALTO)
        Lamb._check_group(self, defaults)
        defaults["betas"] = as_tuple(betas)
        super().__init__(params, defaults)

    #: The group keys a step reads without a fallback: a state dict to load must carry them
    #: (``max_grad_norm`` falls back to ``defaults`` for a state from before it was one).
    REQUIRED_GROUP_KEYS: tuple[str, ...] = (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "always_adapt",
        "trust_clip",
        "bias_correction",
    )

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ConfigError naming the first bad hyperparameter of ``group`` (or of the
        constructor's arguments): the same rules wherever a value is given."""
        check_adam_values(group)
        check_bool(always_adapt=group["always_adapt"], bias_correction=group["bias_correction"])
        check_positive(
            allow_none=True, max_grad_norm=group["max_grad_norm"], trust_clip=group["trust_clip"]
        )

    def _check_new_params(self, params: list[Tensor]) -> None:
        check_real_parameters(params, type(self).__name__)

    def _max_grad_norm(self) -> float | None:
        """The clip of the global norm: one value over all groups (a state dict from before it
        was a group key: the constructor's)."""
        values = {g.get("max_grad_norm", self.defaults["max_grad_norm"]) for g in self.param_groups}
        if len(values) > 1:
            raise ValueError(
                f"{type(self).__name__}: param groups have different max_grad_norm "
                f"({sorted(values, key=str)}), but one clip of the global norm uses one value"
            )
        return values.pop() if values else None

    def _clipped_grads(self) -> list[list[Tensor]]:
        """Per group, copies of the gradients scaled to global norm ``max_grad_norm``."""
        grads = [[p.grad for p in g["params"] if p.grad is not None] for g in self.param_groups]
        flat = [t for group in grads for t in group]
        if any(t.is_sparse for t in flat):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        max_norm = self._max_grad_norm()
        if max_norm is None or not flat:
            return [[t.clone() for t in group] for group in grads]
        if any_sharded(flat):  # FSDP: the norm over every piece; scale each local piece
            norm = torch.stack(squared_norms(flat)).sum().sqrt()
            scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            copies = [[t.clone() for t in group] for group in grads]
            torch._foreach_mul_([local(t) for group in copies for t in group], scale)
            return copies
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(flat)))
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        return [torch._foreach_mul(group, scale) if group else [] for group in grads]

    def _transform_grads(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]):
        """Hook for subclasses (ALTO): change the (clipped) gradients in place."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, grads in zip(self.param_groups, self._clipped_grads()):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            self._transform_grads(group, params, grads)
            self._lamb_update(group, params, grads)
        return loss

    def _lamb_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]):
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        # per tensor: a parameter may get its first gradient later than the rest of its group
        corrected = group["bias_correction"]
        bc1 = [1.0 - beta1 ** s["step"] if corrected else 1.0 for s in states]
        bc2 = [1.0 - beta2 ** s["step"] if corrected else 1.0 for s in states]
        denom = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(m, bc1)
        torch._foreach_div_(update, denom)
        del denom
        decay = group["weight_decay"]
        if decay != 0:
            torch._foreach_add_(update, params, alpha=decay)
        if decay != 0 or group["always_adapt"]:
            sharded = any_sharded(params)
            if sharded:  # FSDP: each tensor's norm over all its pieces
                w_norms = [n.sqrt() for n in squared_norms(params)]
                r_norms = [n.sqrt() for n in squared_norms(update)]
            else:
                w_norms = torch._foreach_norm(params)
                r_norms = torch._foreach_norm(update)
            ratios = [
                torch.where((w > 0) & (r > 0), w / r, torch.ones_like(w))
                for w, r in zip(w_norms, r_norms)
            ]
            if group["trust_clip"] is not None:
                ratios = [torch.clamp(t, max=group["trust_clip"]) for t in ratios]
            torch._foreach_mul_([local(u) for u in update] if sharded else update, ratios)
        torch._foreach_add_(params, update, alpha=-group["lr"])
