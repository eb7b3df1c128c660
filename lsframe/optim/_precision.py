"""Line-search losses at full precision under reduced-precision autocast.

Under bf16 or fp16 autocast around ``opt.step`` (Lightning's ``bf16-mixed``, lsframe's fp16
plugin, a plain loop inside ``torch.autocast``) a forward rounds the weights and activations to
8 (bf16) or 11 (fp16) bits of mantissa. A fine-tuning step changes the loss by 1e-4–1e-3, below that rounding: the loss of a
trial point is then the loss at ``x`` plus rounding noise, Armijo's test compares noise, and a
search backtracks until the step no longer changes the rounded weights (a decrease of exactly 0,
which SaLSA's rule accepts: a step of ~1e-7 on MiniLM where fp32 accepts ~1e-3). So the losses a
search compares, the one at ``x`` and every trial's, are evaluated with autocast off; the
gradient, from the closure's backward, stays in the caller's precision. That costs one
forward-only evaluation at ``x`` per search, counted with the trials. Autocast entered inside
the model's own ``forward`` (accelerate's, under HF Trainer's ``bf16=True``) is beyond this
switch; lsframe's Trainer integration handles it (:mod:`lsframe.integrations._hf_precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

REDUCED = (torch.bfloat16, torch.float16)


def reduced_autocast(params: Iterable[Tensor]) -> str | None:
    """The device type of ``params`` whose autocast is on with a dtype below float32, or None."""
    for device_type in sorted({p.device.type for p in params}):
        try:
            if torch.is_autocast_enabled(device_type):
                if torch.get_autocast_dtype(device_type) in REDUCED:
                    return device_type
        except RuntimeError:  # a device type autocast does not know
            continue
    return None


def full_precision(forward: Callable[[], Tensor], device_type: str) -> Callable[[], Tensor]:
    """``forward`` with autocast off on ``device_type`` (float32 parameters compute in float32)."""

    def evaluate() -> Tensor:
        with torch.autocast(device_type, enabled=False):
            return forward()

    return evaluate
