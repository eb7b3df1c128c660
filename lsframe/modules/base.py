"""The closure-driven base LightningModule: the one place where an optimizer step happens.

Every optimizer in lsframe, line search or not, receives the same closure::

    closure(backward: bool = True) -> Tensor

With ``backward=True`` it zeroes the gradients, runs forward and backward over every micro-batch of
the step (gradient accumulation), adds the loss terms contributed by callbacks (e.g. an EWC
penalty), fires the gradient hook, clips, and returns the loss. With ``backward=False`` it runs the
same forward under :func:`torch.no_grad` and returns the loss, keeping no graph. Every evaluation in
one step sees the same micro-batches and the same dropout masks, because the random state is
restored at the start of each evaluation. The returned loss is averaged across processes, so that
under DDP every rank takes the same accept/reject decisions.

The step goes through :meth:`LightningOptimizer.step`, so ``trainer.global_step``, ``max_steps``
and checkpoint intervals keep working. Lightning's precision plugin wraps the closure and calls it
without arguments; an optimizer that also needs forward-only trials declares
``accepts_forward_closure = True`` and receives them as the ``forward`` keyword of ``step``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lsframe.lr_distribution import multipliers_for
from lsframe.modules._random import StepRandomState, random_states, set_random_states
from lsframe.optim._functional import all_finite
from lsframe.optim.param_groups import apply_part_multipliers, weight_decay_groups
from lsframe.optim.step_size_schedule import StepSizeSchedule
from lsframe.parts import part_groups


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    """AdamW with lr 2e-5 and weight decay 0.01, the usual transformer fine-tuning baseline."""
    return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)


def check_sharding(strategy: Any, optimizer: torch.optim.Optimizer) -> None:
    """Refuse FSDP1 (Lightning's ``FSDPStrategy``) for optimizers that reduce over parameters.

    FSDP1 hands the optimizer plain tensors holding each rank's slice of a flattened parameter,
    so nothing tells a norm or an inner product that the other slices exist: the line searches
    and Lamb would decide from a part of the model, differently on every rank. FSDP2 parameters
    are DTensors, which lsframe reduces over all shards (``lsframe.optim._sharded``).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy) and getattr(optimizer, "reduces_over_parameters", False):
        raise ValueError(
            f"trainer.strategy: {type(optimizer).__name__} needs norms and inner products over "
            "whole parameters, which Lightning's FSDPStrategy (FSDP1, flat slices) hides. Shard "
            "with FSDP2 instead: strategy ModelParallelStrategy and torch's fully_shard in the "
            "module's configure_model (see README, Distributed training), or use DDP."
        )


