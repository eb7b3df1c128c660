"""Cache-blocked eager kernels for CPU: the one-pass kernels of :mod:`lsframe.optim._fused`
without a compiler.

On CPU a foreach op runs one per-tensor kernel after another, each a full pass over memory, and
a large tensor (MiniLM's word embeddings: 47 MB) does not fit in any cache, so every pass reads
it from DRAM again. The kernels below run the same eager ops on one block of each tensor at a
time (:data:`BLOCK_BYTES`, 1 MiB: about a cache's size), through every op of the step, before
moving to the next block: each tensor comes from DRAM about once per step. The arithmetic per
element is that of the foreach path, op for op, so Adam's moments and parameters are bitwise
those of the foreach path; only the sums of products come out in another order (float32
rounding). The price is a few Python-level op calls per block: about 100 blocks on MiniLM-L6.

Measured on an AMD EPYC core (MiniLM-L6, 22.7 M parameters): Adam's moments, update and weight
decay 50 ms a step against 111 ms for ``torch.optim.AdamW(foreach=True)``, 71 ms with
SlopeTrackingAdam's alignment sums, which the foreach path takes 95 ms for on top of its Adam.
Where torch's own fused AdamW kernel can take a tensor (contiguous, one dtype), the line
searches' Adam step uses it instead of :func:`adam_step_`
(:func:`lsframe.optim.adam_moments.one_pass_adam_step`): compiled C++, one pass, no Python per
block; the blocked sums stay, since torch has no kernel for them.
On CUDA the foreach kernels are few launches that stream memory at full bandwidth; blocking
would only add launches, so :data:`BLOCK_BYTES` names CPU alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

#: bytes of each tensor one block holds, per device type; a type not listed is never blocked
BLOCK_BYTES: dict[str, int] = {"cpu": 2**20}


def blocked_on(tensors: list[Tensor]) -> bool:
    """Whether every tensor is on a device type that :data:`BLOCK_BYTES` lists."""
    return bool(tensors) and all(t.device.type in BLOCK_BYTES for t in tensors)


def blocks(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Consecutive blocks of the tensors, as views: slices of :data:`BLOCK_BYTES` of flat
    tensors (the first one's element size), or the tensors whole when one is not flat (a
    strided view: its block would be a copy, and in-place ops on a copy are lost)."""
    first = tensors[0]
    if any(t.dim() != 1 for t in tensors):
        yield tensors
        return
    size = max(BLOCK_BYTES.get(first.device.type, 0) // first.element_size(), 1)
    for start in range(0, first.numel(), size):
        yield tuple(t[start : start + size] for t in tensors)


def direction_sums(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, eps: float) -> Tensor:
    """``[⟨g, d⟩, ‖g‖², ‖d‖²]`` with ``d = m / (√v + eps)``, block by block: ``d`` in the
    moments' dtype as the foreach path computes it, the sums in float32 (float64 for float64
    tensors). Flat tensors (:func:`lsframe.optim._fused.flat`) are blocked.

    Unlike :func:`lsframe.optim._fused.direction_sums` it does not count non-finite gradient
    entries (a separate pass: as much time as all the rest on a 4 M-parameter model): a
    non-finite entry makes ``‖g‖²`` non-finite, so a finite ``‖g‖²`` proves every entry finite,
    and only a non-finite one needs the exact check."""
    dtype = torch.promote_types(grad.dtype, torch.float32)
    dots: list[Tensor] = []
    squares: list[Tensor] = []
    direction_squares: list[Tensor] = []
    scratch = None
    for g, m, v in blocks(grad, exp_avg, exp_avg_sq):
        if scratch is None or scratch.numel() < v.numel():
            scratch = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
        d = scratch[: v.numel()].view(v.shape)
        torch.sqrt(v, out=d)
        d.add_(eps)
        torch.div(m, d, out=d)
        g, d = g.reshape(-1).to(dtype), d.reshape(-1).to(dtype)
        dots.append(torch.dot(g, d))
        squares.append(torch.dot(g, g))
        direction_squares.append(torch.dot(d, d))
    if not dots:
        return torch.zeros(3, dtype=dtype, device=grad.device)
    return torch.stack(dots + squares + direction_squares).view(3, -1).sum(1)


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    betas: tuple[float, float],
    alpha: float,
    root: float,
    eps: float,
    keep: float | None,
) -> None:
    """Adam in place, block by block, op for op as the foreach path
    (:func:`~lsframe.optim._functional.adam_moments_`,
    :func:`~lsframe.optim._functional.adam_denominator`, ``addcdiv_`` of
    :meth:`~lsframe.optim.rules.Direction.move`, the line searches' weight decay):
    ``m ← lerp(m, g, 1 − β1)``, ``v ← β2 v + (1 − β2) g²``,
    ``x ← x + alpha · m / (√v / root + ε)`` (skipped when ``alpha`` is 0, as ``move`` does),
    then ``x ← x · keep`` (None: no decay)."""
    beta1, beta2 = betas
    scratch = None
    for x, g, m, v in blocks(param, grad, exp_avg, exp_avg_sq):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if alpha != 0.0:
            if scratch is None or scratch.numel() < v.numel():
                scratch = torch.empty(v.numel(), dtype=v.dtype, device=v.device)
            denom = scratch[: v.numel()].view(v.shape)
            torch.sqrt(v, out=denom)
            denom.div_(root).add_(eps)
            x.addcdiv_(m, denom, value=alpha)
        if keep is not None:
            x.mul_(keep)
