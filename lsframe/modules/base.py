"""The closure-driven base LightningModule: the one place where an optimizer step happens.

Every optimizer receives the same closure, ``closure(backward: bool = True) -> Tensor``
(:class:`_StepEvaluator`), through :meth:`LightningOptimizer.step`, so ``global_step``,
``max_steps`` and checkpointing work. The precision plugin calls the closure without arguments;
an optimizer whose registry record has ``forward_trials`` (:func:`lsframe.optim.info_for`) also
gets forward-only trials as the ``forward`` keyword of ``step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lsframe.callbacks.base import (
    ClosureHooks,
    call_closure_loss,
    call_on_gradients_ready,
    migrate_state_keys,
)
from lsframe.lr_distribution import base_lr_mismatch, check_distribution, multipliers_for
from lsframe.modules import optimizer_setup, policy
from lsframe.modules.distributed import (
    mean_over_processes,
    no_backward_sync,
    warn_exception_checkpoint,
)
from lsframe.modules.export import export_pretrained
from lsframe.modules.metric_precision import float32_metric_states
from lsframe.modules.micro_batches import examples_in, micro_batch_shares
from lsframe.modules.norm_statistics import NormStatistics
from lsframe.modules.optimizer_setup import default_optimizer, known_run_length
from lsframe.modules.policy import check_sharding
from lsframe.modules.random_state import (
    ResumeRandomState,
    every_process_random_states,
    finish_epoch_of_an_epoch_end_checkpoint,
    mark_an_epoch_ended_by_its_limit,
    own_random_states,
    random_states,
    restore_loader_position,
)
from lsframe.modules.schedulers import (
    check_line_search_schedulers,
    ends_epoch,
    keep_metric_settings,
    step_schedulers,
)
from lsframe.modules.step_logging import (
    align_resumed_logging_step,
    callback_metrics_to_save,
    hide_written_step,
    log_step,
    logs_now,
    restore_callback_metrics,
)
from lsframe.modules.stopping import HeldStop
from lsframe.optim import info_for, innermost_optimizer, set_run_length, start_pass
from lsframe.optim._sharded import reshard
from lsframe.optim.closure import StepRandomState, check_loss
from lsframe.optim.param_groups import apply_part_multipliers
from lsframe.precision import GradientOverflow, fp16_plugin
from lsframe.validation import check_choice, check_int_at_least

__all__ = ["ClosureModule", "check_sharding", "default_optimizer"]


class ClosureModule(pl.LightningModule, ClosureHooks):
    """Base module that owns the optimization loop through one closure (manual optimization).

    Subclasses say only how to compute a loss from a batch (:meth:`compute_loss`) and, for
    evaluation, how to score a batch. Callbacks act inside the step as
    :class:`lsframe.callbacks.ClosureCallback` (when their hooks run:
    :class:`lsframe.callbacks.ClosureHooks`); a callback that is not one but has a method of a
    hook's name is refused when the fit starts. A subclass that overrides a Lightning hook calls
    ``super()``: the module's own (``on_train_start``, ``on_train_batch_end``,
    ``on_validation_end``, the checkpoint hooks) keep the resume exact and the stops whole.

    Args:
        model: The network to train. Parameters with ``requires_grad=False`` never reach the
            optimizer.
        optimizer: Callable that builds the optimizer from parameter groups (from YAML:
            ``class_path`` + ``init_args``). Default: AdamW(lr=2e-5, weight_decay=0.01).
        lr_scheduler: Optional callable that builds a scheduler from the optimizer, stepped once
            per optimizer step; on a line search it scales the searched step (see
            :func:`lsframe.modules.optimizer_setup.make_scheduler`). Schedulers a subclass's
            ``configure_optimizers`` or a callback (SWA) adds follow their config's
            ``interval``, ``frequency`` and ``monitor``, as in Lightning
            (:mod:`lsframe.modules.schedulers`).
        accumulate_grad_batches: Micro-batches per optimizer step. The DataModule's batch is the
            micro-batch; the effective batch is ``batch_size * accumulate_grad_batches``, each
            micro-batch's mean loss weighted by its share of the step's examples
            (:meth:`micro_batch_size`: an epoch's short last batch counts for its size).
            ``compute_loss`` returns a mean, as for one batch.
        gradient_clip_val: Clip gradients to this value after the full backward (None: no clip).
        gradient_clip_algorithm: ``"norm"`` (global L2 norm) or ``"value"``.
        param_grouping: ``"decay"`` (biases and norm weights without weight decay), ``"parts"``
            (one group per part: PLASLS, per-part learning rates) or ``"single"``; see
            :func:`lsframe.modules.optimizer_setup.parameter_groups`.
        num_parts: Number of parts for ``param_grouping="parts"``, ``lr_distribution`` and the
            search, at least 3 (embeddings, layers, head). Default: 10.
        lr_distribution: Per-part learning-rate multipliers (BERTcL): a mapping part → multiplier,
            a preset name (``flat``, ``bertcl_combined``) or a YAML/JSON file; see
            :mod:`lsframe.lr_distribution`. Needs ``param_grouping="parts"``.
        nonfinite_loss: When the loss at the current parameters or a gradient is NaN or infinite
            (checked before the gradient hooks): ``"raise"`` stops with an error naming the step;
            ``"skip"`` drops the gradients (no parameter changes), logs ``train/skipped_steps``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        param_grouping: Literal["decay", "parts", "single"] = "decay",
        num_parts: int = 10,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        lr_distribution: dict[str, float] | str | None = None,
    ) -> None:
        super().__init__()
        check_choice("param_grouping", param_grouping, ("decay", "parts", "single"))
        policy.check_step_options(accumulate_grad_batches, gradient_clip_val)
        check_choice("gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value"))
        check_choice("nonfinite_loss", nonfinite_loss, ("raise", "skip"))
        check_int_at_least(3, num_parts=num_parts)  # embeddings, one or more layers, head
        check_distribution(model, lr_distribution, param_grouping, num_parts)
        self.automatic_optimization = False
        self.model = model
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.param_grouping = param_grouping
        self.num_parts = num_parts
        self.nonfinite_loss = nonfinite_loss
        self.lr_distribution = lr_distribution
        self._micro_batches: list[Any] = []
        self._held_stop, self._resumed_logging_step = HeldStop(), False
        self._saved_callback_metrics: dict[str, Tensor] | None = None
        self._step_log_pending = False
        self._skipped_steps = 0
        self._resume_random = ResumeRandomState()

    def micro_batch_size(self, batch: Any) -> int | None:
        """The number of examples in ``batch``, which weighs its mean loss in a step over
        micro-batches of different sizes: by default the length its tensors agree on
        (:func:`~lsframe.modules.micro_batches.examples_in`); None (an equal share) where they
        disagree. Override it for a layout whose tensors do not lead with the batch
        (sequence-first)."""
        return examples_in(batch)

    def compute_loss(self, batch: Any) -> Tensor:
        """Mean loss of one micro-batch. Task modules implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    # ------------------------------------------------------------------------------ optimizers
    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups of the trainable parameters handed to the optimizer factory
        (``param_grouping``; :func:`lsframe.modules.optimizer_setup.parameter_groups`)."""
        return optimizer_setup.parameter_groups(
            self.model, self.param_grouping, self.num_parts, type(self).__name__
        )

    def num_optimizer_steps(self) -> int:
        """Optimizer steps in the whole run (max_steps, or epochs x ceil(batches / accumulation))."""
        return optimizer_setup.count_optimizer_steps(self.trainer, self.accumulate_grad_batches)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self._trainer is not None:
            check_sharding(self.trainer.strategy, optimizer)
        if self.lr_distribution is not None:
            multipliers = multipliers_for(self.model, self.lr_distribution, self.num_parts)
            if mismatch := base_lr_mismatch(self.lr_distribution, optimizer):
                rank_zero_warn(mismatch)
            apply_part_multipliers(optimizer, multipliers)
        if self._trainer is not None:  # a start that depends on the run's length
            set_run_length(optimizer, partial(known_run_length, self.num_optimizer_steps))
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = optimizer_setup.make_scheduler(
            optimizer, self.lr_scheduler_factory, self.num_optimizer_steps
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step() if metric is None else scheduler.step(metric)

    def export_pretrained(self, output_dir: str | Path) -> Path:
        """Write the model (and the module's ``tokenizer``, if any) as a Hugging Face directory;
        see :func:`lsframe.modules.export.export_pretrained`."""
        return export_pretrained(self.model, output_dir, getattr(self, "tokenizer", None))

    def check_data(self, **expected: Any) -> None:
        """Fail early when the DataModule's attribute disagrees with the model's setting:
        ``check_data(num_labels=2)`` (:func:`lsframe.modules.policy.check_data`)."""
        policy.check_data(getattr(self._trainer, "datamodule", None), **expected)

    def setup(self, stage: str) -> None:
        """At fit: refuse 16-bit precision and misdeclared callbacks, warn about bf16 that the
        CPU would emulate (:func:`.policy.check_fit`)."""
        if stage == "fit" and self._trainer is not None:
            policy.check_fit(self.trainer)
            keep_metric_settings(self)  # a ReduceLROnPlateau's monitor

    # ---------------------------------------------------------------------------- training step
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        self._own_step_ran = True
        self._micro_batches.append(batch)
        full = len(self._micro_batches) >= self.accumulate_grad_batches
        loss = None  # the step's loss, for on_train_batch_end's outputs (Lightning's lr finder)
        if full or self.trainer.is_last_batch:
            micro_batches, self._micro_batches = self._micro_batches, []
            loss = self.optimizer_step_on(micro_batches)
            self._step_log_pending = not logs_now(self._trainer)
        else:
            self._log_step_once()
        if ends_epoch(self.trainer, batch_idx):  # Lightning's rules (lsframe.modules.schedulers)
            step_schedulers(self, "epoch", on_metric=False)
        return loss

    def _log_step_once(self) -> None:
        """On a micro-batch that takes no step: the step's values are written once
        (:func:`lsframe.modules.step_logging.hide_written_step`)."""
        if self._step_log_pending:  # not written yet: at the end of this batch, or later
            self._step_log_pending = not logs_now(self._trainer)
            return
        hide_written_step(self._trainer)

    def optimizer_step_on(self, micro_batches: Sequence[Any]) -> Tensor:
        """Run one optimizer step on ``micro_batches`` through ``LightningOptimizer.step``."""
        optimizer = self.optimizers()
        raw_optimizer = innermost_optimizer(optimizer)
        evaluator = _StepEvaluator(self, raw_optimizer, micro_batches)
        kwargs: dict[str, Any] = {}
        if info_for(raw_optimizer).forward_trials:
            kwargs["forward"] = evaluator.forward
        # the closure back-propagates; a step without gradients is nonfinite_loss "skip"'s
        raw_optimizer.warn_without_gradients = False
        optimizer.step(closure=evaluator.closure, **kwargs)
        if evaluator.skipped:
            self._skipped_steps += 1
        # before the scheduler: the lr this step used
        log_step(self, raw_optimizer, evaluator.loss_at_start, evaluator.evaluations)
        step_schedulers(self, "step", on_metric=False)
        step_schedulers(self, "step", on_metric=True)
        return evaluator.loss_at_start

    # ------------------------------------------------------------------------- callback hooks
    def closure_loss_terms(self) -> Tensor | None:
        """Sum of the loss terms that ClosureCallbacks contribute to every closure evaluation."""
        return call_closure_loss(self._trainer, self)

    def on_gradients_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """The module's own once-per-step gradient hook (no-op); the callbacks' follow it."""

    def on_train_epoch_start(self) -> None:
        self._micro_batches = []
        start_pass(self.optimizers(), self.current_epoch)  # a rule that asks if batches repeat

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a fit resumed with nothing left to train never reached on_train_start: the
        # generators are still the ones the checkpoint it loaded holds for it
        own = self._resume_random.pending or random_states(self.device)
        saved = {"random_states": own, "skipped_steps": self._skipped_steps}
        by_rank = every_process_random_states(own, self.trainer.world_size)
        if by_rank is not None:
            saved["random_states_by_rank"] = by_rank
        # each logger's own version, which `lsframe fit --ckpt_path last` continues
        saved["logger_versions"] = [getattr(x, "version", None) for x in self.trainer.loggers]
        saved["callback_metrics"] = callback_metrics_to_save(self.trainer)
        checkpoint["lsframe"] = saved
        mark_an_epoch_ended_by_its_limit(checkpoint, self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # before Lightning restores the callbacks' states
            migrate_state_keys(self.trainer.callbacks, checkpoint.get("callbacks") or {})
        finish_epoch_of_an_epoch_end_checkpoint(checkpoint)  # before the loops are restored
        saved = checkpoint.get("lsframe", {})
        self._skipped_steps = saved.get("skipped_steps", 0)
        self._resume_random.hold(own_random_states(saved, self.global_rank))
        self._saved_callback_metrics = saved.get("callback_metrics")

    def on_train_epoch_end(self) -> None:
        step_schedulers(self, "epoch", on_metric=True)  # after the epoch's validation

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_logging_step:
            self._resumed_logging_step = False
            align_resumed_logging_step(self.trainer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        policy.check_steps_taken(self, outputs, batch_idx)
        self._held_stop.update(self.trainer, pending=bool(self._micro_batches))

    def on_validation_epoch_start(self) -> None:
        float32_metric_states(self)  # bf16-true/16-true converted them with the weights

    def on_test_epoch_start(self) -> None:
        float32_metric_states(self)

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._held_stop.update(self.trainer, pending=bool(self._micro_batches))

    def on_train_start(self) -> None:
        policy.check_one_optimizer(self.trainer)
        self._steps_at_start, self._own_step_ran = self.trainer.global_step, False
        self._held_stop = HeldStop()
        self._resumed_logging_step = self.trainer.ckpt_path is not None
        if self._resumed_logging_step:
            restore_callback_metrics(self.trainer, self._saved_callback_metrics)
        check_line_search_schedulers(self.trainer, self)
        warn_exception_checkpoint(self.trainer)
        restore_loader_position(self.trainer)  # first: a new iterator may draw a base seed
        self._resume_random.restore(self.trainer.ckpt_path is not None, self.device)

    def on_train_end(self) -> None:
        # an update of the last step that made the parameters non-finite meets no later loss
        for optimizer in self.trainer.optimizers:
            policy.check_parameters_finite(optimizer, self.trainer.global_step)


class _StepEvaluator:
    """The closure of one optimizer step over a fixed list of micro-batches.

    ``closure(backward=True)`` zeroes the gradients, runs forward and backward over every
    micro-batch, adds the ClosureCallbacks' loss terms, fires the gradient hooks, clips and
    returns the loss; ``closure(backward=False)`` (:meth:`forward`) runs the same forward under
    :func:`torch.no_grad`. Each evaluation restores the step's random state (the same dropout
    masks), and the loss is averaged across processes (the same decisions on every DDP rank).
    """

    def __init__(
        self, module: ClosureModule, optimizer: torch.optim.Optimizer, micro_batches: Sequence[Any]
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.micro_batches = list(micro_batches)
        self.random_state = StepRandomState(module.device)
        self.evaluations = 0
        self.loss_at_start: Tensor | None = None
        self.skipped = False

    def forward(self) -> Tensor:
        """Forward-only evaluation at the current parameters (no graph kept)."""
        return self.closure(backward=False)

    def closure(self, backward: bool = True) -> Tensor:
        self.random_state.restore()
        self.evaluations += 1
        # only the first full evaluation at x_t may move BatchNorm running statistics, and only
        # with a finite loss: trial points and re-evaluations must not count as extra batches
        statistics = NormStatistics(self.module.model)
        if not backward:
            try:
                with torch.no_grad():
                    loss = mean_over_processes(self.module._trainer, self._loss(backward=False))
            finally:
                reshard([self.module])
            statistics.restore()
            return loss
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = mean_over_processes(self.module._trainer, self._loss(backward=True))
        fp16 = fp16_plugin(self.module._trainer)
        if fp16 is not None:  # backward was of scale * loss: checks and hooks see true gradients
            fp16.unscale_(self.optimizer)
        first = self.loss_at_start is None
        if first:
            self.loss_at_start = loss
        # before the gradient hooks: a NaN would poison callback state (DPS scores, the valley
        # adaptor's EMA), and torch optimizers would apply it
        problem = policy.nonfinite_problem(loss, self.optimizer)
        if not first or problem is not None:
            statistics.restore()
        if problem is not None:
            if fp16 is not None and torch.isfinite(loss):  # fp16 overflow: the plugin skips it
                raise GradientOverflow(loss)
            step = self.module.trainer.global_step
            policy.check_parameters_finite(self.optimizer, step)  # else skipping never ends
            if self.module.nonfinite_loss == "raise":
                raise policy.nonfinite_error(problem, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped = True
            return loss
        module = self.module
        module.on_gradients_ready(self.optimizer)  # the module's hook, then the callbacks'
        call_on_gradients_ready(module.trainer, module, self.optimizer)
        if module.gradient_clip_val is not None:
            module.clip_gradients(
                self.optimizer,
                gradient_clip_val=module.gradient_clip_val,
                gradient_clip_algorithm=module.gradient_clip_algorithm,
            )
        call_on_gradients_ready(module.trainer, module, self.optimizer, after_clipping=True)
        return loss

    def _loss(self, backward: bool) -> Tensor:
        module = self.module
        n = len(self.micro_batches)
        shares = micro_batch_shares([module.micro_batch_size(b) for b in self.micro_batches])
        total = torch.zeros((), device=module.device)
        for i, batch in enumerate(self.micro_batches):
            last = i == n - 1
            loss = module.compute_loss(batch)
            check_loss(loss, f"{type(module).__name__}.compute_loss", backward)
            loss = loss / n if shares is None else loss * shares[i]
            if last:
                extra = module.closure_loss_terms()
                if extra is not None:
                    loss = loss + extra
            if backward:
                with nullcontext() if last else no_backward_sync(module.trainer):
                    module.manual_backward(loss)
            total = total + loss.detach().float()
        return total
