"""lsframe's closure: ``closure(backward: bool = True) -> Tensor``, and its helper for plain loops.

Every lsframe line search calls its closure with an argument (torch optimizers call it with none):

* ``closure(backward=True)`` (the default) zeroes the gradients, computes the loss at the current
  parameters, back-propagates it and returns the loss: one call per step, at the start.
* ``closure(backward=False)`` only computes the loss, under :func:`torch.no_grad`, and leaves the
  gradients alone: the line search's forward-only trial evaluations.

A torch-style closure, ``closure()`` that always calls ``backward`` (as written for LBFGS), cannot
evaluate the trials: a line search refuses it with :class:`ClosureContractError` before it runs.

:func:`make_closure` builds the closure in a plain PyTorch loop from a model, a batch and a loss
(the model's own ``model(**batch).loss``, a criterion such as ``nn.CrossEntropyLoss()`` on an
``(inputs, target)`` batch, or any ``loss_fn(model, batch)``). The random state (CPU, and the CUDA
device's) is taken when the closure is built and restored before every evaluation, so all
evaluations of one step, the trials included, see the same dropout masks; BatchNorm running
statistics move once per step, in the first backward evaluation, never in a trial.
:class:`lsframe.modules.ClosureModule` builds its closure on the same random state, and
:mod:`lsframe.integrations.hf` builds one from Hugging Face ``Trainer``'s loss.

Example::

    opt = SaLSA(model.parameters())
    for batch in loader:  # a Hugging Face model: the loss is model(**batch).loss
        opt.step(make_closure(model, batch, opt))

    for x, y in loader:  # a criterion on (inputs, target)
        opt.step(make_closure(model, (x, y), opt, criterion=nn.CrossEntropyLoss()))

    # any loss of (model, batch):
    closure = make_closure(model, batch, opt, loss_fn=lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lsframe.errors import ConfigError
from lsframe.optim._precision import full_precision_forwards
from lsframe.optim._processes import mean_over_processes, replicated
from lsframe.optim._sharded import reshard

__all__ = [
    "ClosureContractError",
    "LossClosure",
    "NormStatistics",
    "StepRandomState",
    "check_closure",
    "hf_loss",
    "make_closure",
]

CONTRACT = (
    "lsframe's line searches take closure(backward: bool = True) -> Tensor: backward=True zeroes "
    "the gradients, computes the loss and back-propagates it; backward=False only computes the "
    "loss under torch.no_grad() (the forward-only trials). Build it with "
    "lsframe.optim.make_closure(model, batch, optimizer, loss_fn=... or criterion=...), or pass "
    "the forward-only loss separately as step(closure, forward=...); in Hugging Face Trainer use "
    "lsframe.integrations.hf.LineSearchTrainer"
)


class ClosureContractError(ConfigError, TypeError):
    """A line search was handed no closure, or one that does not take ``backward``.

    A :class:`TypeError` (the call does not fit) and an lsframe :class:`~lsframe.errors.ConfigError`;
    the message states the contract ``closure(backward: bool = True) -> Tensor``.
    """


def check_closure(closure: Callable[..., Tensor] | None, owner: str) -> None:
    """Raise :class:`ClosureContractError` unless ``closure`` can be called as
    ``closure(backward=False)`` (a closure whose signature cannot be read is let through)."""
    if closure is None:
        raise ClosureContractError(
            f"{owner}.step needs a closure: {CONTRACT} (a GradScaler's step calls step() without "
            "one: fp16 loss scaling cannot drive a line search, use bf16 autocast or fp32)"
        )
    try:
        signature = inspect.signature(closure)
    except (TypeError, ValueError):  # a builtin or an extension type: nothing to read
        return
    try:
        signature.bind(backward=False)
    except TypeError:
        raise ClosureContractError(
            f"{owner}.step got a closure that takes no 'backward' argument "
            f"(signature {signature}), as written for torch's LBFGS; it cannot evaluate the "
            f"line search's trials without back-propagating. {CONTRACT}"
        ) from None


def check_loss(loss: Any, owner: str, backward: bool) -> None:
    """Raise :class:`ClosureContractError` unless ``loss`` is what a closure returns: the mean
    loss as a one-element floating-point tensor, with a graph when it is to be back-propagated
    (metadata only: no synchronisation). ``owner`` names the function that computed it."""
    rule = f"{owner} must return the mean loss as a 0-dim floating-point tensor"
    if not isinstance(loss, Tensor):
        raise ClosureContractError(f"{rule}, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ClosureContractError(
            f"{rule}, got a tensor of shape {tuple(loss.shape)} (reduce it, e.g. with .mean())"
        )
    if not loss.is_floating_point():
        raise ClosureContractError(f"{rule}, got a tensor of dtype {loss.dtype}")
    if backward and not loss.requires_grad:
        raise ClosureContractError(
            f"{owner} returned a loss with no gradient (requires_grad=False): it was computed "
            "under torch.no_grad(), detached, or from no trainable parameter"
        )


def trial_loss_of(closure: Callable[..., Tensor], owner: str) -> Callable[[], Tensor]:
    """``closure(backward=False)``, the forward-only loss of a trial (run under no_grad): a
    closure that back-propagates anyway gets the contract's error, not autograd's."""

    def forward() -> Tensor:
        try:
            return closure(backward=False)
        except RuntimeError as error:
            if "does not require grad" not in str(error):
                raise
            raise ClosureContractError(
                f"{owner}.step: closure(backward=False) needed gradients ({error}): it ran "
                "backward() or torch.autograd under the trials' torch.no_grad(); with "
                f"backward=False a closure only computes the loss. {CONTRACT}"
            ) from error

    return forward


class StepRandomState:
    """The random state at the start of an optimizer step, restorable before each evaluation."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class NormStatistics:
    """A copy of the running statistics of a model's BatchNorm-style layers in training mode.

    Only the first backward evaluation of a step may move these statistics; :meth:`restore` after
    every other evaluation (trials, re-evaluations) makes a step count as one batch whatever its
    trials.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved = [
            (m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)
            and m.track_running_stats
            and m.training
        ]

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved statistics back into their layers."""
        for module, buffers in self.saved:
            for name, value in buffers.items():
                getattr(module, name).copy_(value)


