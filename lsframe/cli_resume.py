"""What ``--ckpt_path`` reads before anything is built or written: the checks of a resume.

* ``fit --ckpt_path last`` continues the newest run of the logger's folder
  (:meth:`ResumeChecks.continue_last_run`);
* a resumed fit refuses a model setting that differs from its checkpoint's, which Lightning
  would drop without a word, and a loader place the DataModule cannot take
  (:meth:`ResumeChecks.refuse_changes_to_resume`);
* ``validate``, ``test`` and ``predict --ckpt_path last|best`` find the newest fit's file.

Each reads the checkpoint's settings with its tensors mapped, not read
(:func:`lsframe.checkpoints.read_lightning_checkpoint`); the fit loads it once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lsframe.checkpoint_io import find_last_checkpoint
from lsframe.checkpointing import last_checkpoint
from lsframe.checkpoints import read_lightning_checkpoint
from lsframe.config_checks import SHARED_ATTRIBUTES, comparable
from lsframe.data.resumable import refuse_another_place
from lsframe.errors import ConfigError
from lsframe.named_checkpoints import logger_root, resolve_for_evaluation

#: The model keys a link fills in from the DataModule (None in the config until then).
LINKED = {f"init_args.{name}" for name in SHARED_ATTRIBUTES}
_ABSENT, _SUBTREE = object(), object()


def _saved_value(saved: dict[str, Any], key: str) -> Any:
    """The checkpoint's value at ``key`` among its flattened model settings: the value; a
    null above it (a setting the checkpoint left out as a whole); ``_SUBTREE`` where it holds
    settings below ``key``; ``_ABSENT`` where it knows nothing of it."""
    if key in saved:
        return saved[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in saved:
            return saved[prefix]
    if any(name.startswith(key + ".") for name in saved):
        return _SUBTREE
    return _ABSENT


class ResumeChecks:
    """The ``ckpt_path`` methods of :class:`lsframe.cli.LSFrameCLI` (a LightningCLI)."""

    config: Any
    parser: Any
    subcommand: str | None
    trainer: Any
    datamodule: Any
    checked_data: list[tuple[str, Any]]

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the ``model`` section with the hyperparameters saved in a
        ``--ckpt_path`` file. For ``validate``, ``test`` and ``predict`` that is the point; a
        ``fit`` that resumes would silently drop every model setting that differs from the
        checkpoint's (another optimizer, lr, ``nonfinite_loss``): refused, naming the first."""
        subcommand = self.config.get("subcommand")
        self._resolve_named_checkpoint(subcommand)
        section = self.config[subcommand] if subcommand else self.config
        if subcommand in ("validate", "test", "predict"):
            data = getattr(self, "checked_data", [])
            check_checkpoint_head(section.get("ckpt_path"), data, f"lsframe {subcommand}")
        # fit --ckpt_path last reads the newest fit's file as a named one (its model section,
        # LoRA included, and the same refusal); Lightning still resolves "last" itself
        found = self._last_run(section) if subcommand == "fit" else None
        newest = str(found[1]) if found is not None else None
        if newest is not None:
            section.ckpt_path = newest
        try:
            self._compare_model_with_checkpoint(subcommand)
        finally:
            if newest is not None:
                self.config[subcommand].ckpt_path = "last"

    @staticmethod
    def _last_run(section: Any) -> tuple[str, Path] | None:
        """For ``--ckpt_path last`` without a checkpoint ``dirpath``: the logger version and the
        file of the newest last checkpoint under the logger's ``save_dir/name``, if any."""
        if section.get("ckpt_path") != "last" or section.get("checkpoint.dirpath") is not None:
            return None
        root = logger_root(section)
        return find_last_checkpoint(root) if root is not None else None

    def _compare_model_with_checkpoint(self, subcommand: str | None) -> None:
        before = self.config[subcommand].get("model") if subcommand == "fit" else None
        before = before.clone() if before is not None else None
        self._read_model_settings(subcommand)
        if before is None:
            return
        model = self.config[subcommand]["model"]
        after = dict(model.items())
        for key, value in before.items():
            saved = _saved_value(after, key)
            if saved is _ABSENT or saved == value or (value is None and key in LINKED):
                continue  # not in the checkpoint; equal; a link fills it in later
            path = self.config[subcommand].get("ckpt_path")
            shown = saved if saved is not _SUBTREE else model.get(key)
            raise ConfigError(
                f"the checkpoint {path} was saved with {shown!r} here, the config sets "
                f"{value!r}: a resumed fit continues the checkpoint's model and optimizer; "
                "leave the setting as it was, or export the weights (lsframe export) and "
                "start a new fit from them",
                where=f"model.{key}",
            )

    def _resolve_named_checkpoint(self, subcommand: str | None) -> None:
        """``validate|test|predict --ckpt_path last|best``: the newest fit's file, found in its
        folders before anything is built (:mod:`lsframe.named_checkpoints`), checked as a named
        file is, so that the model's hyperparameters are read from it."""
        if subcommand is None:
            return
        section = self.config[subcommand]
        path = resolve_for_evaluation(section, subcommand)
        if path is None:
            return
        read_lightning_checkpoint(path, section.get("model.class_path"))
        if rank_zero_only.rank == 0:
            print(f"lsframe {subcommand}: --ckpt_path {section.ckpt_path}: {path}")
        section.ckpt_path = path

    def continue_last_run(self) -> None:
        """``fit --ckpt_path last``: reuse the logger version of the newest last checkpoint.

        Rerunning a command would start a new ``version_<n+1>``, whose empty checkpoint
        directory is where Lightning looks for ``last``. When the ``checkpoint`` section has no
        ``dirpath`` and the logger (TensorBoard, CSV) has a ``save_dir`` and no fixed
        ``version``, the newest ``<save_dir>/<name>/version_<n>/checkpoints/last*.ckpt`` sets the
        logger's version to ``version_<n>``: logs and checkpoints continue in that directory, and
        Lightning's own ``last`` (the newest of that directory's ``last*.ckpt`` and of any
        OnExceptionCheckpoint file) is loaded. With none found, Lightning warns and the fit
        starts from scratch, so a job script can always pass ``--ckpt_path last``.
        """
        config = self.config[self.subcommand]
        found = self._last_run(config)
        if found is None:
            return
        version, path = found
        logger = config.get("trainer.logger")
        # the first logger's folder holds the checkpoint; the others continue the versions the
        # checkpoint recorded for them (one written before 2026-12-07 records none)
        saved = read_lightning_checkpoint(path).get("lsframe") or {}
        versions = saved.get("logger_versions") or []
        self._continued_csv = []  # their metrics.csv, kept once the resume is accepted
        for i, item in enumerate(logger if isinstance(logger, list) else [logger]):
            init = item.get("init_args") if hasattr(item, "get") else None
            own = version if i == 0 else versions[i] if i < len(versions) else None
            if init is None or own is None or init.get("save_dir") is None:
                continue  # a logger without folders (W&B, MLflow, one of no arguments)
            if i > 0 and init.get("version") is not None:
                continue
            init.version = own
            name = own if isinstance(own, str) else f"version_{own}"
            if str(item.get("class_path", "")).endswith("CSVLogger"):
                root = Path(init.get("save_dir") or ".") / str(init.get("name") or "")
                self._continued_csv.append(root / name)
        if rank_zero_only.rank == 0:
            print(f"lsframe fit: --ckpt_path last: continuing {path.parent.parent} ({path.name})")

    def refuse_changes_to_resume(self) -> None:
        """Before a resumed fit writes anything (its config, its logs): the checkpoint it
        resumes is checked against the config.

        ``fit --ckpt_path last`` resumes as a named file does, so it is checked as one:
        Lightning's hyperparameter reading (:meth:`_parse_ckpt_path`) runs on the file that
        ``last`` stands for (:func:`lsframe.checkpointing.last_checkpoint`, known only once the
        trainer and its logger are built) and a model setting that differs from it is refused.
        Without the check, a changed lr or weight decay was dropped without a word: the
        optimizer's state holds the checkpoint's, while the saved config named the new ones.
        Then the loaders' place in the checkpoint must suit the DataModule and the order the
        strategy's sampler will draw (:func:`lsframe.data.resumable.refuse_another_place`,
        :func:`training_order`)."""
        resumed = self.config[self.subcommand].get("ckpt_path")
        if resumed is None:
            refuse_an_implicit_resume(self.trainer)
        if resumed == "last":
            resumed = last_checkpoint(self.trainer)
            if resumed is None:
                return
            config = self.config
            self.config = config.clone()
            self.config[self.subcommand].ckpt_path = resumed
            try:
                self._parse_ckpt_path()
            finally:
                self.config = config
        if resumed is not None and Path(resumed).is_file():
            loops = read_lightning_checkpoint(resumed).get("loops")
            refuse_another_place(loops, self.datamodule, training_order(self.trainer))

    def _read_model_settings(self, subcommand: str | None) -> None:
        """The ``model`` section given the hyperparameters a ``ckpt_path`` file saved, as
        LightningCLI's ``_parse_ckpt_path`` gives it, from a read that maps the file's tensors
        instead of reading them (:func:`lsframe.checkpoints.read_lightning_checkpoint`): a
        resume reads its checkpoint's settings several times before the fit loads it."""
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        hparams = dict(read_lightning_checkpoint(path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise


def training_order(trainer: pl.Trainer) -> dict[str, int]:
    """The ``processes`` and ``order_seed`` of a training loader's place under ``trainer``'s
    strategy, as Lightning will set it up: its ``DistributedSampler`` (a distributed strategy,
    ``use_distributed_sampler``) splits each epoch over the processes and draws the order from
    ``seed_everything`` (``PL_GLOBAL_SEED``, set before the trainer is built); else one process
    and the loader's own seed, which the place's ``seed`` already covers."""
    connector = trainer._accelerator_connector
    if connector.use_distributed_sampler and connector.is_distributed:
        # a sampler that does not shuffle records no seed, and None is not compared
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return {"processes": trainer.world_size, "order_seed": seed}
    return {"processes": 1}


def refuse_an_implicit_resume(trainer: pl.Trainer) -> None:
    """Refuse a fit without ``--ckpt_path`` that Lightning would resume: with an
    ``OnExceptionCheckpoint`` among the callbacks it turns ``ckpt_path=None`` into ``"last"``
    (its fault-tolerance rule) and loads the newest last or exception file, an earlier run's
    included, where ``lsframe fit`` starts afresh unless told to resume."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    if not any(isinstance(cb, OnExceptionCheckpoint) for cb in trainer.callbacks):
        return
    found = last_checkpoint(trainer)
    if found is not None:
        raise ConfigError(
            f"with an OnExceptionCheckpoint among the callbacks, Lightning would resume this fit "
            f"from {found} although no ckpt_path is given: to resume it, pass --ckpt_path last "
            "(or the file); to start afresh, give the OnExceptionCheckpoint another dirpath or "
            "move the file away",
            where="ckpt_path",
        )


def check_checkpoint_head(path: Any, data: list[tuple[str, Any]], command: str = "lsframe") -> None:
    """``validate``, ``test`` or ``predict`` of a checkpoint on data of another task: the head's
    classes as the checkpoint's module saved them against each configured DataModule's.
    Another count (``num_labels``, ``num_classes``, ``in_chans``) cannot load: it ended in a
    traceback once the model had loaded, and is refused before. Other class names
    (``label_names``: an MRPC checkpoint on RTE's data) gave a score of another task's classes
    without a word; one line on stderr now says which classes are compared, and the command
    runs (evaluating out of domain, SST-2's negative/positive against another dataset's
    classes, is a study of its own).

    Raises:
        ConfigError: at ``ckpt_path``, for another count, naming the checkpoint's task and the
            data's.
    """
    if not path or not Path(str(path)).is_file():
        return
    checkpoint = read_lightning_checkpoint(str(path))
    saved = checkpoint.get("hyper_parameters") or {}
    trained_on = _task_of(checkpoint.get("datamodule_hyper_parameters") or {})
    for data_key, datamodule in data:
        for name in SHARED_ATTRIBUTES:
            mine, theirs = comparable(saved.get(name)), comparable(getattr(datamodule, name, None))
            if mine is None or theirs is None or mine == theirs:
                continue
            at = "" if data_key == "data" else f" at {data_key}"
            task = dict(getattr(datamodule, "hparams", None) or {}).get("task_name")
            task = f" ({task})" if isinstance(task, str) else ""
            said = (
                f"the checkpoint {path} was fine-tuned{trained_on} with {name} {mine!r}; the "
                f"data{at}{task} has {theirs!r}"
            )
            if name != "label_names":
                raise ConfigError(
                    f"{said}: its head cannot score them; name a checkpoint fine-tuned on this "
                    "data, or evaluate it on its own task's",
                    where="ckpt_path",
                )
            if rank_zero_only.rank == 0:
                print(
                    f"{command}: {said}: class i of the checkpoint is scored as class i of the "
                    "data",
                    file=sys.stderr,
                    flush=True,
                )


def _task_of(settings: dict[str, Any]) -> str:
    task = settings.get("task_name")
    return f" on {task}" if isinstance(task, str) else ""
