"""Losses under several processes (``torch.distributed``): a line search decides on the losses
its closure returns, while DDP averages only the gradients, so every rank must see the same
losses or each takes its own step and the replicas drift apart. lsframe's closures average them
(:func:`mean_over_processes`); a closure written by hand is checked once (:func:`losses_differ`).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def processes() -> int:
    """The processes of ``torch.distributed``'s default group (1 when it is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def mean_over_processes(loss: Tensor) -> Tensor:
    """``loss`` (detached) averaged over the default group's processes, the same bits on each
    (a sum, which every backend has, over the count); ``loss`` itself with one process."""
    count = processes()
    if count == 1:
        return loss
    total = loss.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / count


def losses_differ(loss: Tensor) -> bool:
    """Whether ``loss`` differs across the default group's processes (one all-reduce of its
    value and its negation: the largest and the smallest); False with one process."""
    if processes() == 1:
        return False
    value = loss.detach().reshape(()).to(torch.float64)
    both = torch.stack([value, -value])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return bool(both[0] != -both[1])


def warn_if_losses_differ(loss: Tensor, owner: str, stacklevel: int) -> None:
    """Warn (on rank 0) when the closure's ``loss`` differs across the processes: a closure
    that returns each rank's own loss under DDP makes each rank's search take its own step."""
    if losses_differ(loss) and dist.get_rank() == 0:
        warnings.warn(
            f"{owner}.step: the closure's loss differs across the {processes()} processes, so "
            "each would take its own step and the replicas would drift apart; return the loss "
            "averaged over the processes, the trials' too (lsframe.optim.make_closure does; "
            "checked at the first step only)",
            stacklevel=stacklevel,
        )
