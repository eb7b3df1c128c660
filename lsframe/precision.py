"""fp16 mixed precision with loss scaling that a line search can drive (GPUs without bf16).

Lightning's ``16-mixed`` cannot drive a closure: its GradScaler runs the closure once and then
steps without it, and torch's ``GradScaler.step`` refuses closures. :class:`FP16MixedPrecision`
is a precision plugin (``trainer.plugins``) that leaves the closure to
:class:`lsframe.modules.ClosureModule` and owns only the loss scaling around it:

* every forward (the training closure, validation) runs in ``torch.autocast(dtype=float16)``;
  an lsframe line search switches it off for the loss at ``x`` and its trials, which it compares
  in fp32 (:mod:`lsframe.optim._precision`);
* ``manual_backward`` back-propagates ``scale · loss`` (:meth:`FP16MixedPrecision.pre_backward`);
* the module's closure divides the gradients by the scale in place
  (:meth:`DynamicLossScaler.unscale_`) before its non-finite check, the gradient hooks, clipping
  and the optimizer, and returns the unscaled loss; trials have no backward, so no scaling;
* a non-finite gradient after unscaling (with a finite loss) is an overflow: the closure raises
  :class:`GradientOverflow` before the optimizer changes anything, the plugin catches it, the
  step is skipped (no parameter or optimizer-state change; ``global_step`` and the scheduler
  advance, as with Lightning's GradScaler) and the scale backs off;
* the scale follows torch's GradScaler rule (:class:`DynamicLossScaler`), and its state is saved
  in the checkpoint under ``FP16MixedPrecision`` and restored on resume.

YAML (no ``trainer.precision``: the plugin is the precision)::

    trainer:
      precision: null
      plugins:
        - class_path: lsframe.precision.FP16MixedPrecision
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.optim import Optimizer

from lsframe.validation import check_int_at_least, check_interval, check_open_unit, check_positive

__all__ = ["DynamicLossScaler", "FP16MixedPrecision", "GradientOverflow", "fp16_plugin"]


class GradientOverflow(Exception):
    """Raised by the closure when the unscaled gradients are not finite: the step is skipped.

    Args:
        loss: The (finite, unscaled) loss of the step, what the skipped step returns.
    """

    def __init__(self, loss: Tensor) -> None:
        super().__init__(f"fp16 gradient overflow (loss {float(loss):.6g}); step skipped")
        self.loss = loss


class DynamicLossScaler:
    """The loss scale of :class:`torch.amp.GradScaler`, for a closure that unscales itself.

    After a step whose gradients overflowed the scale is multiplied by ``backoff_factor``; after
    ``growth_interval`` consecutive steps without overflow, by ``growth_factor``.

    Args:
        init_scale: The first scale. Default: 2**16.
        growth_factor: Factor (> 1) after ``growth_interval`` good steps. Default: 2.
        backoff_factor: Factor in (0, 1) after an overflow. Default: 0.5.
        growth_interval: Consecutive good steps before the scale grows. Default: 2000.

    Attributes:
        scale: The current scale (a Python float).
        growth_tracker: Good steps since the last change of the scale.
        overflow_steps: Steps skipped for an overflow in this run (saved with the scale).
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        check_positive(init_scale=init_scale)
        check_interval(1.0, math.inf, True, True, growth_factor=growth_factor)
        check_open_unit(backoff_factor=backoff_factor)
        check_int_at_least(1, growth_interval=growth_interval)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale = float(init_scale)
        self.growth_tracker = 0
        self.overflow_steps = 0
        self._unscaled = False  # whether this step's gradients were unscaled (a backward ran)

    def unscale_(self, optimizer: Optimizer) -> None:
        """Divide every gradient of ``optimizer`` by the scale, in place."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        self._unscaled = True

    def update(self, overflow: bool) -> None:
        """End of an optimizer step: back off after an overflow, else count a good step (and
        grow after ``growth_interval`` of them). A step without a backward changes nothing."""
        if not self._unscaled:
            return
        self._unscaled = False
        if overflow:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.overflow_steps += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker >= self.growth_interval:
            grown = self.scale * self.growth_factor
            self.scale = grown if math.isfinite(grown) else self.scale
            self.growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        """The dynamic state (plain numbers: checkpoints load with ``weights_only=True``); the
        factors and the interval come from the configuration, also on resume."""
        return {
            "scale": self.scale,
            "growth_tracker": self.growth_tracker,
            "overflow_steps": self.overflow_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state.get("growth_tracker", 0))
        self.overflow_steps = int(state.get("overflow_steps", 0))


class FP16MixedPrecision(Precision):
    """fp16 autocast with dynamic loss scaling, for :class:`lsframe.modules.ClosureModule` and
    every lsframe optimizer (line searches and plain ones). See the module docstring.

    Args:
        init_scale: The first loss scale. Default: 2**16 (as torch's GradScaler).
        growth_factor: Scale factor (> 1) after ``growth_interval`` steps without overflow.
        backoff_factor: Scale factor in (0, 1) after an overflow. Default: 0.5.
        growth_interval: Steps without overflow before the scale grows. Default: 2000.
        device: Device type for ``torch.autocast`` (``cuda``, ``cpu``). Default: the model's,
            read when the trainer connects the plugin.
    """

    precision = "16-mixed"

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        device: str | None = None,
    ) -> None:
        super().__init__()
        self.scaler = DynamicLossScaler(init_scale, growth_factor, backoff_factor, growth_interval)
        self.device = device
        self._scaled_backwards = 0  # scaled since the last unscale_: must be 0 at an update

    # ------------------------------------------------------------------------------ autocast
    def connect(self, model: Any, optimizers: list[Any], lr_schedulers: list[Any]) -> Any:
        if self.device is None:
            parameter = next(iter(model.parameters()), None)
            self.device = parameter.device.type if parameter is not None else "cpu"
        return super().connect(model, optimizers, lr_schedulers)

    @contextlib.contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        """fp16 autocast (training closure, validation, test, predict; a line search runs its
        comparisons with it off)."""
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        with torch.autocast(device, dtype=torch.float16, cache_enabled=False):
            yield

    # ------------------------------------------------------------------------------- scaling
    def pre_backward(self, tensor: Tensor, module: pl.LightningModule) -> Tensor:
        """The backward hooks see the loss; the backward gets ``scale · loss``."""
        tensor = super().pre_backward(tensor, module)
        self._scaled_backwards += 1
        return tensor * self.scaler.scale

    def unscale_(self, optimizer: Optimizer) -> None:
        """Unscale the gradients of ``optimizer`` in place (the closure calls this once per
        backward evaluation, after the last micro-batch)."""
        self.scaler.unscale_(optimizer)
        self._scaled_backwards = 0

    def _after_closure(self, model: pl.LightningModule, optimizer: Any) -> None:
        if self._scaled_backwards:
            raise RuntimeError(
                f"{type(self).__name__} scales the loss for lsframe's ClosureModule, whose closure "
                f"unscales the gradients; {type(model).__name__} does not, so its optimizer would "
                "see scaled gradients. Subclass lsframe.modules.ClosureModule, or use Lightning's "
                "precision='16-mixed' for automatic optimization."
            )
        super()._after_closure(model, optimizer)

    def optimizer_step(  # type: ignore[override]
        self,
        optimizer: Any,
        model: pl.LightningModule,
        closure: Callable[[], Any],
        **kwargs: Any,
    ) -> Any:
        """The optimizer's step, skipped on an overflow (:class:`GradientOverflow` from the
        closure, raised before the optimizer changed anything); then the scale's update."""
        try:
            output = super().optimizer_step(optimizer, model, closure, **kwargs)
        except GradientOverflow as overflow:
            optimizer.zero_grad(set_to_none=True)
            self._scaled_backwards = 0
            self.scaler.update(overflow=True)
            return overflow.loss
        self.scaler.update(overflow=False)
        return output

    # ---------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state_dict)


def fp16_plugin(trainer: pl.Trainer | None) -> FP16MixedPrecision | None:
    """The trainer's :class:`FP16MixedPrecision` plugin, or None (no trainer, other precision)."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    return plugin if isinstance(plugin, FP16MixedPrecision) else None


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as oneDNN reports it (AVX2-only CPUs do not).

    Without it torch emulates bf16 on the CPU, and bf16 autocast is slower than float32, not
    faster: a ResNet-20 step at batch 4,096 took about 190 CPU-seconds in bf16 against 30 in
    float32 on an AVX2-only AMD EPYC core, where an Intel Xeon core with native bf16 took 7.4
    (benchmarks/p2_large_batch.py). Unknown (a torch without the query): True.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def emulated_bf16(device_type: str) -> str | None:
    """Why bf16 is a bad idea on ``device_type`` here, in words: a ``"cpu"`` without native
    bf16 (:func:`native_cpu_bf16`) emulates it; None where bf16 is native or not on a CPU."""
    if device_type != "cpu" or native_cpu_bf16():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"this CPU has no native bf16 (torch reports {capability}), so bf16 is emulated and "
        "runs several times slower than float32"
    )