class ClosureModule(pl.LightningModule):
    """Base module that owns the optimization loop through one closure (manual optimization).

    Subclasses say only how to compute a loss from a batch (:meth:`compute_loss`) and, for
    evaluation, how to score a batch. Callbacks may implement two optional hooks, looked up by name:

    * ``closure_loss(trainer, pl_module) -> Tensor | None``: a term added to the loss of every
      closure evaluation, trial evaluations included (e.g. an EWC penalty).
    * ``on_gradients_ready(trainer, pl_module, optimizer)``: called after the full backward of a
      step (all micro-batches, callback loss terms included) and before clipping and the optimizer's
      use of the gradients. Every lsframe optimizer and every first-order torch optimizer runs the
      backward closure once per step, so this fires exactly once per optimizer step. (An
      optimizer that runs it several times per step, like LBFGS, fires it each time; stateful
      gradient callbacks such as ValleyExploration then advance once per call.)

    Args:
        model: The network to train. Parameters with ``requires_grad=False`` never reach the
            optimizer.
        optimizer: Callable that builds the optimizer from parameter groups (from YAML:
            ``class_path`` + ``init_args``). Default: AdamW(lr=2e-5, weight_decay=0.01).
        lr_scheduler: Optional callable that builds a scheduler from the optimizer; stepped once
            per optimizer step. A scheduler with a ``total_steps`` attribute left ``None`` gets the
            number of optimizer steps of the run. On a line-search optimizer it drives the groups'
            ``lr_multiplier`` (see :class:`lsframe.optim.StepSizeSchedule`), never the search.
        accumulate_grad_batches: Micro-batches per optimizer step. The DataModule's batch is the
            micro-batch; the effective batch is ``batch_size * accumulate_grad_batches``.
        gradient_clip_val: Clip gradients to this value after the full backward (None: no clip).
        gradient_clip_algorithm: ``"norm"`` (global L2 norm) or ``"value"``.
        param_grouping: How trainable parameters are grouped for the optimizer: ``"decay"``
            puts 1-D parameters (biases, norm weights) into a ``no_decay`` group with
            ``weight_decay=0`` and the rest into ``decay``; ``"parts"`` makes one group per part
            of :func:`lsframe.parts.split_into_parts` (PLASLS, per-part learning rates);
            ``"single"`` makes one group ``all``.
        num_parts: Number of parts for ``param_grouping="parts"``. Default: 10.
        lr_distribution: Per-part learning-rate multipliers (BERTcL): a mapping part → multiplier,
            a preset name (``flat``, ``bertcl_combined``) or a YAML/JSON file; see
            :mod:`lsframe.lr_distribution`. Needs ``param_grouping="parts"``.
        nonfinite_loss: What to do when the loss at the current parameters or a gradient is NaN
            or infinite (checked before the gradient hooks and the optimizer):
            ``"raise"`` stops with an error naming the step; ``"skip"`` drops the gradients so no
            parameter changes, and logs ``train/skipped_steps``.
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
        if lr_distribution is not None and param_grouping != "parts":
            raise ValueError(
                "lr_distribution needs param_grouping='parts' (one param group per part), got "
                f"param_grouping={param_grouping!r}"
            )
        if param_grouping not in ("decay", "parts", "single"):
            raise ValueError(
                f"param_grouping must be 'decay', 'parts' or 'single', got {param_grouping!r}"
            )
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"gradient_clip_val must be positive or None, got {gradient_clip_val}")
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(
                f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}"
            )
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
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
        if lr_distribution is not None:  # bad names or values fail here, not at fit time
            multipliers_for(model, lr_distribution, num_parts)
        self._micro_batches: list[Any] = []
        self._evaluations = 0
        self._skipped_steps = 0
        self._random_states_to_load: dict[str, Any] | None = None

    # ----------------------------------------------------------------- what subclasses provide
    def compute_loss(self, batch: Any) -> Tensor:
        """Mean loss of one micro-batch. Task modules implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    # ------------------------------------------------------------------------------ optimizers
    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups of the trainable parameters handed to the optimizer factory."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameter")
        if self.param_grouping == "decay":
            return weight_decay_groups(named)
        if self.param_grouping == "parts":
            return part_groups(self.model, self.num_parts)
        return [{"name": "all", "params": [p for _, p in named]}]

    def num_optimizer_steps(self) -> int:
        """Optimizer steps in the whole run (max_steps, or epochs x ceil(batches / accumulation))."""
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs == -1:
            return trainer.max_steps
        trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
        batches = trainer.num_training_batches
        if math.isinf(batches):
            if trainer.max_steps > 0:
                return trainer.max_steps
            raise ValueError("an infinite train dataloader needs trainer.max_steps")
        steps = math.ceil(batches / self.accumulate_grad_batches) * max(trainer.max_epochs or 1, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self._trainer is not None:
            check_sharding(self.trainer.strategy, optimizer)
        if self.lr_distribution is not None:
            multipliers = multipliers_for(self.model, self.lr_distribution, self.num_parts)
            apply_part_multipliers(optimizer, multipliers)
        if self.lr_scheduler_factory is None:
            return optimizer
        if all("lr_multiplier" in group for group in optimizer.param_groups):
            scheduler = StepSizeSchedule(optimizer, self.lr_scheduler_factory)
        else:
            scheduler = self.lr_scheduler_factory(optimizer)
        if getattr(scheduler, "total_steps", 0) is None:
            scheduler.set_total_steps(self.num_optimizer_steps())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step()

    def export_pretrained(self, output_dir: str | Path) -> Path:
        """Write a Hugging Face model (and the module's ``tokenizer``, if any) with
        ``save_pretrained``; LoRA adapters are merged into a copy first, so the directory loads
        with the plain ``AutoModelFor...from_pretrained``."""
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        if not hasattr(model, "save_pretrained"):
            raise TypeError(
                f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)"
            )
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(output_dir)
        return output_dir

    def check_data(self, **expected: Any) -> None:
        """Fail early when the DataModule's attribute disagrees with the model's setting.

        ``check_data(num_labels=2)`` raises if ``trainer.datamodule.num_labels`` exists and is not
        2, naming the ``model.<key>`` to set. Attributes the DataModule lacks are not checked.
        """
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        for key, mine in expected.items():
            theirs = getattr(datamodule, key, None)
            if theirs is not None and theirs != mine:
                raise ValueError(
                    f"model.{key} is {mine} but the data ({type(datamodule).__name__}) has "
                    f"{theirs}: set model.{key}: {theirs}"
                )

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if stage == "fit" and precision in ("16-mixed", "16"):
            raise ValueError(
                f"precision={precision!r} cannot drive lsframe's closure: its GradScaler runs the "
                "closure once and then steps without it, so trial evaluations are impossible "
                "(torch's GradScaler.step refuses closures). Use precision='bf16-mixed' (no "
                "scaler) or '32-true'."
            )

    # ---------------------------------------------------------------------------- training step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self._micro_batches.append(batch)
        if (
            len(self._micro_batches) < self.accumulate_grad_batches
            and not self.trainer.is_last_batch
        ):
            return None
        micro_batches, self._micro_batches = self._micro_batches, []
        self.optimizer_step_on(micro_batches)
        return None

    def optimizer_step_on(self, micro_batches: Sequence[Any]) -> Tensor:
        """Run one optimizer step on ``micro_batches`` through ``LightningOptimizer.step``."""
        optimizer = self.optimizers()
        raw_optimizer = getattr(optimizer, "optimizer", optimizer)
        evaluator = _StepEvaluator(self, raw_optimizer, micro_batches)
        kwargs: dict[str, Any] = {}
        if getattr(raw_optimizer, "accepts_forward_closure", False):
            kwargs["forward"] = evaluator.forward
        optimizer.step(closure=evaluator.closure, **kwargs)
        if evaluator.skipped:
            self._skipped_steps += 1
        self._log_step(raw_optimizer, evaluator)  # before the scheduler: the lr this step used
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
        return evaluator.loss_at_start

    def _log_step(self, optimizer: torch.optim.Optimizer, evaluator: _StepEvaluator) -> None:
        self.log("train/loss", evaluator.loss_at_start, prog_bar=True)
        self.log("train/closure_evals", float(evaluator.evaluations))
        for i, group in enumerate(optimizer.param_groups):
            name = group.get("name", str(i))
            self.log(f"step_size/{name}", float(group["lr"]))
        if self.nonfinite_loss == "skip":
            self.log("train/skipped_steps", float(self._skipped_steps))
        search = getattr(optimizer, "state", {}).get("line_search")
        if isinstance(search, dict) and "rejected_steps" in search:
            self.log("train/rejected_steps", float(search["rejected_steps"]))

    # ------------------------------------------------------------------------- callback hooks
    def _callback_hooks(self, name: str) -> Iterator[Callable[..., Any]]:
        trainer = self._trainer
        if trainer is None:
            return
        for callback in trainer.callbacks:
            hook = getattr(callback, name, None)
            if callable(hook):
                yield hook

    def closure_loss_terms(self) -> Tensor | None:
        """Sum of the loss terms that callbacks contribute to every closure evaluation."""
        total = None
        for hook in self._callback_hooks("closure_loss"):
            term = hook(self.trainer, self)
            if term is not None:
                total = term if total is None else total + term
        return total

    def on_gradients_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """The once-per-step gradient hook; also overridable in subclasses (call super)."""
        for hook in self._callback_hooks("on_gradients_ready"):
            hook(self.trainer, self, optimizer)

    def on_train_epoch_start(self) -> None:
        self._micro_batches = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lsframe"] = {
            "random_states": random_states(self.device),
            "skipped_steps": self._skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("lsframe", {})
        self._skipped_steps = saved.get("skipped_steps", 0)
        self._random_states_to_load = saved.get("random_states")

    def on_train_start(self) -> None:
        # the last hook before the first resumed step: nothing after it draws from the generators.
        # Only when this fit resumes (ckpt_path): weights loaded for a new fit keep its seed.
        states, self._random_states_to_load = self._random_states_to_load, None
        if states is not None and self.trainer.ckpt_path is not None:
            set_random_states(states, self.device)


