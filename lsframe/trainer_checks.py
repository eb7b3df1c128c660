"""Checks of a parsed ``fit`` section's Trainer settings and ``checkpoint`` section, before any
weights or data load (part of :func:`lsframe.config_checks.check_parsed`):

* ``trainer.precision`` must be one that drives a closure, or unset under lsframe's fp16 plugin
  in ``trainer.plugins``, whose arguments are checked (:func:`check_precision_setting`);
* ``trainer.accumulate_grad_batches`` / ``gradient_clip_val`` / ``gradient_clip_algorithm`` are
  refused with the module option to set instead (:func:`check_trainer_step_options`);
* ``trainer.val_check_interval``, ``limit_*_batches`` and ``overfit_batches`` must be values
  Lightning takes, and ``max_steps``, ``check_val_every_n_epoch`` and ``fast_dev_run`` counts
  (:func:`check_trainer_intervals`);
* ``trainer.accelerator`` must be a name Lightning knows (:func:`check_accelerator`), and the
  ``checkpoint`` section's values must build its callback (:func:`check_checkpoint_section`):
  Lightning finds either only once the model has loaded, without the key;
* a ``ckpt_path`` file must be a Lightning checkpoint of the configured module
  (:func:`check_ckpt_path`).
"""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

from lsframe.cli_usage import did_you_mean
from lsframe.config_nodes import import_class, located, node_get, plain
from lsframe.errors import ConfigError, LsframeError, one_line

#: Trainer options that Lightning refuses under manual optimization, which lsframe's modules
#: use (one closure per optimizer step): each is a module option of the same name instead.
MODULE_STEP_OPTIONS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def check_precision_setting(trainer: Any) -> None:
    """``trainer.precision`` drives a closure (:func:`.policy.check_precision`); an
    :class:`lsframe.precision.FP16MixedPrecision` in ``trainer.plugins`` is built (its arguments
    checked at ``trainer.plugins[i].init_args``) and needs ``trainer.precision`` unset."""
    from lsframe.modules.policy import check_precision
    from lsframe.precision import FP16MixedPrecision

    plugins = node_get(trainer, "plugins")
    listed = isinstance(plugins, (list, tuple))
    fp16 = []
    for i, node in enumerate(plugins if listed else [] if plugins is None else [plugins]):
        class_path = node_get(node, "class_path")
        cls = import_class(class_path) if isinstance(class_path, str) else None
        if cls is None or not issubclass(cls, FP16MixedPrecision):
            continue
        key = f"trainer.plugins[{i}]" if listed else "trainer.plugins"
        init_args = plain(node_get(node, "init_args")) or {}
        try:
            fp16.append(cls(**init_args))
        except (LsframeError, ValueError, TypeError) as error:
            raise located(error, f"{key}.init_args", init_args) from error
    check_precision(node_get(trainer, "precision"), fp16)


def check_trainer_step_options(trainer: Any, module_key: str) -> None:
    """Refuse ``trainer.accumulate_grad_batches`` (other than 1), ``trainer.gradient_clip_val``
    (other than 0) and ``trainer.gradient_clip_algorithm``: Lightning refuses them under manual
    optimization only when the fit starts; each names the module option to set instead."""
    no_effect = {"accumulate_grad_batches": 1, "gradient_clip_val": 0}
    for name in MODULE_STEP_OPTIONS:
        value = node_get(trainer, name)
        if value is None or (name in no_effect and value == no_effect[name]):
            continue
        raise ConfigError(
            f"trainer.{name} does not apply to lsframe's modules, which step the optimizer "
            f"themselves (one closure per step): set {module_key}.init_args.{name}: {value} "
            "instead",
            where=f"trainer.{name}",
        )


def check_barebones(trainer: Any) -> None:
    """``trainer.barebones``: lsframe's commands always checkpoint (the ``checkpoint`` section,
    preemption) and log, which Lightning's barebones mode refuses one setting at a time, after
    the model has loaded."""
    if node_get(trainer, "barebones"):
        raise ConfigError(
            "barebones turns off logging and checkpointing, which lsframe's commands always do "
            "(the checkpoint section, a stop's last.ckpt): leave it false here, or run "
            "lightning.Trainer(barebones=True) on an lsframe module from Python",
            where="trainer.barebones",
        )


