"""Losses under several processes (``torch.distributed``): a line search decides on the losses
its closure returns, while DDP averages only the gradients, so every replica of a model must see
the same losses or each takes its own step and the replicas drift apart. lsframe's closures
average them over the processes where the model is such a replica (:func:`replicated`,
:func:`mean_over_processes`); a model each process trains alone keeps its own, and needs no
other process to take part."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn


def processes() -> int:
    """The processes of ``torch.distributed``'s default group (1 when it is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def replicated(model: nn.Module) -> bool:
    """Whether ``model`` is one replica or shard of a model that several processes train: a
    ``DistributedDataParallel`` or ``FullyShardedDataParallel`` module in it (Fabric's and
    ``torch.compile``'s wrappers hold theirs as a submodule), or ``DTensor`` parameters
    (FSDP2's ``fully_shard``); False with one process."""
    if processes() == 1:
        return False
    from torch.nn.parallel import DistributedDataParallel

    wrappers: tuple[type, ...] = (DistributedDataParallel,)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except ImportError:  # a torch built without it
        pass
    if any(isinstance(module, wrappers) for module in model.modules()):
        return True
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def mean_over_processes(loss: Tensor) -> Tensor:
    """``loss`` (detached) averaged over the default group's processes, the same bits on each
    (a sum, which every backend has, over the count); ``loss`` itself with one process."""
    count = processes()
    if count == 1:
        return loss
    total = loss.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / count
