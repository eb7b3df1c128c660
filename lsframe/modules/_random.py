"""Random states: one step's (restored before each closure evaluation) and a run's (checkpointed).

Lightning does not put the random number generators in a checkpoint, so a resumed run would draw
other dropout masks than the uninterrupted one. :class:`ClosureModule` saves the generators with
:func:`random_states` and restores them with :func:`set_random_states` just before training
resumes, which makes a resumed trajectory bit-identical on the CPU in deterministic mode.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


class StepRandomState:
    """The random state at the start of an optimizer step, restorable before each evaluation."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def random_states(device: torch.device) -> dict[str, Any]:
    """The torch (CPU and ``device``'s CUDA), Python and NumPy generator states."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _numpy_state() -> tuple:
    # as torch and Python types: Lightning loads checkpoints with weights_only=True
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, float(cached)


def set_random_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`random_states` returned (CUDA only on a CUDA device)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
