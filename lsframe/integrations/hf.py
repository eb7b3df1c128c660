"""Hugging Face ``transformers.Trainer`` with every lsframe optimizer, line searches included.

``Trainer`` calls ``optimizer.step()`` without a closure, after it has run forward and backward on
every micro-batch of the step and clipped the gradients, and it attaches a ``LambdaLR`` that
writes ``lr``. A line search needs a closure (``closure(backward: bool = True) -> Tensor``) and
owns its step size. :class:`LineSearchTrainer` (a ``Trainer`` subclass, nothing else changes)
supplies both through Trainer's public overridable methods::

    from lsframe.integrations.hf import LineSearchTrainer
    from lsframe.optim import SaLSA

    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=train, optimizers=(SaLSA(model.parameters()), None)
    )
    trainer.train()

What it does, for an optimizer whose registry record ``searches`` (:func:`lsframe.optim.info_for`):

* **The closure is Trainer's own loss.** ``training_step`` runs unchanged; during it, the call to
  ``compute_loss`` (yours, if you override it) is recorded: the model, its inputs, the arguments,
  the train/eval mode and the random state (CPU and the CUDA device's) just before the forward,
  and the ratio of the loss ``training_step`` back-propagated to the loss ``compute_loss``
  returned (Trainer's division by the accumulation steps, or its token-count normalisation).
  At ``optimizer.step()`` the optimizer gets a closure over the step's micro-batches:

  - its first backward evaluation returns the accumulated loss Trainer already computed; the
    gradients are those Trainer accumulated and clipped (``max_grad_norm``), so the step costs no
    extra forward or backward;
  - a forward-only evaluation (a trial) recomputes ``compute_loss`` on every recorded micro-batch
    under :func:`torch.no_grad`, each with its own random state restored and the model in the
    mode it had, times its ratio, summed: the same inputs and the same dropout masks as the
    backward pass, so at unchanged parameters a trial equals the accumulated loss;
  - a further backward evaluation (no lsframe optimizer asks for one) repeats forward and backward
    the same way and clips again.

  While ``compute_loss`` runs again (a trial, a further backward evaluation, the item-count check
  below), ``trainer.line_search_trial`` is True: a ``compute_loss`` that keeps counts or logs
  metrics (TRL's trainers do) should skip that then, or each trial adds to them.

  Losses are averaged across processes (``accelerator.reduce``) before the optimizer sees them,
  so every rank takes the same decision. A loss that ignores ``num_items_in_batch``, which Trainer
  passes to a model taking ``**kwargs`` and then does not normalise itself, would be
  accumulation steps × processes times its mean: once per ``train()`` two forwards tell, and
  Trainer's ``model_accepts_loss_kwargs`` is set to False (warned). After the step the random state is put back where
  Trainer's own backward passes left it: the trials draw nothing from the run's random stream.
  BatchNorm running statistics move in Trainer's forward only, never in a trial.
* **Schedules act on ``lr_multiplier``.** Trainer's scheduler (``lr_scheduler_type``,
  ``warmup_steps``/``warmup_ratio``, ``lr_scheduler_kwargs``) is built on
  :class:`lsframe.optim.StepSizeSchedule`, so its factor multiplies the searched step size;
  ``lr_scheduler_type="constant"`` leaves the search alone (Trainer's default is ``"linear"``,
  a decay to 0). A scheduler passed in ``optimizers`` must be a ``StepSizeSchedule``.
* **Logs.** Every training log gets ``step_size``, the step size the search accepted in the last
  step (group 0), and ``step_size/<group name or index>`` for each group when the groups' step
  sizes differ (PLASLS's parts); Trainer's ``learning_rate`` is that step size times the
  schedule's multiplier, the step actually taken (after a failed search or a rejected step,
  where none was taken, the step size the next search starts from). The last step's search
  diagnostics come too:
  ``linesearch/trials``, ``linesearch/failed_searches``, ``linesearch/sufficient_decrease_ratio``
  (SlopeTrackingAdam: ``linesearch/alignment``).
* **bf16.** With ``bf16=True`` the step runs under bf16 autocast, so a search evaluates its loss
  at x and its trials in fp32, through the model's forward without accelerate's autocast
  (:mod:`lsframe.integrations._hf_precision`); Trainer's own forward and backward stay bf16.
* Refused with a :class:`lsframe.errors.ConfigError` that says why: ``fp16`` (its GradScaler
  cannot drive a closure; ``bf16`` works), DeepSpeed, a torch LR scheduler attached to the line
  search, ``reduce_lr_on_plateau`` and ``greedy`` schedules, a ``training_step`` that does not
  call ``compute_loss`` exactly once or does not go through ``super().training_step``.

Any other optimizer (AdamW, lsframe's Lamb, ALTO, AdamE) runs exactly as in ``Trainer``.
``optimizer_cls_and_kwargs=(SaLSA, {...})`` also works: Trainer builds the optimizer on its
weight-decay groups. To add this to another ``Trainer`` subclass (TRL's trainers, your own), put
:class:`LineSearchTrainerMixin` first in its bases.
"""

