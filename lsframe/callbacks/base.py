"""The closure-callback protocol: two hooks inside lsframe's optimizer step, and the module that
drives them.

Lightning calls a callback's usual hooks itself, but it never sees the inside of an optimizer
step. A callback that adds a loss term to every closure evaluation, or rewrites the gradients
before the optimizer uses them, subclasses :class:`ClosureCallback`; a LightningModule that
drives those hooks declares it by inheriting :class:`ClosureHooks`
(:class:`lsframe.modules.ClosureModule` does). The pairing is checked when a fit starts: a
ClosureCallback on any other module, and a plain callback that merely has a method of a hook's
name, are refused instead of silently doing nothing.

This file imports nothing from :mod:`lsframe.modules`: the modules depend on this protocol,
never the reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

#: The hooks a :class:`ClosureHooks` module calls on each :class:`ClosureCallback`.
CLOSURE_HOOKS = ("closure_loss", "on_gradients_ready")


class ClosureHooks(ABC):
    """Declares that a LightningModule drives the hooks of :class:`ClosureCallback`.

    Such a module runs manual optimization through one closure per optimizer step and, for each
    ClosureCallback in ``trainer.callbacks`` (in that order):

    * adds ``closure_loss(trainer, module)`` to the loss of every closure evaluation, trial
      evaluations included;
    * calls ``on_gradients_ready(trainer, module, optimizer)`` once per optimizer step, right
      after its own :meth:`on_gradients_ready`, after the full backward and before clipping and
      the optimizer's use of the gradients (after clipping for a callback whose
      ``after_clipping`` is True).

    (:func:`call_closure_loss` and :func:`call_on_gradients_ready` do the calling, as
    Lightning's ``_call_callback_hooks`` does for its hooks.) Every lsframe optimizer and every
    first-order torch optimizer runs the backward closure once per step, so the gradient hooks
    fire exactly once per step; an optimizer that runs it several times per step, like LBFGS,
    fires them each time (stateful gradient callbacks such as ValleyExploration then advance
    once per call; DPS masks every call's gradients but scores the step and chooses its masks
    once).

    The callbacks may also rely on the members declared here.

    Attributes:
        model: The network being trained.
        accumulate_grad_batches: Micro-batches per optimizer step.
    """

    model: nn.Module
    accumulate_grad_batches: int

    @abstractmethod
    def compute_loss(self, batch: Any) -> Tensor:
        """Mean task loss of one micro-batch, without callback terms."""

    @abstractmethod
    def num_optimizer_steps(self) -> int:
        """Optimizer steps in the whole run."""

    @abstractmethod
    def on_gradients_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """The module's own once-per-step gradient hook; the callbacks' hooks run after it,
        whether or not an override calls ``super()``."""


def require_closure_module(callback: pl.Callback, pl_module: pl.LightningModule) -> None:
    """Raise a TypeError unless ``pl_module`` is a :class:`ClosureHooks` module in manual
    optimization (an lsframe ClosureModule)."""
    if not isinstance(pl_module, ClosureHooks) or pl_module.automatic_optimization:
        raise TypeError(
            f"{type(callback).__name__} needs an lsframe ClosureModule (a module that drives the "
            "closure_loss and on_gradients_ready hooks of lsframe.callbacks.ClosureCallback); "
            f"got {type(pl_module).__name__}"
        )


def check_closure_callbacks(callbacks: Iterable[pl.Callback]) -> None:
    """Raise a TypeError for a callback that defines a method named like a closure hook but is
    not a :class:`ClosureCallback`: the hooks are dispatched to ClosureCallbacks only, so it would
    never be called."""
    for callback in callbacks:
        if isinstance(callback, ClosureCallback):
            continue
        named = [hook for hook in CLOSURE_HOOKS if callable(getattr(callback, hook, None))]
        if named:
            raise TypeError(
                f"trainer.callbacks: {type(callback).__name__} defines {' and '.join(named)} but "
                "is not a ClosureCallback, so ClosureModule would never call it; subclass "
                "lsframe.callbacks.ClosureCallback"
            )


class ClosureCallback(pl.Callback):
    """A Lightning callback with two more hooks, called from inside lsframe's closure.

    Override either hook; both do nothing by default. A subclass that overrides :meth:`setup`
    calls ``super().setup(trainer, pl_module, stage)`` first, which refuses (TypeError) to fit a
    module that does not drive the hooks (see :class:`ClosureHooks`).

    Example::

        class L2Penalty(ClosureCallback):
            def closure_loss(self, trainer, pl_module):
                return 1e-4 * sum(p.square().sum() for p in pl_module.model.parameters())
    """

    #: Whether :meth:`on_gradients_ready` runs after the module's gradient clipping (the
    #: ``gradient_clip_val`` option) instead of before it: what a reference applies inside its
    #: optimizer (ChildTuning's mask and 1/p scale) sees the clipped gradient. The callbacks
    #: before clipping run first, then those after it, each in the order of
    #: ``trainer.callbacks``.
    after_clipping: ClassVar[bool] = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail early when fitting a module that would never call the closure hooks."""
        if stage == "fit":
            require_closure_module(self, pl_module)

    def closure_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """A term added to the loss of every closure evaluation of a step, the forward-only trial
        evaluations of a line search included (so it is part of what the search compares), and
        back-propagated with it. None adds nothing."""
        return None

    def on_gradients_ready(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Called once per optimizer step, after the full backward over all micro-batches (loss
        terms included) and before gradient clipping (after it with :attr:`after_clipping`) and
        the optimizer's use of the gradients: what it leaves in ``p.grad`` is what the optimizer
        steps on."""


def closure_callbacks(trainer: pl.Trainer | None) -> list[ClosureCallback]:
    """The ClosureCallbacks of ``trainer``, in the order of ``trainer.callbacks``."""
    callbacks = trainer.callbacks if trainer is not None else []
    return [c for c in callbacks if isinstance(c, ClosureCallback)]


def call_closure_loss(trainer: pl.Trainer | None, pl_module: pl.LightningModule) -> Tensor | None:
    """The sum of the ClosureCallbacks' ``closure_loss`` terms (None when none gives one)."""
    total = None
    for callback in closure_callbacks(trainer):
        term = callback.closure_loss(trainer, pl_module)
        if term is not None:
            total = term if total is None else total + term
    return total


def call_on_gradients_ready(
    trainer: pl.Trainer | None,
    pl_module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    after_clipping: bool = False,
) -> None:
    """Call ``on_gradients_ready`` of each ClosureCallback whose
    :attr:`~ClosureCallback.after_clipping` is ``after_clipping``, in order."""
    for callback in closure_callbacks(trainer):
        if bool(getattr(callback, "after_clipping", False)) == after_clipping:
            callback.on_gradients_ready(trainer, pl_module, optimizer)


def migrate_state_keys(callbacks: Iterable[pl.Callback], states: dict[Any, Any]) -> None:
    """Move, in place, a state a checkpoint keeps under an older key of its callback (the
    callback's ``legacy_state_keys``, e.g. EWC's class name before its settings joined its
    ``state_key``) to the callback's present ``state_key``, so Lightning restores it (it looks
    up ``state_key`` only) instead of warning that a saved callback is missing."""
    for callback in callbacks:
        if callback.state_key in states:
            continue
        for old in getattr(callback, "legacy_state_keys", ()):
            if old in states:
                states[callback.state_key] = states.pop(old)
                break
