"""The closure :class:`~lsframe.integrations.hf.LineSearchTrainer` hands a line search: Trainer's
own loss over the micro-batches of one optimizer step (the rules are in
:mod:`lsframe.integrations.hf`'s docstring)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lsframe.optim._precision import full_precision_forwards
from lsframe.optim._sharded import reshard
from lsframe.optim.closure import NormStatistics, StepRandomState

if TYPE_CHECKING:
    from transformers import Trainer


@contextmanager
def repeated_loss(trainer: Trainer) -> Iterator[None]:
    """Inside, ``trainer.line_search_trial`` is True: ``compute_loss`` runs again for the line
    search, not as Trainer's own call of a micro-batch."""
    state = getattr(trainer, "_lsframe", None)
    if state is None:
        yield
        return
    before, state.repeating = state.repeating, True
    try:
        yield
    finally:
        state.repeating = before


@dataclass
class _MicroBatch:
    """One ``compute_loss`` call of a ``training_step``, enough to repeat it exactly."""

    model: nn.Module
    inputs: Any  # a shallow copy: compute_loss may pop keys ("labels") from the dict it gets
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    training: bool
    random_state: StepRandomState
    scale: Tensor | None = None  # back-propagated loss / compute_loss's loss
    loss: Tensor | None = None  # the loss training_step back-propagated (detached)


class TrainerStepClosure:
    """lsframe's closure ``closure(backward: bool = True) -> Tensor`` over the micro-batches
    Trainer ran in one step (see :mod:`lsframe.integrations.hf`).

    Attributes:
        evaluations: How many times the closure ran in this step.
    """

    def __init__(self, trainer: Trainer, optimizer: Optimizer, micro_batches: list[_MicroBatch]):
        self.trainer = trainer
        self.optimizer = optimizer
        self.micro_batches = micro_batches
        self.evaluations = 0
        self._reused = False

    def __call__(self, backward: bool = True) -> Tensor:
        self.evaluations += 1
        if not backward:
            return self.forward()
        if not self._reused:  # Trainer's own backward pass: gradients accumulated and clipped
            self._reused = True
            total = torch.stack([mb.loss.float().sum() for mb in self.micro_batches]).sum()
            return self._mean_over_processes(total)
        return self._backward_again()

    def forward(self) -> Tensor:
        """The accumulated loss at the current parameters, forward only, under no_grad."""
        models = self._models()
        statistics = [NormStatistics(m) for m in models]
        try:
            with torch.no_grad(), full_precision_forwards(models):
                total = sum(self._scaled_loss(mb) for mb in self.micro_batches)
        finally:
            reshard(models)
            for saved in statistics:
                saved.restore()
        return self._mean_over_processes(total)

    # ------------------------------------------------------------------------------ parts
    def _models(self) -> list[nn.Module]:
        return list({id(mb.model): mb.model for mb in self.micro_batches}.values())

    def _scaled_loss(self, mb: _MicroBatch) -> Tensor:
        trainer = self.trainer
        mb.random_state.restore()
        mode = mb.model.training
        if mode != mb.training:
            mb.model.train(mb.training)
        try:
            with trainer.compute_loss_context_manager(), repeated_loss(trainer):
                loss = trainer.compute_loss(mb.model, copy.copy(mb.inputs), *mb.args, **mb.kwargs)
        finally:
            if mode != mb.training:
                mb.model.train(mode)
        if isinstance(loss, tuple):  # return_outputs=True
            loss = loss[0]
        return loss.mean() * mb.scale.to(loss.dtype)

    def _backward_again(self) -> Tensor:
        trainer = self.trainer
        accelerator = trainer.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        statistics = [NormStatistics(m) for m in self._models()]
        # accelerator.backward divides by its own accumulation steps (1 under Trainer >= 4.46)
        undo = float(getattr(accelerator, "gradient_accumulation_steps", 1) or 1)
        total = torch.zeros((), device=trainer.args.device)
        last = len(self.micro_batches) - 1
        try:
            for i, mb in enumerate(self.micro_batches):
                sync = nullcontext() if i == last else accelerator.no_sync(mb.model)
                with sync, torch.enable_grad():
                    loss = self._scaled_loss(mb)
                    accelerator.backward(loss * undo)
                total = total + loss.detach().float()
        finally:
            for saved in statistics:
                saved.restore()
        if trainer.args.max_grad_norm is not None and trainer.args.max_grad_norm > 0:
            model = self.micro_batches[0].model
            accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        return self._mean_over_processes(total)

    def _mean_over_processes(self, loss: Tensor) -> Tensor:
        accelerator = self.trainer.accelerator
        loss = loss.detach()
        if accelerator.num_processes > 1:
            loss = accelerator.reduce(loss, reduction="mean")
        return loss


def loss_ignores_item_count(
    trainer: Trainer, model: nn.Module, inputs: Any, count: Any
) -> bool | None:
    """Whether ``compute_loss`` returns the same loss for ``count`` and ``2·count`` items; None
    where the losses cannot tell (zero or not finite: a micro-batch whose labels are all masked).

    Trainer passes ``num_items_in_batch`` to a model whose ``forward`` takes ``**kwargs`` and
    then expects the model to normalise by it: it neither divides the loss by the accumulation
    steps nor keeps the multiplication by the process count from scaling it. A loss that
    ignores the count (most sequence-classification heads) is then that many times its mean.
    Two forwards under no_grad with the same dropout masks; random state and BatchNorm
    statistics are put back."""
    random_state = StepRandomState(trainer.args.device)
    statistics = NormStatistics(model)
    losses = []
    try:
        with torch.no_grad():
            for items in (count, count * 2):
                random_state.restore()
                with trainer.compute_loss_context_manager(), repeated_loss(trainer):
                    loss = trainer.compute_loss(model, copy.copy(inputs), num_items_in_batch=items)
                losses.append((loss[0] if isinstance(loss, tuple) else loss).detach().float())
    finally:
        random_state.restore()
        statistics.restore()
    first, second = losses
    if not (torch.isfinite(first).all() and torch.isfinite(second).all()) or not first.any():
        return None
    return torch.equal(first, second)


def agreed_verdict(trainer: Trainer, verdict: bool | None) -> bool | None:
    """The processes' common :func:`loss_ignores_item_count`: None unless every process could
    tell, True only where every process found the count ignored (Trainer gathers the counts
    over the processes where it passes them, so all must decide alike)."""
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        return verdict
    flags = torch.tensor(
        [float(verdict is not None), float(verdict is True)], device=trainer.args.device
    )
    decided, ignored = accelerator.reduce(flags, reduction="sum").tolist()
    if decided < accelerator.num_processes:
        return None
    return ignored == accelerator.num_processes