class _NormStatistics:
    """A copy of the running statistics of the model's BatchNorm-style layers (in training)."""

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
        for module, buffers in self.saved:
            for name, value in buffers.items():
                getattr(module, name).copy_(value)


class _StepEvaluator:
    """The closures of one optimizer step over a fixed list of micro-batches."""

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
        statistics = _NormStatistics(self.module.model)
        if not backward:
            with torch.no_grad():
                loss = self._reduce(self._loss(backward=False))
            statistics.restore()
            return loss
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self._reduce(self._loss(backward=True))
        first = self.loss_at_start is None
        if first:
            self.loss_at_start = loss
        problem = None
        if not torch.isfinite(loss):
            problem = f"training loss {loss.item()}"
        elif not self._gradients_finite():
            problem = f"gradient (loss {loss.item():.6g} was finite)"
        if not first or problem is not None:
            statistics.restore()
        if problem is not None:
            self._handle_nonfinite(problem)
            return loss
        module = self.module
        module.on_gradients_ready(self.optimizer)
        if module.gradient_clip_val is not None:
            module.clip_gradients(
                self.optimizer,
                gradient_clip_val=module.gradient_clip_val,
                gradient_clip_algorithm=module.gradient_clip_algorithm,
            )
        return loss

    def _loss(self, backward: bool) -> Tensor:
        module = self.module
        n = len(self.micro_batches)
        total = torch.zeros((), device=module.device)
        for i, batch in enumerate(self.micro_batches):
            last = i == n - 1
            loss = module.compute_loss(batch) / n
            if last:
                extra = module.closure_loss_terms()
                if extra is not None:
                    loss = loss + extra
            if backward:
                with nullcontext() if last else self._no_sync():
                    module.manual_backward(loss)
            total = total + loss.detach().float()
        return total

    def _no_sync(self) -> Any:
        block = getattr(self.module.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else nullcontext()

    def _reduce(self, loss: Tensor) -> Tensor:
        trainer = self.module._trainer
        if trainer is None or trainer.world_size == 1:
            return loss
        return trainer.strategy.reduce(loss, reduce_op="mean")

    def _gradients_finite(self) -> bool:
        # before the gradient hooks: a NaN would poison callback state (DPS scores, the valley
        # adaptor's EMA) and torch optimizers would apply it (one reduction per tensor, one sync)
        grads = [
            p.grad
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        return all_finite(grads)

    def _handle_nonfinite(self, problem: str) -> None:
        step = self.module.trainer.global_step
        if self.module.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"non-finite {problem} at global step {step}; the parameters were not changed. "
                "Set model.nonfinite_loss='skip' to skip such steps instead."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped = True
