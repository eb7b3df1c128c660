"""Reductions that stay right when parameters are sharded (FSDP2's ``fully_shard``: DTensors).

A line search decides from a few global numbers (``⟨g, d⟩``, whether every gradient is finite);
Lamb from per-tensor norms. With sharded parameters each rank holds a piece of every tensor, so
these numbers are computed on the local pieces and summed over the processes that hold the other
pieces (the mesh dimensions the tensor is sharded along), in one all-reduce per kind of sharding.
Every rank then takes the same decision. Plain tensors (one process, DDP) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

try:  # torch built without distributed support has no DTensor
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]


def local(tensor: Tensor) -> Tensor:
    """The piece of ``tensor`` this process holds (the tensor itself unless it is a DTensor)."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def _shard_groups(tensor: Tensor) -> tuple:
    if DTensor is None or not isinstance(tensor, DTensor):
        return ()
    mesh = tensor.device_mesh
    return tuple(mesh.get_group(i) for i, p in enumerate(tensor.placements) if p.is_shard())


def any_sharded(tensors: Sequence[Tensor]) -> bool:
    return any(_shard_groups(t) for t in tensors)


def reduce_sums(partial: list[Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
    """``partial[i]`` is a sum over the local piece of ``tensors[i]``: the sums over the whole
    tensors (float32 scalars; float64 when a partial sum is float64), one all-reduce per
    distinct sharding."""
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in partial) else torch.float32
    out = [p.to(dtype) for p in partial]
    by_groups: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups = _shard_groups(tensor)
        if groups:
            by_groups.setdefault(groups, []).append(i)
    for groups, indices in by_groups.items():
        stacked = torch.stack([out[i] for i in indices])
        for group in groups:
            dist.all_reduce(stacked, group=group)
        for k, i in enumerate(indices):
            out[i] = stacked[k]
    return out


def squared_norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``‖t‖²`` of each whole tensor (float32 scalars)."""
    pieces = [local(t) for t in tensors]
    return reduce_sums([p.float().square().sum() for p in pieces], tensors)


def count_nonfinite(tensors: Sequence[Tensor]) -> Tensor:
    """How many of ``tensors`` hold a non-finite entry anywhere (a scalar tensor)."""
    flags = [(~torch.isfinite(local(t))).any().float() for t in tensors]
    return torch.stack(reduce_sums(flags, tensors)).gt(0).sum()


def reshard(models: Iterable[nn.Module]) -> None:
    """Reshard every FSDP2 module (torch's ``fully_shard``) of ``models``; called after each
    forward-only evaluation of a closure. A forward under ``torch.no_grad`` leaves the root
    module's own parameters gathered (those of any module with ``reshard_after_forward=False``
    too), since no backward follows to reshard them, and the next forward reuses the gathered
    copy: a line search's move of the sharded parameters to its next trial, or back to x, would
    go unseen by those parameters. A no-op for a model without FSDP2 modules."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch built without distributed support
        return
    for model in models:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
