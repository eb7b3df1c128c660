"""What ``lsframe sequential`` keeps in its ``output_dir`` between runs: the sequence state
(``sequence_state.pt``: the accuracy matrix, the task heads, the random generators), the stage
checkpoints (``stage_<i>.ckpt``) and the config the sequence started with
(``sequence_config.json``), with the checks a rerun makes before it resumes, and the module of a
stage checkpoint for ``lsframe export``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lsframe import run_config
from lsframe.checkpoints import read_torch_file
from lsframe.errors import DataError, MissingFileError
from lsframe.run_config import defining_config

STATE_FILE = "sequence_state.pt"
CONFIG_FILE = "sequence_config.json"
RUNNER_FILE = "runner_config.json"  # what a runner built in Python records (no config)
_STATE = "the sequence_state.pt that lsframe sequential writes (matrix and heads)"
STAGE_CHECKPOINT = (
    "a stage checkpoint that lsframe sequential writes (state_dict and callbacks; one written "
    "before lsframe 0.1's restructuring cannot be read safely: rerun with a new output_dir)"
)


def read_sequence_state(output_dir: str | Path, num_stages: int | None = None) -> dict | None:
    """The saved progress of a sequence in ``output_dir`` (None when it has none), read with
    ``weights_only=True``: ``matrix`` (one row per finished stage) and ``heads`` (task → head
    state dict); the last finished stage's ``stage_<i>.ckpt`` must be there too.

    Raises:
        DataError: the state file does not load that way, lacks its keys, or has more rows than
            ``num_stages``; naming the file.
        MissingFileError: the stage checkpoint it points to is absent.
    """
    path = Path(output_dir) / STATE_FILE
    if not path.exists():
        return None
    state = read_torch_file(path, "sequence state", _STATE)
    matrix = state.get("matrix") if isinstance(state, dict) else None
    heads = state.get("heads") if isinstance(state, dict) else None
    if not isinstance(matrix, list) or not matrix or not isinstance(heads, dict):
        raise DataError(f"sequence state lacks its matrix or heads; expected {_STATE}", str(path))
    if num_stages is not None and len(matrix) > num_stages:
        raise DataError(
            f"sequence state has {len(matrix)} finished stages but the config has {num_stages}",
            where=str(path),
        )
    stage = Path(output_dir) / f"stage_{len(matrix) - 1}.ckpt"
    if not stage.is_file():
        raise MissingFileError(
            f"stage checkpoint not found; expected {STAGE_CHECKPOINT}", str(stage)
        )
    return state


def _has_progress(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds a sequence's progress (finished or preempted stages)."""
    return (output_dir / STATE_FILE).exists() or any(output_dir.glob("stage_*_preempted.ckpt"))


def check_same_sequence(config: Any, write: bool = False) -> None:
    """Refuse to resume the progress in ``output_dir`` under another config than the one
    ``sequence_config.json`` says it started with (:mod:`lsframe.run_config`); with ``write``,
    record this config where there is no progress yet."""
    output_dir, current = Path(config.output_dir), defining_config(config, ("output_dir",))
    if not _has_progress(output_dir):
        if write:
            run_config.record(output_dir / CONFIG_FILE, current)
        return
    remedy = "rerun it with that config to resume, or choose another output_dir"
    what = f"the sequence in {output_dir}"
    run_config.check_recorded(output_dir / CONFIG_FILE, current, what, remedy, "output_dir")