class LossClosure:
    """``closure(backward=True)`` over a zero-argument loss function, for one optimizer step.

    Args:
        loss_fn: Computes the (scalar) loss at the current parameters; called once per evaluation.
        optimizer: Its gradients are zeroed before each backward evaluation.
        device: Whose CUDA random state to restore besides the CPU's. Default: the CPU only.
        model: Whose BatchNorm running statistics only the first backward evaluation may move,
            and whose FSDP2 modules are resharded after each forward-only evaluation, which a
            sharded model needs (None: nothing is put back or resharded).
        average_over_processes: Return every loss, the backward one and each trial's,
            averaged over ``torch.distributed``'s processes, as lsframe's modules do: the line
            search decides on these losses, and each replica of a DDP model would otherwise take
            its own step (the back-propagated loss stays the rank's own; DDP averages the
            gradients). Every process must then evaluate the closure. Default (None): where
            ``model`` is such a replica or shard (:func:`lsframe.optim._processes.replicated`:
            a DDP or FSDP module in it, Fabric's included, or DTensor parameters); a model a
            process trains alone keeps its own loss.
        trial_loss_fn: Computes the loss of the forward-only evaluations (default: ``loss_fn``).
        backward: Back-propagates the loss (default: ``loss.backward()``; under Lightning
            Fabric, ``fabric.backward``).

    Attributes:
        evaluations: How many times the closure ran (backward and forward-only).
    """

    def __init__(
        self,
        loss_fn: Callable[[], Tensor],
        optimizer: Optimizer,
        device: torch.device | str = "cpu",
        model: nn.Module | None = None,
        average_over_processes: bool | None = None,
        trial_loss_fn: Callable[[], Tensor] | None = None,
        backward: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.loss_fn = loss_fn
        self.trial_loss_fn = trial_loss_fn or loss_fn
        self.backward = backward or Tensor.backward
        self.optimizer = optimizer
        self.model = model
        if average_over_processes is None:
            average_over_processes = model is not None and replicated(model)
        self.average_over_processes = average_over_processes
        self.random_state = StepRandomState(device)
        self.evaluations = 0
        self._backward_done = False

    def __call__(self, backward: bool = True) -> Tensor:
        self.random_state.restore()
        self.evaluations += 1
        statistics = None
        if self.model is not None and (not backward or self._backward_done):
            statistics = NormStatistics(self.model)
        try:
            if not backward:
                try:
                    with torch.no_grad(), self._full_precision_forwards():
                        loss = self.trial_loss_fn()
                finally:
                    if self.model is not None:
                        reshard([self.model])
                check_loss(loss, "loss_fn", backward=False)
                return self._shared(loss.detach())
            self._backward_done = True
            self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = self.loss_fn()
                check_loss(loss, "loss_fn", backward=True)
                self.backward(loss)
            return self._shared(loss.detach())
        finally:
            if statistics is not None:
                statistics.restore()

    def _full_precision_forwards(self) -> AbstractContextManager:
        """In a search's full-precision evaluation, the model's forward without the autocast
        accelerate's ``mixed_precision="bf16"`` patched into it (:mod:`lsframe.optim._precision`)."""
        return nullcontext() if self.model is None else full_precision_forwards([self.model])

    def _shared(self, loss: Tensor) -> Tensor:
        return mean_over_processes(loss) if self.average_over_processes else loss

    def forward(self) -> Tensor:
        """A forward-only evaluation (what line searches take as ``step(forward=...)``)."""
        return self(backward=False)


def hf_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss a Hugging Face model computes itself: ``model(**batch).loss``; a batch that is
    not a mapping, or an output without a loss (no ``labels`` in the batch), is refused in one
    line that names the other ways to give the loss."""
    other_ways = "or pass criterion= for an (inputs, target) batch, or loss_fn(model, batch)"
    if not isinstance(batch, Mapping):
        raise ConfigError(
            "make_closure's default loss is model(**batch).loss (a Hugging Face model's), which "
            f"needs a mapping batch, got {type(batch).__name__}; {other_ways}",
            argument="batch",
        )
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise ConfigError(
            f"{type(model).__name__}(**batch) returned no loss: is 'labels' in the batch? "
            f"({', '.join(map(str, batch))}); {other_ways}",
            argument="batch",
        )
    return loss


def _criterion_loss(criterion: Callable[[Any, Any], Tensor]) -> Callable[[nn.Module, Any], Tensor]:
    def loss(model: nn.Module, batch: Any) -> Tensor:
        try:
            inputs, target = batch
        except (TypeError, ValueError):
            raise ConfigError(
                "make_closure(criterion=...) needs a batch (inputs, target), got "
                f"{type(batch).__name__}; for another layout pass loss_fn(model, batch)",
                argument="batch",
            ) from None
        if isinstance(inputs, Mapping):
            output = model(**inputs)
        elif isinstance(inputs, (tuple, list)):
            output = model(*inputs)
        else:
            output = model(inputs)
        return criterion(output, target)

    return loss


def make_closure(
    model: nn.Module,
    batch: Any,
    optimizer: Optimizer,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    *,
    criterion: Callable[[Any, Any], Tensor] | None = None,
    average_over_processes: bool | None = None,
    trial_model: nn.Module | None = None,
    backward: Callable[[Tensor], Any] | None = None,
) -> LossClosure:
    """lsframe's closure ``closure(backward: bool = True) -> Tensor`` for one step of ``model``
    on ``batch``, for every lsframe optimizer (and torch's: they call it without arguments).

    The random state is fixed when the closure is built: every evaluation (the backward one and
    each forward-only trial) restores it, so dropout draws the same masks; trials run under
    :func:`torch.no_grad` and leave the gradients and BatchNorm statistics as the backward
    evaluation left them. Build a new closure for every step.

    Args:
        model: The network; its parameters' device decides whose random state is restored.
        batch: Passed to the loss unchanged (move it to the device first).
        optimizer: The optimizer whose gradients each backward evaluation zeroes.
        loss_fn: ``loss_fn(model, batch) -> Tensor``. Default: ``model(**batch).loss`` (a Hugging
            Face model), unless ``criterion`` is given.
        criterion: A loss of ``(output, target)`` such as ``nn.CrossEntropyLoss()``, on a batch
            ``(inputs, target)``: ``criterion(model(inputs), target)`` (``model(*inputs)`` for a
            tuple of inputs, ``model(**inputs)`` for a mapping).
        average_over_processes: Return the losses averaged over ``torch.distributed``'s
            processes, so that every replica takes the same step (:class:`LossClosure`).
            Default (None): where ``model`` is a DDP or FSDP replica or shard.
        trial_model: The module the forward-only evaluations run through (default: ``model``):
            under Lightning Fabric's ``bf16-mixed``, ``model.module``, which skips the autocast
            Fabric's wrapper enters, so that with autocast around ``opt.step`` the trials run
            in full precision as the loss at ``x`` the search compares them with does.
        backward: Back-propagates the loss (default: ``loss.backward()``; under Lightning
            Fabric, ``fabric.backward``).

    Raises:
        ConfigError: both ``loss_fn`` and ``criterion`` are given, or ``optimizer`` is
            Accelerate's wrapper where it accumulates or scales (:func:`refuse_a_wrapper_that_splits_the_step`).
    """
    if loss_fn is not None and criterion is not None:
        raise ConfigError("make_closure takes loss_fn or criterion, not both", argument="criterion")
    refuse_a_wrapper_that_splits_the_step(optimizer)
    if criterion is not None:
        loss_fn = _criterion_loss(criterion)
    elif loss_fn is None:
        loss_fn = hf_loss
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    trials = None if trial_model is None else (lambda: loss_fn(trial_model, batch))
    return LossClosure(
        lambda: loss_fn(model, batch),
        optimizer,
        device,
        model=model,
        average_over_processes=average_over_processes,
        trial_loss_fn=trials,
        backward=backward,
    )


def refuse_a_wrapper_that_splits_the_step(optimizer: Any) -> None:
    """Refuse Accelerate's optimizer wrapper where a closure over one batch goes wrong silently.

    * Accumulating (``gradient_accumulation_steps`` > 1 under ``accelerator.accumulate``), it
      steps the optimizer on the last micro-batch only, and the closure's backward evaluation
      zeroes the gradients of the others: the search would step on that micro-batch alone.
    * With fp16's GradScaler it hands the closure to ``scaler.step``, which checks the scaled
      gradient the closure then replaces by an unscaled one (or fails on a missing inf check).
    """
    scaler = getattr(optimizer, "scaler", None)
    if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled():
        raise ConfigError(
            f"make_closure: {type(optimizer).__name__} steps through fp16's GradScaler, which "
            "cannot drive a closure (it checks a scaled gradient the closure replaces): use "
            "mixed_precision 'bf16' or 'no'",
            argument="optimizer",
        )
    state = getattr(optimizer, "gradient_state", None)
    steps = getattr(state, "num_steps", 1) if state is not None else 1
    if isinstance(steps, int) and steps > 1:
        raise ConfigError(
            f"make_closure: {type(optimizer).__name__} accumulates gradients over {steps} "
            "micro-batches and, under accelerator.accumulate, steps on the last one only, where "
            "a closure over that batch would zero the others' gradients: build one "
            "lsframe.optim.LossClosure over the step's micro-batches and step when "
            "accelerator.sync_gradients (docs/integrations.md, 'Accelerate')",
            argument="optimizer",
        )
