"""Multi-tensor kernels shared by the line-search optimizers (``torch._foreach_*`` where one exists).

Everything here works on flat lists of tensors and returns Python floats for the few scalars a
step rule needs, so that every rank and every strategy takes decisions from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lsframe.optim._sharded import any_sharded, count_nonfinite, squared_norms


def sum_of_squares(tensors: Sequence[Tensor]) -> float:
    """``Σ_i ‖t_i‖²`` over all tensors, accumulated in float32 or wider."""
    if not tensors:
        return 0.0
    if any_sharded(tensors):
        return float(torch.stack(squared_norms(tensors)).sum())
    norms = torch._foreach_norm(list(tensors))
    return float(torch.stack([n.float() for n in norms]).square().sum())


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of every tensor is finite (one reduction per tensor, one sync).

    Uses the max-norm, which cannot overflow (a sum of squares would for norms above ~1e19, or
    above 65504 in float16)."""
    if not tensors:
        return True
    if any_sharded(tensors):  # local pieces can be empty, which the max-norm refuses
        return int(count_nonfinite(tensors)) == 0
    norms = torch._foreach_norm(list(tensors), ord=math.inf)
    return math.isfinite(float(torch.stack([n.float() for n in norms]).max()))


def adam_moments_(
    grads: Sequence[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    beta1: float,
    beta2: float,
) -> None:
    """``m ← β1 m + (1−β1) g`` and ``v ← β2 v + (1−β2) g²`` in place."""
    torch._foreach_lerp_(exp_avgs, list(grads), 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, list(grads), list(grads), 1 - beta2)


def adam_denominator(
    exp_avg_sqs: Sequence[Tensor], bias_correction2: float, eps: float
) -> list[Tensor]:
    """``√v̂ + ε`` with ``v̂ = v / bias_correction2`` (a transient list, not kept in state)."""
    denom = torch._foreach_sqrt(list(exp_avg_sqs))
    torch._foreach_div_(denom, math.sqrt(bias_correction2))
    torch._foreach_add_(denom, eps)
    return denom


def bias_correction(beta: float, step: int) -> float:
    """``1 − β^t`` (``t ≥ 1``)."""
    return 1 - beta ** max(step, 1)
