"""bf16 under ``Trainer``: a line search compares full-precision losses, although accelerate
autocasts inside the model's ``forward``.

With ``bf16=True`` accelerate replaces the model's ``forward`` by one that enters bf16 autocast
itself (keeping the original as ``_original_forward``), and ``Trainer`` calls
``optimizer.step()`` outside any autocast. A line search therefore saw neither: its loss at x
and its trials ran in bf16, which cannot resolve a fine-tuning step's change of the loss
(:mod:`lsframe.optim._precision`). :class:`~lsframe.integrations.hf.LineSearchTrainer` enters
bf16 autocast around the step (:func:`trainer_autocast`), so the search evaluates those losses
with autocast off, and the closure runs such an evaluation through the models' unpatched
``forward`` (:func:`lsframe.optim._precision.full_precision_forwards`, as lsframe's own closure
does).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


def bf16_forwards(trainer: Any) -> bool:
    """Whether ``trainer``'s accelerator patched the model's forward with bf16 autocast
    (``bf16=True``; accelerate's own test in ``prepare_model``)."""
    accelerator = trainer.accelerator
    return bool(getattr(accelerator, "native_amp", False)) and (
        accelerator.mixed_precision == "bf16"
    )


def trainer_autocast(trainer: Any) -> AbstractContextManager:
    """bf16 autocast on the run's device when :func:`bf16_forwards`, else no context."""
    if bf16_forwards(trainer):
        return torch.autocast(trainer.args.device.type, dtype=torch.bfloat16)
    return nullcontext()
