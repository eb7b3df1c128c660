"""Checks of ``lsframe sequential`` and ``lsframe search`` configs that need no weights: the
stages of a sequence (or of each search pair), the metric each stage's data logs, and where the
results go. Each raises :class:`~lsframe.errors.ConfigError` at the full key, before the model
loads, so a bad value no longer surfaces after a stage has trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lsframe.config_nodes import import_class, node_get
from lsframe.errors import ConfigError, LsframeError
from lsframe.parts import check_patterns_match
from lsframe.validation import check_int_at_least


def _stage_field(stage: Any, name: str) -> Any:
    """A field of a parsed stage: a Namespace, or in a list of lists a ``class_path`` node whose
    fields are its ``init_args``."""
    return node_get(node_get(stage, "init_args") or stage, name)


def check_stages(stages: Any, key: str, length: int | None = None) -> None:
    """``stages`` (parsed, or :class:`~lsframe.sequential.Stage` objects) at config key ``key``:
    at least one (or exactly ``length``), task names unique, and ``max_steps`` / ``max_epochs``
    integers >= -1 (-1: no limit) or unset, not 0 (a stage that trains nothing was reported in
    the matrix as trained, and EWC left its task out), as ``trainer.max_steps`` is refused."""
    if not stages:
        raise ConfigError("give at least one stage", where=key)
    if length is not None and len(stages) != length:
        raise ConfigError(f"give {length} stages (a task pair [A, B]), got {len(stages)}", key)
    names = [_stage_field(stage, "name") for stage in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names must be unique, got {names}", where=key)
    for i, stage in enumerate(stages):
        for name in ("max_steps", "max_epochs"):
            try:
                check_int_at_least(-1, allow_none=True, **{name: _stage_field(stage, name)})
            except LsframeError as error:
                raise error.at(f"{key}[{i}]") from None
            if _stage_field(stage, name) == 0:
                unit = "optimizer steps" if name == "max_steps" else "epochs"
                raise ConfigError(
                    f"expected -1 (no limit) or a number of {unit} >= 1, got 0",
                    where=f"{key}[{i}].{name}",
                )


def check_stage_counts(heads: str, data: list[tuple[str, Any]]) -> None:
    """With ``heads: shared`` one head serves every task, so the DataModules ``data`` (``(key,
    DataModule)`` of one sequence's stages) must have one number of classes: refused at
    ``heads``, naming the first two stages that differ. With ``separate`` each task's head has
    its own stage's count (:mod:`lsframe.sequence_heads`)."""
    counts = [(key, d, getattr(d, "num_labels", None)) for key, d in data]
    counts = [entry for entry in counts if entry[2] is not None]
    if heads != "shared" or len({count for *_, count in counts}) < 2:
        return
    (key, first, count), (other_key, other, other_count) = (
        counts[0],
        next(entry for entry in counts if entry[2] != counts[0][2]),
    )
    raise ConfigError(
        f"heads: shared gives every task one head, but {key} ({type(first).__name__}) has "
        f"{count} classes and {other_key} ({type(other).__name__}) has {other_count}: use "
        "heads: separate (each task a head of its own number of classes), or tasks of one "
        "number of classes",
        where="heads",
    )


def check_task_labels(heads: str, model: Any, sequences: list[list[tuple[str, Any]]]) -> None:
    """The stages' classes against the module (``model``, its parsed section): each of
    ``sequences`` (``(key, DataModule)`` of its stages, from
    :func:`lsframe.config_checks.check_config` with ``task_heads``) of one number of classes
    under ``heads: shared`` (:func:`check_stage_counts`), which must be the module's
    ``num_labels`` (and its ``label_names`` where set); under ``separate`` each task's head
    takes its own stage's, whatever the module's."""
    from lsframe.config_checks import TASK_LABELS, check_shared_attributes
    from lsframe.config_nodes import plain

    init_args = plain(node_get(model, "init_args")) or {}
    for data in sequences:
        check_stage_counts(heads, data)
        if heads == "shared":
            check_shared_attributes("model", init_args, data, TASK_LABELS)


def check_sequence_config(config: Any) -> None:
    """Before anything of ``lsframe sequential`` is built: the stages and ``output_dir`` (this
    module), values and data files (:func:`lsframe.config_checks.check_config`), the stages'
    classes against the heads (:func:`check_task_labels`) and the metric against the data, and a
    sequence state to resume from readable (:func:`lsframe.sequence_state.read_sequence_state`).
    """
    from lsframe.config_checks import check_config
    from lsframe.sequence_state import read_sequence_state

    check_stages(config.stages, "stages")
    check_output_dir(config.output_dir, "output_dir")
    refuse_exception_checkpoints(config.trainer.get("callbacks") or [])
    metrics = (config.model.get("init_args") or {}).get("metrics")
    data = check_config(config, stage="fit", task_heads=True)
    check_task_labels(config.heads, config.model, [data])
    check_metric(config.metric, data, metrics)
    read_sequence_state(config.output_dir, len(config.stages))


#: Validation metrics where lower is better (the others, accuracy, F1, MCC, ..., higher).
LOWER_IS_BETTER = ("loss", "ppl")


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``val/<metric>`` is better: not for :data:`LOWER_IS_BETTER`."""
    return metric not in LOWER_IS_BETTER


def check_metric(metric: str, data: list[tuple[str, Any]], model_metrics: Any = None) -> None:
    """``metric`` is one the validation logs (``val/<metric>``) for each stage: ``loss``, or
    one of the module's ``metrics`` where the config sets them, else of the stage DataModule's
    ``metric_names`` where it says; ``data`` is :func:`lsframe.config_checks.check_config`'s
    result."""
    if metric == "loss":
        return
    for key, datamodule in data:
        names = list(model_metrics or getattr(datamodule, "metric_names", None) or [])
        if names and metric not in names:
            raise ConfigError(
                f"metric {metric!r} is not one {key} logs (val/{metric}); it logs "
                f"{', '.join([*names, 'loss'])}",
                where="metric",
            )


def check_output_dir(path: str | Path, key: str) -> None:
    """``path`` is a directory this process may write in, or does not exist yet and its
    nearest existing parent is one."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file; give a directory", where=key)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        held = "" if existing == path else f" (its parent {existing} is not)"
        raise ConfigError(
            f"{path} is not writable{held}; give a directory you can write in", where=key
        )