def runner_record(
    module: Any, stages: list[Any], trainer: dict[str, Any], callbacks: list[Any], **settings: Any
) -> dict[str, Any]:
    """What a :class:`~lsframe.sequential.SequenceRunner` built in Python computes, as plain
    JSON: the module's and each stage DataModule's saved hyperparameters, the stages' names and
    lengths, the trainer settings that are not operational
    (:data:`~lsframe.run_config.OPERATIONAL_TRAINER_KEYS`), each callback's class and public
    plain attributes, and ``settings`` (heads, head_attr, metric)."""

    def plain_attributes(obj: Any) -> dict[str, Any]:
        return {
            k: v
            for k, v in vars(obj).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, list, tuple))
        }

    named = run_config._named
    record = {
        "module": [named(type(module)), dict(getattr(module, "hparams", {}) or {})],
        "stages": [
            [s.name, s.max_epochs, s.max_steps, named(type(s.data)), dict(s.data.hparams)]
            for s in stages
        ],
        "trainer": {
            k: v for k, v in trainer.items() if k not in run_config.OPERATIONAL_TRAINER_KEYS
        },
        "callbacks": [[named(type(c)), plain_attributes(c)] for c in callbacks],
        **settings,
    }
    return json.loads(json.dumps(record, sort_keys=True, default=named))


def check_same_runner(output_dir: Path, current: dict[str, Any], write: bool) -> None:
    """Refuse to resume the progress in ``output_dir`` under another runner than the one
    ``runner_config.json`` records (a sequence run from Python: a notebook rerun with another
    λ or data size printed the first run's matrix as its own); with ``write``, record
    ``current`` where there is no progress yet. The command line's
    :func:`check_same_sequence` checks the whole config before this."""
    if not _has_progress(output_dir):
        if write:
            run_config.record(output_dir / RUNNER_FILE, current)
        return
    remedy = (
        "rerun it with the same module, stages, trainer settings and callbacks to resume, or "
        "choose another output_dir"
    )
    what = f"the sequence in {output_dir}"
    run_config.check_recorded(output_dir / RUNNER_FILE, current, what, remedy, "output_dir")


def is_stage_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ``stage_<i>.ckpt`` beside the ``sequence_config.json`` of its run."""
    path = Path(path)
    return (
        bool(re.fullmatch(r"stage_\d+\.ckpt", path.name)) and (path.parent / CONFIG_FILE).is_file()
    )


def load_stage_module(path: str | Path) -> Any:
    """The module after a stage of a sequence, with that stage's task head: built from the
    ``model`` section of the run's ``sequence_config.json`` (with the stage's class names where
    the section sets none, :func:`with_stage_label_names`), its weights from ``path`` (read
    with ``weights_only=True``).

    Raises:
        DataError: the config has no model section that builds, or the weights do not fit it.
    """
    from jsonargparse import ArgumentParser

    from lsframe.modules import ClosureModule

    path = Path(path)
    config = json.loads((path.parent / CONFIG_FILE).read_text())
    model = with_stage_label_names(config, int(path.stem.split("_")[1]))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ClosureModule, "model")
    try:
        module = parser.instantiate_classes(parser.parse_object({"model": model})).model
    except Exception as error:  # noqa: BLE001 - any failure: the recorded model does not build
        raise DataError(
            f"the model section of {CONFIG_FILE} does not build a module: {error}", str(path)
        ) from error
    checkpoint = read_torch_file(path, "stage checkpoint", STAGE_CHECKPOINT)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise DataError(f"the weights do not fit the recorded model: {error}", str(path)) from error
    return module


def with_stage_label_names(config: dict[str, Any], stage: int) -> dict[str, Any]:
    """The ``model`` section of a sequence's config, with ``label_names`` set to those of stage
    ``stage``'s DataModule (a GLUE task's classes) when the section leaves them null, so an
    exported stage names its classes as an exported fit does. Unchanged when the section sets
    them, or the stage's DataModule does not build or has none, or not ``num_labels`` of them
    (a head of another size)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    model = json.loads(json.dumps(config["model"]))
    init = model.get("init_args") or {}
    if init.get("label_names") is not None or "label_names" not in init:
        return model
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        data = config["stages"][stage]["data"]
        names = parser.instantiate_classes(parser.parse_object({"data": data})).data.label_names
    except Exception:  # noqa: BLE001 - no names to add: the export goes on without them
        return model
    if names and len(names) == init.get("num_labels"):
        init["label_names"] = list(names)
    return model
