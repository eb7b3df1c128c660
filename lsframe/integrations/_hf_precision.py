"""bf16 under ``Trainer``: a line search compares full-precision losses, although accelerate
autocasts inside the model's ``forward``.

With ``bf16=True`` accelerate replaces the model's ``forward`` by one that enters bf16 autocast
itself (keeping the original as ``_original_forward``), and ``Trainer`` calls
``optimizer.step()`` outside any autocast. A line search therefore saw neither: its loss at x
and its trials ran in bf16, which cannot resolve a fine-tuning step's change of the loss
(:mod:`lsframe.optim._precision`). :class:`~lsframe.integrations.hf.LineSearchTrainer` enters
bf16 autocast around the step (:func:`trainer_autocast`), so the search evaluates those losses
with autocast off, and the closure runs such an evaluation through the models' unpatched
``forward`` (:func:`original_forward_when_full_precision`).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn


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


def _precision_wrapper(fn: Any) -> bool:
    """Whether ``fn`` is one of the layers accelerate puts around a forward: its fp32 output
    conversion or torch's autocast decorator."""
    if type(fn).__name__ == "ConvertOutputsToFp32":
        return True
    code = getattr(fn, "__code__", None)
    path = code.co_filename.replace("\\", "/") if code is not None else ""
    return "/accelerate/" in path or "/torch/amp/" in path


def _unpatched(module: nn.Module) -> Any:
    """``module``'s forward without accelerate's layers, however often it was prepared."""
    fn = vars(module)["forward"]
    fn = getattr(fn, "__func__", fn)
    while _precision_wrapper(fn) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
        fn = getattr(fn, "__func__", fn)
    return types.MethodType(fn, module) if isinstance(fn, types.FunctionType) else fn


def _patched_modules(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and the models it wraps (DDP's ``.module``, ``torch.compile``'s ``._orig_mod``)
    whose forward accelerate patched."""
    inner: Any = model
    while isinstance(inner, nn.Module):
        own = vars(inner)
        if "_original_forward" in own and "forward" in own:
            yield inner
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)


@contextmanager
def original_forward_when_full_precision(
    models: Iterable[nn.Module], trainer: Any
) -> Iterator[None]:
    """While autocast is off on the run's device inside :func:`trainer_autocast` (a search's
    full-precision evaluation), every model that accelerate patched runs its unpatched forward;
    the patch is put back afterwards. Otherwise nothing changes."""
    patched: list[tuple[nn.Module, Any]] = []
    if bf16_forwards(trainer) and not torch.is_autocast_enabled(trainer.args.device.type):
        for model in models:
            for inner in _patched_modules(model):
                patched.append((inner, vars(inner)["forward"]))
                inner.forward = _unpatched(inner)
    try:
        yield
    finally:
        for inner, forward in patched:
            inner.forward = forward