from __future__ import annotations

import copy
import types
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lsframe.errors import ConfigError
from lsframe.integrations._hf_closure import (
    TrainerStepClosure,
    _MicroBatch,
    agreed_verdict,
    loss_ignores_item_count,
)
from lsframe.integrations._hf_logs import step_size_logs
from lsframe.integrations._hf_precision import trainer_autocast
from lsframe.optim._registry import info_for
from lsframe.optim.closure import StepRandomState
from lsframe.optim.data_passes import innermost_optimizer, start_pass
from lsframe.optim.run_length import set_run_length
from lsframe.optim.step_size_schedule import StepSizeSchedule

try:
    from transformers import Trainer, TrainerCallback
    from transformers.optimization import get_scheduler
    from transformers.trainer_utils import SchedulerType
except ImportError as error:  # Trainer needs accelerate, which transformers does not require
    raise ImportError(
        "lsframe.integrations.hf needs transformers' Trainer and accelerate "
        f"(pip install 'transformers[torch]'): {error}"
    ) from error

__all__ = [
    "LineSearchTrainer",
    "LineSearchTrainerMixin",
    "TrainerStepClosure",
    "step_size_logs",
    "unwrap_optimizer",
]

_MISSING = object()


#: the optimizer inside Accelerate's (or another) wrapper that keeps it as ``.optimizer``
unwrap_optimizer = innermost_optimizer


class _DataPassCallback(TrainerCallback):
    """Tells the optimizer which pass over the training set each epoch is (``start_pass``: a
    rule that judges a step by the next batch must know when batches repeat)."""

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if kwargs.get("optimizer") is not None:  # state.epoch: e + n/n at epoch ends, exact
            start_pass(kwargs["optimizer"], int(state.epoch or 0))


def _searches(optimizer: Any) -> bool:
    return isinstance(optimizer, Optimizer) and info_for(optimizer).searches


class _LineSearchState:
    def __init__(self) -> None:
        self.micro_batches: list[_MicroBatch] = []
        self.global_step: int | None = None
        self.optimizer: Optimizer | None = None  # the line search whose step is wrapped
        self.previous_step: Any = _MISSING  # the optimizer's own instance-level step, if any
        self.item_count_checked = False  # loss_ignores_item_count asked, once per train()
        self.repeating = False  # compute_loss runs again for the search (line_search_trial)


