"""Moving an earlier run's file or folder aside, under the first free numbered name, so that
writing the path afresh loses nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def set_aside(path: Path, numbered: Callable[[int], str]) -> Path:
    """Rename ``path`` to ``path.with_name(numbered(k))`` for the first ``k >= 1`` whose name
    is free, and return the new path (``metrics.<k>.csv``, ``<folder>.stopped-<k>``)."""
    k = 1
    while (kept := path.with_name(numbered(k))).exists():
        k += 1
    return path.rename(kept)
