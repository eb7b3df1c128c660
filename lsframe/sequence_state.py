"""What ``lsframe sequential`` keeps in its ``output_dir`` between runs: the sequence state
(``sequence_state.pt``: the accuracy matrix, the task heads, the random generators), the stage
checkpoints (``stage_<i>.ckpt``) and the config the sequence started with
(``sequence_config.json``), with the checks a rerun makes before it resumes, and the module of a
stage checkpoint for ``lsframe export``."""

from __future__ import annotations

import inspect
import json
import re
import weakref
from pathlib import Path
from typing import Any

from lsframe import run_config
from lsframe.checkpoints import model_source, read_torch_file, weights_do_not_fit
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
    (:data:`~lsframe.run_config.OPERATIONAL_TRAINER_KEYS`), each callback's class and settings
    (:func:`callback_settings`), and ``settings`` (heads, head_attr, metric)."""

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
        "callbacks": [[named(type(c)), callback_settings(c)] for c in callbacks],
        "format": RECORD_FORMAT,
        **settings,
    }
    return json.loads(json.dumps(record, sort_keys=True, default=named))


_PLAIN = (bool, int, float, str, list, tuple, dict)
#: The version of runner_config.json: 2 reads each callback's settings from its constructor's
#: parameters, dicts and private attributes included (2026-12-07); a record without it is 1.
RECORD_FORMAT = 2
_UNSET = object()
#: Per callback object: its settings when a runner first saw it, and as its last run left them.
_SEEN: weakref.WeakKeyDictionary[Any, tuple[dict[str, Any], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _constructor_names(callback: Any) -> set[str]:
    """The public parameter names of ``callback``'s constructor."""
    try:
        parameters = inspect.signature(type(callback).__init__).parameters
    except (TypeError, ValueError):  # a builtin __init__
        return set()
    return {name for name in parameters if name != "self" and not name.startswith("_")}


def _read_settings(callback: Any) -> dict[str, Any]:
    """The constructor's parameters that ``callback`` keeps under the same name or the same
    name with a leading underscore (Lightning's ``StochasticWeightAveraging`` keeps
    ``swa_lrs`` as ``_swa_lrs``), plain values (dicts and lists included)."""
    kept = vars(callback)
    settings = {}
    for name in _constructor_names(callback):
        value = kept.get(name, kept.get(f"_{name}"))
        if isinstance(value, _PLAIN):
            settings[name] = value
    return settings


def callback_settings(callback: Any) -> dict[str, Any]:
    """A callback's settings as far as they can be read: its constructor's parameters that it
    keeps under the same name, with plain values (``EWC(ewc_lambda=...)``'s ``ewc_lambda``).

    What it learns while it trains is not a setting (EWC's tasks, ModelCheckpoint's best path,
    EarlyStopping's wait count), nor is a parameter the fit filled in (ModelCheckpoint's
    ``dirpath``), so the same callbacks run again resume: a value as a runner's last run left
    it (:func:`note_callbacks_ran`) reads as it stood before the runner first ran; a value
    changed since then is read as it is now."""
    current = _read_settings(callback)
    try:
        before, after = _SEEN[callback]
    except (KeyError, TypeError):  # not run yet, or not weakly referable
        return current
    settings = {}
    for name in {*before, *current}:
        now = current.get(name, _UNSET)
        value = before.get(name, _UNSET) if now == after.get(name, _UNSET) else now
        if value is not _UNSET:
            settings[name] = value
    return settings


def note_callbacks_ran(callbacks: list[Any], before: list[dict[str, Any]]) -> None:
    """Remember what a run left of each callback's settings (``before``: their
    :func:`callback_settings` when it started), for :func:`callback_settings`."""
    for callback, settings in zip(callbacks, before):
        try:
            _SEEN[callback] = (settings, _read_settings(callback))
        except TypeError:  # not weakly referable: read as it is
            pass


def check_same_runner(
    output_dir: Path, current: dict[str, Any], write: bool, callbacks: list[Any] = ()
) -> None:
    """Refuse to resume the progress in ``output_dir`` under another runner than the one
    ``runner_config.json`` records (a sequence run from Python: a notebook rerun with another
    λ or data size printed the first run's matrix as its own); with ``write``, record
    ``current`` where there is no progress yet. The command line's
    :func:`check_same_sequence` checks the whole config before this. ``callbacks`` (those of
    ``current``) read a record of 2026-12-06, which kept every public plain attribute, as
    :func:`callback_settings` reads them."""

    def older(saved: dict[str, Any]) -> dict[str, Any]:
        recorded = saved.get("callbacks")
        if saved.get("format") == RECORD_FORMAT or not isinstance(recorded, list):
            return saved
        now = current.get("callbacks") or []
        kept = []
        for i, (entry, callback) in enumerate(zip(recorded, callbacks)):
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict):
                names = _constructor_names(callback)
                settings = {k: v for k, v in entry[1].items() if k in names}
                # what that record could not hold (a dict, a private attribute) is not compared
                read = now[i][1] if i < len(now) and isinstance(now[i][1], dict) else {}
                settings.update({k: v for k, v in read.items() if k not in entry[1]})
                entry = [entry[0], settings]
            kept.append(entry)
        return {**saved, "callbacks": kept + recorded[len(kept) :], "format": RECORD_FORMAT}

    if not _has_progress(output_dir):
        if write:
            run_config.record(output_dir / RUNNER_FILE, current)
        return
    remedy = (
        "rerun it with the same module, stages, trainer settings and callbacks to resume, or "
        "choose another output_dir"
    )
    what = f"the sequence in {output_dir}"
    run_config.check_recorded(
        output_dir / RUNNER_FILE, current, what, remedy, "output_dir", older=older
    )


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
        source = f"{model_source(model.get('init_args'))} ({CONFIG_FILE})"
        raise weights_do_not_fit(error, path, source) from error
    return module


def with_stage_label_names(config: dict[str, Any], stage: int) -> dict[str, Any]:
    """The ``model`` section of a sequence's config, with ``label_names`` set to those of stage
    ``stage``'s DataModule (a GLUE task's classes) when the section leaves them null, so an
    exported stage names its classes as an exported fit does. Unchanged when the section sets
    them, or the stage's DataModule does not build or has none, or not ``num_labels`` of them.
    Under ``heads: separate`` a stage whose data has another number of classes than the
    section had a head of its own size: ``num_labels`` and ``label_names`` become its data's."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    model = json.loads(json.dumps(config["model"]))
    init = model.get("init_args") or {}
    if "label_names" not in init:
        return model
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        data = config["stages"][stage]["data"]
        data = parser.instantiate_classes(parser.parse_object({"data": data})).data
    except Exception:  # noqa: BLE001 - no names to add: the export goes on without them
        return model
    names, count = getattr(data, "label_names", None), getattr(data, "num_labels", None)
    own = init.get("num_labels") or len(init.get("label_names") or ()) or 2
    if config.get("heads", "separate") == "separate" and count is not None and count != own:
        init["num_labels"] = count  # the stage's head had its task's number of classes
        init["label_names"] = list(names) if names and len(names) == count else None
    elif init.get("label_names") is None and names and len(names) == init.get("num_labels"):
        init["label_names"] = list(names)
    return model
