"""The weights of micro-batches in one optimizer step: each mean loss counts for its examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor


def examples_in(batch: Any) -> int | None:
    """The length every tensor of ``batch`` (a tensor, or a tuple, list or mapping of them,
    nested) agrees on along its first dimension; None where none has one or they disagree (a
    list of sequences of their own lengths, a count beside the inputs)."""
    lengths = {len(t) for t in _tensors(batch) if t.dim() > 0}
    return lengths.pop() if len(lengths) == 1 else None


def _tensors(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for value in batch.values() for t in _tensors(value)]
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return [t for value in batch for t in _tensors(value)]
    return []


def micro_batch_shares(sizes: list[int | None]) -> list[float] | None:
    """Each micro-batch's share of the step's examples where ``sizes`` differ (an epoch's short
    last batch among full ones: its mean loss would otherwise count as much as a full one's),
    else None: each mean counts ``1/n``. None too where a size is unknown."""
    if any(size is None for size in sizes) or len(set(sizes)) <= 1:
        return None
    total = sum(sizes)  # type: ignore[arg-type] # all known
    return [size / total for size in sizes]  # type: ignore[operator]