def check_lightning_callback(key: str, cls: type, init_args: dict[str, Any]) -> None:
    """Refuse at its key a stock Lightning callback that cannot work with lsframe's modules
    (manual optimization, the network at ``model``), naming what to use instead; Lightning
    would fail only once the model has loaded, with a traceback."""
    name = cls.__name__
    lineage = {c.__name__ for c in cls.__mro__}  # a subclass fails as its parent does
    if "GradientAccumulationScheduler" in lineage:
        reason = (
            "changes Lightning's accumulation, which lsframe's modules do themselves (one "
            "closure per optimizer step): set model.init_args.accumulate_grad_batches (one "
            "value for the run)"
        )
    elif "BackboneFinetuning" in lineage:
        reason = (
            "freezes the module's 'backbone' and later adds it to the optimizer as a new group; "
            "lsframe's modules hold the network as 'model' and build their groups once: freeze "
            "parameters before the fit (requires_grad=False), or give parts smaller learning "
            "rates (model.init_args.lr_distribution)"
        )
    elif "LearningRateFinder" in lineage:
        reason = (
            "sets the module's 'lr' or 'learning_rate', which lsframe's modules do not have (the "
            "learning rate is model.init_args.optimizer.init_args.lr), and a command line has no "
            "other way to its suggestion: run Tuner(trainer).lr_find(module, datamodule=..., "
            "update_attr=False).suggestion() in Python, then set that lr"
        )
    elif "BatchSizeFinder" in lineage:
        reason = (
            "changes the data's batch size at every fit start, so a stopped run cannot resume "
            "exactly (its trials run again and restore their own checkpoint over the resumed "
            "state): find it once (Tuner(trainer).scale_batch_size in Python) and set "
            "data.init_args.batch_size"
        )
    else:
        if "ModelPruning" in lineage:
            warnings.warn(
                f"ModelPruning ({key}) keeps its pruning masks in no checkpoint: a run stopped "
                "and resumed prunes anew and ends less sparse than an uninterrupted one",
                stacklevel=2,
            )
        return
    raise ConfigError(f"{name} {reason}", where=key)


#: Trainer settings that take a share of the batches (a float in [0, 1]) or a count of them.
BATCH_LIMITS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "overfit_batches",
)


def _batch_limit_problem(value: Any, share: str = "a share of the batches") -> str | None:
    """Why ``value`` is not a share (a float in [0, 1]) or a count of batches (None: it is)."""
    expected = f"expected {share} in [0.0, 1.0] or a number of batches"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{expected}, got {value!r}"
    if not value >= 0 or (isinstance(value, float) and value > 1 and value % 1):  # NaN too
        return f"{expected}, got {value}"
    return None


def _time_interval_problem(value: Any) -> str | None:
    """Why a time-based ``val_check_interval`` (a ``DD:HH:MM:SS`` string or ``timedelta``
    arguments) is not one Lightning parses (None: it is)."""
    if isinstance(value, dict):
        return _timedelta_problem(value)
    parts = value.split(":")
    if len(parts) != 4 or not all(re.fullmatch(r"\s*[+-]?\d+\s*", part) for part in parts):
        return (
            f"expected a share of the epoch in [0.0, 1.0], a number of batches or a duration "
            f"'DD:HH:MM:SS', got {value!r}"
        )
    return None


def _timedelta_problem(value: dict) -> str | None:
    try:
        timedelta(**value)
    except (TypeError, ValueError, OverflowError) as error:
        return f"a duration is timedelta's arguments ({{hours: 1, minutes: 30}}): {error}"
    return None


def _max_time_problem(value: Any) -> str | None:
    """Why ``max_time`` is not a duration Lightning's ``Timer`` parses: ``DD:HH:MM:SS`` with two
    digits after the days, or ``timedelta`` arguments (None: it is, or it is unset)."""
    if value is None or isinstance(value, timedelta):
        return None
    if isinstance(value, dict):
        return _timedelta_problem(value)
    if isinstance(value, str) and re.fullmatch(r"\d+:\d\d:\d\d:\d\d", value.strip()):
        return None
    return f"expected a duration 'DD:HH:MM:SS' (00:12:00:00) or {{hours: 12}}, got {value!r}"