def refuse_exception_checkpoints(callbacks: list[Any]) -> None:
    """Refuse Lightning's ``OnExceptionCheckpoint`` among a sequence's ``callbacks`` (objects,
    or their config nodes before anything is built), at ``trainer.callbacks[i]``: with it
    Lightning resumes every stage's fit from its file, an earlier stage's or an earlier
    sequence's (its rule for a fit given no ``ckpt_path``); the runner keeps and resumes from
    its own stage checkpoints."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    for index, callback in enumerate(callbacks):
        path = node_get(callback, "class_path")
        cls = import_class(path) if isinstance(path, str) else type(callback)
        if isinstance(cls, type) and issubclass(cls, OnExceptionCheckpoint):
            raise ConfigError(
                "OnExceptionCheckpoint: Lightning would resume every stage's fit from its file, "
                "an earlier stage's or sequence's; the runner keeps its own stage checkpoints "
                "and resumes from them: remove it",
                where=f"trainer.callbacks[{index}]",
            )


def submodule(module: nn.Module, path: str) -> nn.Module:
    """The submodule at the dotted ``path`` (``head_attr``); refused by name where absent."""
    for part in path.split("."):
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            names = ", ".join(name for name, _ in module.named_children())
            raise ConfigError(
                f"{type(module).__name__} has no submodule {part!r}; its submodules: {names}",
                where="head_attr",
            )
        module = child
    return module


def _parameter_prefixes(model: nn.Module) -> list[str]:
    """The modules that own trainable parameters, each named once (``classifier``, ...)."""
    owners = [n.rpartition(".")[0] for n, p in model.named_parameters() if p.requires_grad]
    return list(dict.fromkeys(owners))[-3:]


def task_head(model: nn.Module, head_attr: str) -> nn.Module:
    """The head that ``heads: separate`` copies for each task: the submodule ``head_attr``, which
    must own trainable parameters (a parameterless one, an activation, left the classifier
    shared by every task while the run reported a head per task)."""
    head = submodule(model, head_attr)
    if not any(p.requires_grad for p in head.parameters()):
        raise ConfigError(
            f"{head_attr!r} is a {type(head).__name__} with no trainable parameters: heads: "
            "separate gives each task its own copy of the classifier head, so name the head's "
            f"module (modules with parameters: {', '.join(_parameter_prefixes(model))})",
            where="head_attr",
        )
    return head


def check_callback_patterns(model: nn.Module, callbacks: list[Any]) -> None:
    """Each EWC's include/exclude patterns match a trainable parameter, checked as the runner is
    built (EWC itself checks as its first stage starts, when files are written already)."""
    from lsframe.callbacks import EWC

    for callback in callbacks:
        if not isinstance(callback, EWC):
            continue
        for argument in ("include", "exclude"):
            try:
                check_patterns_match(model, "EWC", **{argument: getattr(callback, argument)})
            except ConfigError as error:  # in the owner's form: the CLI places it at the callback
                raise ConfigError(f"EWC: {error.message}", argument=argument) from None