class LineSearchTrainerMixin:
    """Lets a ``transformers.Trainer`` subclass drive lsframe's line searches (module docstring).

    Put it first in the bases: ``class MyTrainer(LineSearchTrainerMixin, SomeTrainer)``. With an
    optimizer that does not search, every method defers to the ``Trainer`` unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lsframe = _LineSearchState()
        super().__init__(*args, **kwargs)
        self.add_callback(_DataPassCallback())
        optimizer = unwrap_optimizer(self.optimizer)
        if _searches(optimizer):
            self._check_line_search_setup(optimizer)

    # ----------------------------------------------------------------------- set-up checks
    @property
    def line_search_trial(self) -> bool:
        """True while ``compute_loss`` runs again for the line search (a trial, a further
        backward evaluation, the item-count check), not as Trainer's own call of a micro-batch.
        Bookkeeping in a ``compute_loss`` (token counts, logged metrics, as TRL's trainers keep)
        belongs to Trainer's own calls: skip it while this is True, or it counts every trial."""
        return self._lsframe.repeating

    def _check_line_search_setup(self, optimizer: Optimizer) -> None:
        name = type(optimizer).__name__
        if getattr(self.args, "fp16", False):
            raise ConfigError(
                f"{name} searches its step size and needs exact losses: fp16's GradScaler scales "
                "them and cannot drive a closure; use bf16=True or full precision",
                where="TrainingArguments.fp16",
            )
        if getattr(self, "is_deepspeed_enabled", False):
            raise ConfigError(
                f"{name} is not supported under DeepSpeed (its engine steps the optimizer "
                "without a closure); use DDP or FSDP",
                where="TrainingArguments.deepspeed",
            )
        kind = SchedulerType(self.args.lr_scheduler_type)
        if self.lr_scheduler is None and kind in (SchedulerType.REDUCE_ON_PLATEAU, "greedy"):
            raise ConfigError(
                f"lr_scheduler_type={kind.value!r} steps on metrics, which lsframe's "
                f"StepSizeSchedule does not pass; {name} adapts its step size itself: use "
                "'constant' (or a step-based schedule)",
                where="TrainingArguments.lr_scheduler_type",
            )
        scheduler = self.lr_scheduler
        if scheduler is not None and not isinstance(scheduler, StepSizeSchedule):
            raise ConfigError(
                f"{name} searches its own step size, so a torch LR scheduler must not write its "
                f"'lr' (got {type(scheduler).__name__}); pass "
                "lsframe.optim.StepSizeSchedule(optimizer, lambda opt: <scheduler on opt>), which "
                "schedules lr_multiplier, or None and set TrainingArguments.lr_scheduler_type",
                where="Trainer(optimizers=...)",
            )

    # ------------------------------------------------------------- optimizer and scheduler
    def create_optimizer(self, *args: Any, **kwargs: Any) -> Optimizer:
        optimizer = super().create_optimizer(*args, **kwargs)
        inner = unwrap_optimizer(optimizer)
        if _searches(inner):
            self._check_line_search_setup(inner)
            self._install_step(inner)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Optimizer | None = None) -> Any:
        inner = unwrap_optimizer(optimizer if optimizer is not None else self.optimizer)
        set_run_length(inner, num_training_steps)  # a start that depends on it
        if not _searches(inner):
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            args = self.args
            warmup = args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = StepSizeSchedule(
                inner,
                lambda shadow: get_scheduler(
                    args.lr_scheduler_type,
                    optimizer=shadow,
                    num_warmup_steps=warmup,
                    num_training_steps=num_training_steps,
                    scheduler_specific_kwargs=args.lr_scheduler_kwargs,
                ),
            )
            if hasattr(self, "_created_lr_scheduler"):  # Trainer rebuilds it for the next train()
                self._created_lr_scheduler = True
        return self.lr_scheduler

    def _install_step(self, optimizer: Optimizer) -> None:
        """Give ``optimizer.step()`` (called without a closure by Trainer) this step's closure."""
        state = self._lsframe
        if state.optimizer is optimizer:
            return
        self._uninstall_step()
        previous = optimizer.__dict__.get("step", _MISSING)
        original = optimizer.step
        trainer_ref = weakref.ref(self)

        def step(opt: Optimizer, closure: Any = None, *args: Any, **kwargs: Any) -> Any:
            trainer = trainer_ref()
            if closure is not None or trainer is None:
                return original(closure, *args, **kwargs)
            closure = trainer._take_step_closure(opt)
            if closure is None and trainer.is_in_train:
                raise ConfigError(
                    f"{type(opt).__name__} got no micro-batch to search on: "
                    f"{type(trainer).__name__}.training_step must compute its loss through "
                    "super().training_step (LineSearchTrainer records the compute_loss call "
                    "there and repeats it for the trials)",
                    where=f"{type(trainer).__name__}.training_step",
                )
            if closure is None:  # not inside a Trainer step: lsframe's own error
                return original(None, *args, **kwargs)
            after_backward = StepRandomState(trainer.args.device)
            try:
                with trainer_autocast(trainer):  # bf16=True: the search's losses in fp32
                    return original(closure, *args, **kwargs)
            finally:
                after_backward.restore()

        optimizer.step = types.MethodType(step, optimizer)
        state.optimizer = optimizer
        state.previous_step = previous

    def _uninstall_step(self) -> None:
        state = self._lsframe
        optimizer, state.optimizer = state.optimizer, None
        if optimizer is None:
            return
        previous, state.previous_step = state.previous_step, _MISSING
        if previous is _MISSING:
            optimizer.__dict__.pop("step", None)
        else:
            optimizer.step = previous
        state.micro_batches = []

    def _take_step_closure(self, optimizer: Optimizer) -> TrainerStepClosure | None:
        state = self._lsframe
        micro_batches, state.micro_batches = state.micro_batches, []
        if not micro_batches or state.global_step != self.state.global_step:
            return None
        return TrainerStepClosure(self, optimizer, micro_batches)

    # --------------------------------------------------------------------- the micro-batches
    def training_step(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Tensor:
        state = self._lsframe
        if state.optimizer is None:
            return super().training_step(model, inputs, *args, **kwargs)
        if state.global_step != self.state.global_step:  # a new optimizer step begins
            state.micro_batches, state.global_step = [], self.state.global_step
        self._normalise_an_item_count_the_loss_ignores(model, inputs, *args, **kwargs)
        calls: list[_MicroBatch] = []
        compute_loss = self.compute_loss  # yours, if a subclass overrides it
        device = self.args.device

        def recording(model: nn.Module, inputs: Any, *c_args: Any, **c_kwargs: Any) -> Any:
            call = _MicroBatch(
                model, copy.copy(inputs), c_args, c_kwargs, model.training, StepRandomState(device)
            )
            result = compute_loss(model, inputs, *c_args, **c_kwargs)
            call.loss = (result[0] if isinstance(result, tuple) else result).detach()
            calls.append(call)
            return result

        previous = self.__dict__.get("compute_loss", _MISSING)
        self.compute_loss = recording
        try:
            loss = super().training_step(model, inputs, *args, **kwargs)
        finally:
            if previous is _MISSING:
                del self.__dict__["compute_loss"]
            else:
                self.compute_loss = previous
        if len(calls) != 1:
            raise ConfigError(
                f"{type(state.optimizer).__name__} needs training_step to compute its loss "
                f"through compute_loss exactly once per micro-batch (it was called {len(calls)} "
                "times): LineSearchTrainer repeats that call for the line search's trials",
                where=f"{type(self).__name__}.training_step",
            )
        call = calls[0]
        raw = call.loss.double().mean()
        trained = loss.detach().double().mean()
        steps = getattr(self, "current_gradient_accumulation_steps", None) or max(
            1, self.args.gradient_accumulation_steps
        )
        # the loss training_step back-propagated is compute_loss's times a factor (1/accumulation
        # steps, or 1 when the loss is normalised by token counts); a zero loss leaves it unknown
        call.scale = torch.where(raw != 0, trained / raw, torch.full_like(raw, 1.0 / steps))
        call.loss = loss.detach()
        state.micro_batches.append(call)
        return loss

    def _normalise_an_item_count_the_loss_ignores(
        self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None, *args: Any, **kw: Any
    ) -> None:
        """Once per ``train()``, before the first micro-batch that can tell: where Trainer
        passes ``num_items_in_batch`` to a model whose loss ignores it
        (:func:`loss_ignores_item_count`, agreed over the processes) and accumulates or averages
        tokens over processes, the loss and gradient would be accumulation steps × processes
        times their mean, in plain Trainer too. The line search then searches on the mean:
        Trainer's own ``model_accepts_loss_kwargs = False``. A ``loss_is_scaled_for_ga`` set by
        the user is left to decide."""
        state = self._lsframe
        items = kw.get("num_items_in_batch", num_items_in_batch)
        if state.item_count_checked or items is None or self.compute_loss_func is not None:
            return
        processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        steps = max(1, self.args.gradient_accumulation_steps)
        told = getattr(self, "loss_is_scaled_for_ga", None) is not None
        if not self.model_accepts_loss_kwargs or steps * processes == 1 or told:
            state.item_count_checked = True
            return
        verdict = agreed_verdict(self, loss_ignores_item_count(self, model, inputs, items))
        if verdict is None:  # this micro-batch cannot tell (its labels all masked): the next one
            return
        state.item_count_checked = True
        if verdict:
            self.model_accepts_loss_kwargs = False
            if self.is_world_process_zero():
                warnings.warn(
                    f"{self._loss_owner(model)} ignores num_items_in_batch, so Trainer would train on "
                    f"{steps * processes} times its mean loss (gradient_accumulation_steps "
                    f"{steps} x processes {processes}) and a line search's steps would depend on "
                    "them: LineSearchTrainer set model_accepts_loss_kwargs = False (the mean)",
                    stacklevel=2,
                )

    def _loss_owner(self, model: nn.Module) -> str:
        """Whose loss the item-count check judged: a ``compute_loss`` of a class below
        ``transformers.Trainer`` (yours, or TRL's), else the model's own."""
        owner = next(c for c in type(self).__mro__ if "compute_loss" in vars(c))
        if owner is not Trainer:
            return f"{owner.__name__}.compute_loss's loss"
        return f"{type(self.accelerator.unwrap_model(model)).__name__}'s loss"

    # --------------------------------------------------------------------------- the rest
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        optimizer = unwrap_optimizer(self.optimizer)
        if "loss" in logs and _searches(optimizer):
            logs = {**logs, **step_size_logs(optimizer)}
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._lsframe.item_count_checked = False
        try:
            return super().train(*args, **kwargs)
        finally:
            self._uninstall_step()


class LineSearchTrainer(LineSearchTrainerMixin, Trainer):
    """``transformers.Trainer`` that also drives lsframe's line searches (module docstring)."""
