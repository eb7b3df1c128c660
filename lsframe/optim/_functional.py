"""Multi-tensor kernels shared by the line-search optimizers (``torch._foreach_*`` where one exists).

Everything here works on flat lists of tensors and returns Python floats for the few scalars a
step rule needs, so that every rank and every strategy takes decisions from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lsframe.optim._sharded import any_sharded, count_nonfinite, local, reduce_sums, squared_norms


def sum_of_squares(tensors: Sequence[Tensor]) -> float:
    """``Σ_i ‖t_i‖²`` over all tensors, accumulated in float32 or wider."""
    if not tensors:
        return 0.0
    if any_sharded(tensors):
        return float(torch.stack(squared_norms(tensors)).sum())
    norms = torch._foreach_norm(list(tensors))
    return float(torch.stack([n.float() for n in norms]).square().sum())


#: devices where a small model's step is bound by the host's dispatches (a kernel launch per
#: operator): there :func:`all_finite` and :func:`inner_product` batch the tensors in foreach
#: kernels instead of dispatching per tensor
BATCHED_ON: frozenset[str] = frozenset({"cuda", "xpu", "mps"})


def plain_float32(tensors: Sequence[Tensor]) -> bool:
    """Whether every tensor is a plain float32 tensor (no DTensor): what the batched sums take."""
    return all(local(t) is t and t.dtype == torch.float32 for t in tensors)


def sum_of_entries(tensors: list[Tensor]) -> Tensor:
    """The sum of every entry of every tensor as a 0-d tensor: one concatenation (a transient
    copy) and one sum, where a dot or sum per tensor dispatches an operator per tensor."""
    return torch.cat([t.reshape(-1) for t in tensors]).sum()


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of every tensor is finite (one sync; two when the first is not sure).

    On CPU it reads each tensor's minimum and maximum (``aminmax``: NaN and ±inf reach them,
    and finite values cannot overflow), compared in float64: about 5× faster there than a
    max-norm (no ``abs`` pass). On a GPU (:data:`BATCHED_ON`) a step of a small model is
    bound by the host's dispatches, so it first takes :func:`sum_of_squares` (one foreach
    norm): a finite sum proves every entry finite (a NaN or ±inf propagates into it); a
    non-finite one may be an overflow of finite values (a sum of squares above ~1e38 in float32),
    so the per-tensor check then decides."""
    if not tensors:
        return True
    if any_sharded(tensors):  # local pieces can be empty
        return int(count_nonfinite(tensors)) == 0
    if tensors[0].device.type in BATCHED_ON and math.isfinite(sum_of_squares(tensors)):
        return True
    extremes = [torch.stack(torch.aminmax(t)).double() for t in tensors if t.numel()]
    return not extremes or math.isfinite(float(torch.stack(extremes).abs().max()))


# Bytes of quotient ``num / den`` one foreach division makes at once: on CUDA few launches and a
# bounded transient; on CPU a cache-sized piece whose memory the next piece reuses (a whole
# model's quotient at once is slower there: fresh pages and no cache reuse).
QUOTIENT_BYTES = {"cuda": 64 * 2**20, "cpu": 2**20}


def quotient_pieces(tensors: Sequence[Tensor], budget: int) -> list[slice]:
    """Consecutive runs of ``tensors`` of at most ``budget`` bytes (a bigger tensor alone)."""
    runs, start, size = [], 0, 0
    for i, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        if i > start and size + nbytes > budget:
            runs.append(slice(start, i))
            start, size = i, 0
        size += nbytes
    return [*runs, slice(start, len(tensors))]


def inner_product(
    grads: Sequence[Tensor], num: Sequence[Tensor], den: Sequence[Tensor] | None = None
) -> Tensor:
    """``Σ_i ⟨grads_i, num_i / den_i⟩`` (``den`` None means 1) as a 0-d tensor: no host sync.

    The quotient is taken by foreach divisions in the tensors' own dtype, a piece of at most
    :data:`QUOTIENT_BYTES` at a time (the transient memory; none without ``den``); each inner
    product in ``promote_types(grads_i.dtype, float32)`` (float32 at least for bf16/fp16
    gradients, float64 kept for float64 models), the per-tensor products summed in float32, or
    float64 when one is. Sharded tensors (DTensors) count whole, one all-reduce per kind of
    sharding. ``grads`` must not be empty. On a GPU (:data:`BATCHED_ON`), float32 tensors that
    are not DTensors take one foreach product and :func:`sum_of_entries` per piece instead of a
    dot per tensor.
    """
    sharded = any_sharded(grads)
    here = [local(t) for t in grads] if sharded else list(grads)
    num = [local(t) for t in num] if sharded else list(num)
    den = None if den is None else [local(t) for t in den] if sharded else list(den)
    budget = QUOTIENT_BYTES.get(num[0].device.type, QUOTIENT_BYTES["cuda"])
    every = [*here, *num, *(den or [])]
    if not sharded and num[0].device.type in BATCHED_ON and plain_float32(every):
        # pieces of half the budget: the products (made in the quotient) and their concatenation
        dots = []
        for span in quotient_pieces(num, budget // 2):
            if den is None:
                products = torch._foreach_mul(here[span], num[span])
            else:
                products = torch._foreach_div(num[span], den[span])
                torch._foreach_mul_(products, here[span])
            dots.append(sum_of_entries(products))
            del products
        return torch.stack(dots).sum()
    if den is None:
        quotients = [num]
        spans = [slice(0, len(num))]
    else:
        spans = quotient_pieces(num, budget)
        quotients = (torch._foreach_div(num[span], den[span]) for span in spans)
    dots = []
    for span, quotient in zip(spans, quotients):
        for g, d in zip(here[span], quotient):
            dtype = torch.promote_types(g.dtype, torch.float32)
            dots.append(torch.dot(g.reshape(-1).to(dtype), d.reshape(-1).to(dtype)))
        del quotient  # freed before the next piece is divided
    if sharded:
        dots = reduce_sums(dots, grads)
    return torch.stack(dots).sum()


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
    exp_avg_sqs: Sequence[Tensor], bias_correction2: float | Sequence[float], eps: float
) -> list[Tensor]:
    """``√v̂ + ε`` with ``v̂ = v / bias_correction2`` (a transient list, not kept in state): one
    correction for all, or one per tensor."""
    denom = torch._foreach_sqrt(list(exp_avg_sqs))
    corrections = set(
        [bias_correction2] if isinstance(bias_correction2, float | int) else bias_correction2
    )
    if len(corrections) == 1:  # one scalar divide: the foreach path's op where counts agree
        torch._foreach_div_(denom, math.sqrt(corrections.pop()))
    else:
        torch._foreach_div_(denom, [math.sqrt(b) for b in bias_correction2])
    torch._foreach_add_(denom, eps)
    return denom


def bias_correction(beta: float, step: int) -> float:
    """``1 − β^t`` (``t ≥ 1``)."""
    return 1 - beta ** max(step, 1)
