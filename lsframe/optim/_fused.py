"""Fused per-tensor kernels compiled with ``torch.compile``: one pass over memory where the eager
foreach path takes several (an optimizer's ``fused=True``).

On CPU a foreach op is a C++ loop of separate per-tensor kernels, each one pass over memory: Adam
takes seven (moments, root, bias correction, ε, update), and a rule that also reads the last
direction (``SlopeTrackingAdam``) five more. Inductor fuses each kernel below into one vectorised
loop (C++ on CPU, Triton on CUDA), so a step reads and writes each tensor about twice in all.

The kernels are compiled once per process with dynamic shapes and called on flat views, with
their scalars as tensors: one graph serves every parameter and every step (another only for a
non-contiguous tensor, another dtype, or a tensor of one element). The first step pays the
compilation (tens of seconds on CPU; Inductor caches it on disk for later processes). It needs
what ``torch.compile`` needs: a C++ compiler on CPU, Triton on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_COMPILED: dict[str, Callable[..., Any]] = {}


def compiled(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` under ``torch.compile(dynamic=True)``, compiled once per process."""
    name = kernel.__qualname__
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(kernel, dynamic=True)
    return _COMPILED[name]


def flat(*tensors: Tensor) -> tuple[Tensor, ...]:
    """1-D views of ``tensors`` when all are contiguous, else the tensors themselves (a
    parameter that is a strided view has a contiguous gradient: both keep their shapes)."""
    if all(t.is_contiguous() for t in tensors):
        return tuple(t.view(-1) for t in tensors)
    return tensors


def direction_sums(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, eps: Tensor) -> Tensor:
    """``[⟨g, d⟩, ‖g‖², ‖d‖², #non-finite entries of g]`` with ``d = m / (√v + eps)``, in
    float32 (float64 for float64 tensors): one read of ``g``, ``m`` and ``v``."""
    dtype = torch.promote_types(grad.dtype, torch.float32)
    g, m, v = grad.to(dtype), exp_avg.to(dtype), exp_avg_sq.to(dtype)
    d = m / (v.sqrt() + eps.to(dtype))
    nonfinite = (~torch.isfinite(g)).sum().to(dtype)
    return torch.stack([(g * d).sum(), (g * g).sum(), (d * d).sum(), nonfinite])


def adam_step_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, scalars: Tensor
) -> None:
    """Adam in place, with ``scalars = [β1, β2, step, root, ε, keep]``:
    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``, then
    ``x ← (x − step · m / (√v / root + ε)) · keep`` (``step`` holds η, the group's multiplier
    and ``1 / (1 − β1^t)``; ``root`` is ``√(1 − β2^t)``; ``keep`` is ``1 − lr · weight_decay``,
    decoupled decay after the update): the arithmetic of ``adam_moments_``,
    ``adam_denominator``, ``addcdiv_`` and the line searches' weight decay in one pass."""
    beta1, beta2, step, root, eps, keep = scalars.to(
        torch.promote_types(param.dtype, torch.float32)
    )
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
    param.sub_(step * exp_avg / (exp_avg_sq.sqrt() / root + eps)).mul_(keep)


def scalars(values: list[float], like: Tensor) -> Tensor:
    """``values`` as a float64 tensor on ``like``'s device: a kernel's hyperparameters and step
    sizes as tensors, so that new values do not recompile it."""
    return torch.tensor(values, dtype=torch.float64).to(like.device, non_blocking=True)