def _count_problem(value: Any, low: int, meaning: str) -> str | None:
    """Why ``value`` is not an integer of at least ``low`` (None: it is, or it is unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return f"expected an integer >= {low} ({meaning}), got {value!r}"
    return None


#: Trainer counts Lightning checks only once the model has loaded (or never: a 0 that divides).
TRAINER_COUNTS = (
    ("max_steps", -1, "-1: no limit"),
    ("max_epochs", -1, "-1: no limit"),
    ("check_val_every_n_epoch", 1, "null: validate by val_check_interval alone"),
    ("fast_dev_run", 0, "or true/false"),
)


def check_trainer_intervals(trainer: Any) -> None:
    """``trainer.val_check_interval`` (a count of batches, a share of the epoch, or a duration)
    and the ``limit_*_batches`` / ``overfit_batches`` shares take values Lightning accepts, as it
    checks them only once the model has loaded; a share of the epoch needs
    ``check_val_every_n_epoch`` set, as in Lightning. ``max_steps`` (-1 or a positive count),
    ``max_epochs`` (-1 or a positive count), ``check_val_every_n_epoch`` and ``fast_dev_run`` are counts (:data:`TRAINER_COUNTS`; a 0
    for the first two ended in a division by zero or a run without a step); ``max_time`` is a
    duration."""
    for name, low, meaning in TRAINER_COUNTS:
        value = plain(node_get(trainer, name))
        if name == "fast_dev_run" and isinstance(value, bool):
            continue
        problem = _count_problem(value, low, meaning)
        if name == "max_steps" and (problem or value == 0):
            problem = f"expected -1 (no limit) or a number of optimizer steps >= 1, got {value!r}"
        if name == "max_epochs" and value == 0:  # Lightning's fit ends before its first step
            problem = "expected -1 (no limit) or a number of epochs >= 1, got 0"
        if problem:
            raise ConfigError(problem, where=f"trainer.{name}")
    for name in BATCH_LIMITS:
        value = node_get(trainer, name)
        problem = None if value is None else _batch_limit_problem(value)
        if problem:
            raise ConfigError(problem, where=f"trainer.{name}")
    problem = _max_time_problem(plain(node_get(trainer, "max_time")))  # Timer: after the model
    if problem:
        raise ConfigError(problem, where="trainer.max_time")
    value = plain(node_get(trainer, "val_check_interval"))
    if value is None:
        return
    if isinstance(value, (str, dict)):
        problem = _time_interval_problem(value)
    elif value == 0 and isinstance(value, int):  # Lightning's parser takes it, then divides
        problem = "expected a share of the epoch in (0.0, 1.0] or a number of batches >= 1, got 0"
    else:
        problem = _batch_limit_problem(value, "a share of the epoch")
        per_epoch = node_get(trainer, "check_val_every_n_epoch", 1)
        if problem is None and isinstance(value, float) and per_epoch is None:
            problem = (
                f"a share of the epoch ({value}) needs trainer.check_val_every_n_epoch; without "
                "it, give a number of batches or a duration 'DD:HH:MM:SS'"
            )
    if problem:
        raise ConfigError(problem, where="trainer.val_check_interval")


#: ``ckpt_path`` values Lightning resolves itself (no file to check here).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def check_ckpt_path(section: Any, subcommand: str = "fit") -> None:
    """A ``ckpt_path`` file loads with ``weights_only=True``, is a Lightning checkpoint, and
    was written by the configured model class (:func:`lsframe.checkpoints.
    read_lightning_checkpoint`; names Lightning resolves, such as ``last``, are left to it,
    except ``best`` for ``fit``, which has no best checkpoint before it runs). A folder is
    refused with the checkpoint to name instead."""
    from lsframe.checkpoints import read_lightning_checkpoint

    path = node_get(section, "ckpt_path")
    if subcommand == "fit" and str(path) == "best":
        raise ConfigError(
            "fit resumes from a checkpoint file or 'last'; 'best' is the best checkpoint of a "
            "fit that has run, for validate, test and predict in the same process",
            where="ckpt_path",
        )
    if not path or str(path) in SPECIAL_CKPT_PATHS or str(path).startswith("registry"):
        return
    if Path(path).is_dir():
        files = sorted(Path(path).glob("*.ckpt")) or sorted(Path(path).glob("**/last*.ckpt"))
        example = f", such as {files[0]}" if files else ""
        raise ConfigError(f"{path} is a folder: name a checkpoint file{example}", "ckpt_path")
    read_lightning_checkpoint(str(path), node_get(node_get(section, "model"), "class_path"))


def check_accelerator(trainer: Any) -> None:
    """``trainer.accelerator``, when a name, is one Lightning knows: ``auto``, ``gpu`` or a
    registered accelerator (``cpu``, ``cuda``, ``mps``, ...), as the Trainer checks it once the
    model has loaded."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    name = node_get(trainer, "accelerator")
    if not isinstance(name, str):
        return
    names = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    if name not in names:
        raise ConfigError(
            f"unknown accelerator {name!r}{did_you_mean(name, names)} "
            f"(accelerators: {', '.join(names)})",
            where="trainer.accelerator",
        )


def check_checkpoint_section(section: Any) -> None:
    """The ``checkpoint`` section builds its callback
    (:class:`lsframe.checkpointing.BestAndLastCheckpoint`, whose constructor checks ``mode``,
    ``every_n_*`` and the rest without touching the disk); its refusal is placed at the key it
    names (``checkpoint.mode``)."""
    from lsframe.checkpointing import BestAndLastCheckpoint

    values = plain(node_get(section, "checkpoint"))
    if not isinstance(values, dict):
        return
    try:
        BestAndLastCheckpoint(**values)
    except Exception as error:  # noqa: BLE001 - Lightning's MisconfigurationException and more
        text = one_line(error) or type(error).__name__
        named = [n for pair in re.findall(r"`(\w+)`|(\w+)=", text) for n in pair if n in values]
        raise ConfigError(
            text, where=f"checkpoint.{named[0]}" if named else "checkpoint"
        ) from error
