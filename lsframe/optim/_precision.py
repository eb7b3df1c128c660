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
the model's own ``forward`` (accelerate's ``mixed_precision="bf16"`` replaces it by one that
does, keeping the original as ``_original_forward``) is beyond this switch: a closure that
knows the model runs such an evaluation through the unpatched forward
(:func:`full_precision_forwards`).
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

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


_evaluations = threading.local()


def full_precision(forward: Callable[[], Tensor], device_type: str) -> Callable[[], Tensor]:
    """``forward`` with autocast off on ``device_type`` (float32 parameters compute in float32),
    marked as a full-precision evaluation (:func:`in_full_precision_evaluation`)."""

    def evaluate() -> Tensor:
        with torch.autocast(device_type, enabled=False):
            _evaluations.depth = getattr(_evaluations, "depth", 0) + 1
            try:
                return forward()
            finally:
                _evaluations.depth -= 1

    return evaluate


def in_full_precision_evaluation() -> bool:
    """Whether a search's full-precision evaluation (:func:`full_precision`) is running."""
    return getattr(_evaluations, "depth", 0) > 0


def _precision_wrapper(fn: Any) -> bool:
    """Whether ``fn`` is one of the layers accelerate puts around a forward: its fp32 output
    conversion or torch's autocast decorator."""
    if type(fn).__name__ == "ConvertOutputsToFp32":
        return True
    code = getattr(fn, "__code__", None)
    path = code.co_filename.replace("\\", "/") if code is not None else ""
    return "/accelerate/" in path or "/torch/amp/" in path


def unpatched_forward(module: nn.Module) -> Any:
    """``module``'s forward without accelerate's layers, however often it was prepared: bound to
    ``module`` again where accelerate patched a bound method, as it is where it wrapped another
    callable (a ``torch.compile``'d module's)."""
    outer = vars(module)["forward"]
    fn = getattr(outer, "__func__", outer)
    while _precision_wrapper(fn) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
        fn = getattr(fn, "__func__", fn)
    bound = isinstance(outer, types.MethodType)
    return types.MethodType(fn, module) if bound and isinstance(fn, types.FunctionType) else fn


def patched_modules(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and the models it wraps (DDP's ``.module``, ``torch.compile``'s ``._orig_mod``)
    whose own ``forward`` accelerate replaced by one of its precision layers."""
    inner: Any = model
    while isinstance(inner, nn.Module):
        forward = vars(inner).get("forward")
        if forward is not None and _precision_wrapper(getattr(forward, "__func__", forward)):
            yield inner
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)


@contextmanager
def forwards_without_autocast(models: Iterable[nn.Module]) -> Iterator[None]:
    """Every model in ``models`` (or wrapped by one) whose forward accelerate patched with
    autocast runs its unpatched forward; the patch is put back afterwards."""
    patched: list[tuple[nn.Module, Any]] = []
    for model in models:
        for inner in patched_modules(model):
            patched.append((inner, vars(inner)["forward"]))
            inner.forward = unpatched_forward(inner)
    try:
        yield
    finally:
        for inner, forward in patched:
            inner.forward = forward


def full_precision_forwards(models: Iterable[nn.Module]) -> AbstractContextManager:
    """Inside a search's full-precision evaluation (:func:`in_full_precision_evaluation`), the
    models' forwards without the autocast accelerate patched into them
    (:func:`forwards_without_autocast`); elsewhere nothing changes, so a trial outside one sees
    the forward the backward evaluation saw."""
    if not in_full_precision_evaluation():
        return nullcontext()
    return forwards_without_autocast(models)
