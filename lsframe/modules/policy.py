"""What :class:`lsframe.modules.ClosureModule` refuses: sharding, precision and callbacks that
cannot work with its closure, data that disagrees with the model, and non-finite steps. Each
check raises with the setting to change."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lsframe.callbacks.base import check_closure_callbacks
from lsframe.errors import ConfigError, NonFiniteLossError, NonFiniteParametersError
from lsframe.optim import all_finite, info_for
from lsframe.precision import FP16MixedPrecision, emulated_bf16
from lsframe.validation import check_int_at_least, check_positive


def check_sharding(strategy: Any, optimizer: torch.optim.Optimizer) -> None:
    """Refuse FSDP1 (Lightning's ``FSDPStrategy``) for optimizers that reduce over parameters.

    FSDP1 hands the optimizer plain tensors holding each rank's slice of a flattened parameter,
    so nothing tells a norm or an inner product that the other slices exist: the line searches
    and Lamb would decide from a part of the model, differently on every rank. FSDP2 parameters
    are DTensors, which lsframe reduces over all shards (``lsframe.optim._sharded``). Which
    optimizers reduce over parameters is their registry record's ``reduces_over_parameters``.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy) and info_for(optimizer).reduces_over_parameters:
        raise ValueError(
            f"trainer.strategy: {type(optimizer).__name__} needs norms and inner products over "
            "whole parameters, which Lightning's FSDPStrategy (FSDP1, flat slices) hides. Shard "
            "with FSDP2 instead: strategy ModelParallelStrategy and torch's fully_shard in the "
            "module's configure_model (see README, Distributed training), or use DDP."
        )


def check_step_options(accumulate_grad_batches: Any = 1, gradient_clip_val: Any = None) -> None:
    """The module's step options: ``accumulate_grad_batches`` an integer >= 1,
    ``gradient_clip_val`` None or > 0 (the module when built; the config check before)."""
    check_int_at_least(1, accumulate_grad_batches=accumulate_grad_batches)
    check_positive(allow_none=True, gradient_clip_val=gradient_clip_val)


def check_precision(precision: str | int | None, plugins: Sequence[Any] = ()) -> None:
    """Refuse ``16-mixed`` (and ``16``): its GradScaler cannot drive a closure; fp16 goes through
    lsframe's own plugin, :class:`lsframe.precision.FP16MixedPrecision`, which is the precision
    itself, so ``precision`` must then be unset (:class:`~lsframe.errors.ConfigError` at
    ``trainer.precision``).

    Args:
        precision: ``trainer.precision`` as configured (None: unset).
        plugins: The configured ``trainer.plugins`` (instances or classes).
    """
    if any(_is_fp16_plugin(plugin) for plugin in plugins):
        if precision is not None:
            raise ConfigError(
                "lsframe.precision.FP16MixedPrecision is the precision (fp16 with loss scaling) "
                f"and cannot be combined with precision={precision!r}: set trainer.precision: null",
                where="trainer.precision",
            )
        return
    if str(precision) in ("16-mixed", "16"):
        raise ConfigError(
            f"precision={precision!r} cannot drive lsframe's closure: its GradScaler runs the "
            "closure once and then steps without it, so trial evaluations are impossible "
            "(torch's GradScaler.step refuses closures). For fp16 use lsframe's loss scaling "
            "instead: trainer.plugins: [lsframe.precision.FP16MixedPrecision] with "
            "trainer.precision: null (configs/trainer/fp16_linesearch.yaml); or "
            "precision='bf16-mixed' (no scaler) or '32-true'.",
            where="trainer.precision",
        )


def _is_fp16_plugin(plugin: Any) -> bool:
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return issubclass(cls, FP16MixedPrecision)


def check_fit(trainer: pl.Trainer) -> None:
    """Everything a ClosureModule checks when a fit starts: the precision (lsframe's fp16 plugin,
    or one without a GradScaler; a warning for bf16 that the CPU would emulate) and the callbacks
    (:func:`lsframe.callbacks.base.check_closure_callbacks`)."""
    if not _is_fp16_plugin(trainer.precision_plugin):
        check_precision(str(trainer.precision))
        cpu = isinstance(trainer.accelerator, CPUAccelerator)
        reason = (
            emulated_bf16("cpu" if cpu else "other") if "bf16" in str(trainer.precision) else None
        )
        if reason is not None:
            rank_zero_warn(
                f"trainer.precision: {trainer.precision!r}: {reason}; use '32-true' on this "
                "machine, or a CPU with AVX-512 BF16/AMX, or a GPU"
            )
    check_closure_callbacks(trainer.callbacks)
    # Lightning tells a manual-optimization module to save its state before optimizer.step()
    # for every_n_train_steps; lsframe's modules save the state after the step, as automatic
    # optimization does (the step is the one global_step counts), so the advice does not apply
    warnings.filterwarnings(
        "ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps"
    )


#: Lightning's warnings, on restoring a checkpoint, that concern continuing its fit: the fit's
#: callbacks (DPS, EWC, ...) left out of the config, and the checkpoint folder of that fit. An
#: evaluation needs neither (the callbacks steer training; it saves no checkpoint).
FIT_ONLY_WARNINGS = (
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to "
    r"be provided",
    r"The dirpath has changed from .*, therefore `best_model_score`",
)


@contextlib.contextmanager
def fit_only_warnings_off() -> Iterator[None]:
    """Within the block (``lsframe validate``, ``test``, ``predict``), Lightning's
    :data:`FIT_ONLY_WARNINGS` are not shown; the filters end with it, so a fit in the same
    process still warns."""
    with warnings.catch_warnings():
        for message in FIT_ONLY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def check_one_optimizer(trainer: pl.Trainer) -> None:
    """A ClosureModule steps one optimizer, through one closure: several (a
    ``configure_optimizers`` that returns a list) are refused before the first step."""
    count = len(trainer.optimizers)
    if count != 1:
        raise ConfigError(
            f"a ClosureModule steps one optimizer, and configure_optimizers returned {count}: "
            "give the parts param groups of one optimizer instead (each group's lr_multiplier "
            "scales its step)",
            where="configure_optimizers",
        )


def check_steps_taken(module: Any, outputs: Any, batch_idx: int) -> None:
    """After a step's worth of batches: a subclass whose ``training_step`` returned a loss, as
    under automatic optimization, and neither ran the ClosureModule's nor stepped an optimizer
    itself trains nothing, and Lightning would finish the fit without a word (a returned loss
    is not used under manual optimization). A ``training_step`` returning None skips its batch,
    as in Lightning."""
    returned = isinstance(outputs, dict) and outputs.get("loss") is not None
    if not returned or getattr(module, "_own_step_ran", True):
        return
    if batch_idx + 1 < module.accumulate_grad_batches:
        return
    if module.trainer.global_step != getattr(module, "_steps_at_start", 0):
        return  # it steps the optimizer itself
    name = type(module).__name__
    raise ConfigError(
        f"{name}.training_step took no optimizer step (lsframe's modules step in "
        "ClosureModule.training_step; a returned loss is not used): add a loss term by "
        "overriding compute_loss (or with a ClosureCallback's closure_loss), or call "
        "super().training_step(batch, batch_idx)",
        where=f"{name}.training_step",
    )


def check_data(datamodule: Any, **expected: Any) -> None:
    """Raise :class:`~lsframe.errors.ConfigError` when an attribute of ``datamodule`` disagrees
    with the model's setting of the same name, naming the ``model.init_args.<key>`` to set.
    Attributes the DataModule lacks are not checked."""
    for key, mine in expected.items():
        theirs = getattr(datamodule, key, None)
        if theirs is not None and theirs != mine:
            raise ConfigError(
                f"{key} is {mine} but the data ({type(datamodule).__name__}) has "
                f"{theirs}: set it to {theirs}",
                where=f"model.init_args.{key}",
            )


def nonfinite_problem(loss: Tensor, optimizer: torch.optim.Optimizer) -> str | None:
    """What is not finite after a backward evaluation: the loss, else a gradient (one reduction
    per tensor, one sync); None when everything is finite."""
    if not torch.isfinite(loss):
        return f"training loss {loss.item()}"
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not all_finite(grads):
        return f"gradient (loss {loss.item():.6g} was finite)"
    return None


def float16_eps_hint(optimizer: torch.optim.Optimizer) -> str | None:
    """Why an Adam-type update of float16 parameters gives NaN: its ``eps`` rounds to 0 in
    float16 (below 6e-8), so a coordinate with no gradient yet divides 0 by 0. None where no
    float16 parameter has such an ``eps``."""
    for group in optimizer.param_groups:
        eps = group.get("eps")
        halves = any(p.dtype == torch.float16 for p in group["params"])
        if halves and isinstance(eps, float) and torch.tensor(eps, dtype=torch.float16) == 0:
            return (
                f"the parameters are float16, where eps={eps:g} rounds to 0, so the update "
                "divides 0 by 0: set eps >= 6e-08, or train in bf16-true or a mixed precision"
            )
    return None


def check_parameters_finite(optimizer: torch.optim.Optimizer, step: int) -> None:
    """After a non-finite loss or gradient: the parameters themselves must be finite. Where an
    earlier update made them non-finite, no setting of ``nonfinite_loss`` helps (under ``skip``
    every later step would be skipped and the run would end "finished" with nothing learned),
    and a checkpoint now would save them: :class:`NonFiniteParametersError` says so."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if all_finite([p.detach() for p in params]):
        return
    hint = float16_eps_hint(optimizer)
    cause = hint or "lower the step size or resume from a checkpoint before it"
    raise NonFiniteParametersError(
        f"non-finite parameters at global step {step}: an earlier update made them so, and "
        f"skipping steps cannot mend that; {cause}",
        where="model.init_args.optimizer" + (".init_args.eps" if hint else ""),
    )


def nonfinite_error(problem: str, step: int) -> NonFiniteLossError:
    """The error of ``nonfinite_loss="raise"``, naming the problem, the step and the setting."""
    return NonFiniteLossError(
        f"non-finite {problem} at global step {step}; the parameters were not changed. "
        "Set nonfinite_loss='skip' to skip such steps instead",
        where="model.init_args.nonfinite_loss",
    )


def check_label_names(names: Sequence[str], count: int, count_key: str, argument: str) -> None:
    """``names`` are ``count`` distinct class names (``count_key`` names the count in the
    message: ``num_labels``, ``num_classes``), else a :class:`ConfigError` at ``argument``."""
    if len(names) != count or len(set(names)) != count:
        raise ConfigError(
            f"label_names must be {count} distinct class names ({count_key}: {count}), "
            f"got {list(names)}",
            argument=argument,
        )
