"""bf16 under ``Trainer``: a line search compares full-precision losses, although accelerate
autocasts inside the model's ``forward``.

With ``bf16=True`` accelerate replaces the model's ``forward`` by one that enters bf16 autocast
itself (keeping the original as ``_original_forward``), and ``Trainer`` calls
``optimizer.step()`` outside any autocast. A line search therefore saw neither: its loss at x
and its trials ran in bf16, which cannot resolve a fine-tuning step's change of the loss
(:mod:`lsframe.optim._precision`). :class:`~lsframe.integrations.hf.LineSearchTrainer` enters
bf16 autocast around the step (:func:`trainer_autocast`), so the search evaluates those losses
with autocast off, and the closure runs such an evaluation through the models' original
``forward`` (:func:`original_forward_when_full_precision`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn


def trainer_autocast(trainer: Any) -> AbstractContextManager:
    """bf16 autocast on the run's device when ``trainer``'s accelerator runs the forwards in bf16
    (``bf16=True``), else no context."""
    accelerator = trainer.accelerator
    if getattr(accelerator, "native_amp", False) and accelerator.mixed_precision == "bf16":
        return torch.autocast(trainer.args.device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def original_forward_when_full_precision(
    models: Iterable[nn.Module], device_type: str
) -> Iterator[None]:
    """While autocast is off on ``device_type`` (a search's full-precision evaluation inside
    :func:`trainer_autocast`), every model and wrapped ``.module`` that accelerate patched runs
    its original ``forward``; the patch is put back afterwards. Under autocast, nothing changes."""
    patched: list[tuple[nn.Module, Any]] = []
    if not torch.is_autocast_enabled(device_type):
        for model in models:
            inner: Any = model
            while isinstance(inner, nn.Module):
                own = vars(inner)
                if "_original_forward" in own and "forward" in own:
                    patched.append((inner, own["forward"]))
                    inner.forward = own["_original_forward"]
                inner = getattr(inner, "module", None)
    try:
        yield
    finally:
        for inner, forward in patched:
            inner.forward = forward
