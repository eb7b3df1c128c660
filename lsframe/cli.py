"""lsframe's command line: LightningCLI with subclass mode, forced checkpointing and TensorBoard.

``python -m lsframe fit --config configs/quickstart.yaml`` (also ``validate``, ``test``,
``predict``), and ``python -m lsframe export CKPT OUTPUT_DIR [--lora merge|adapter]`` to write
the model for use without lsframe (:mod:`lsframe.modules.export`).
A fit stops cleanly on SIGTERM, SIGUSR1 and Ctrl-C (:mod:`lsframe.preemption`), and
``--ckpt_path last`` continues the newest run that has a last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import lsframe.data  # noqa: F401 - registers the DataModules for subclass mode
from lsframe.callbacks import HParamsMetrics, PredictionWriter
from lsframe.callbacks.hparams import validation_metrics
from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.cli_errors import unwrap_worker_error
from lsframe.cli_resume import ResumeChecks
from lsframe.cli_usage import usage_error
from lsframe.config_checks import SHARED_ATTRIBUTES, check_parsed
from lsframe.config_nodes import (
    callback_errors_placed,
    dump_enums_as_values,
    import_class,
    node_get,
)
from lsframe.config_nulls import nested_nulls_as_init_args
from lsframe.config_stacking import fresh_class_arguments
from lsframe.errors import ConfigError, DataError, NonFiniteLossError, NonFiniteParametersError
from lsframe.export_command import check_export_dir, export, load_module  # noqa: F401 - their home before
from lsframe.hub import quiet_weight_report
from lsframe.loggers import keep_csv_metrics, readable_progress_bar
from lsframe.modules import ClosureModule
from lsframe.modules.policy import fit_only_warnings_off
from lsframe.preemption import Preemption, catch_signals

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lsframe", "default_hp_metric": False},
    },
    "enable_progress_bar": True,
}


#: ``(DataModule attribute, module init argument)`` links, applied when the DataModule is built
#: (its attributes exist only then), before the module. A link is skipped where the DataModule
#: lacks the attribute or the module the argument; the config check
#: (:func:`lsframe.config_checks.check_module`) has already refused a given value that differs.
LINKS = tuple((f"data.{name}", f"model.init_args.{name}") for name in SHARED_ATTRIBUTES)


def rewritten_arguments(argv: list[str]) -> list[str]:
    """``argv`` as lsframe hands it to jsonargparse: a later ``--config`` file that changes a
    ``class_path`` starts that class from its defaults
    (:func:`lsframe.config_stacking.with_fresh_class_arguments`), and a nested null is read
    as an argument (:func:`nested_nulls_as_init_args`)."""
    subcommands = ("fit", "validate", "test", "predict")
    return nested_nulls_as_init_args(fresh_class_arguments(argv, subcommands))


class LSFrameCLI(ResumeChecks, LightningCLI):
    """LightningCLI for lsframe.

    * ``model`` and ``data`` in subclass mode: any :class:`ClosureModule` and any
      ``LightningDataModule``, chosen by ``class_path``;
    * ``auto_configure_optimizers=False``: the optimizer is an init argument of the module
      (an ``OptimizerCallable``), so line-search optimizers with extra arguments fit;
    * a forced ``checkpoint`` section (a :class:`ModelCheckpoint`) that keeps the best
      checkpoint by ``val/acc`` and the last one, configurable from YAML
      (:class:`lsframe.checkpointing.BestAndLastCheckpoint`: ``last`` follows every validation
      and the end of training, not only the validations that improved the monitor);
    * a forced ``preemption`` section (a :class:`lsframe.preemption.Preemption`): SIGTERM,
      SIGUSR1 and Ctrl-C stop ``fit`` after the current optimizer step with a checkpoint in
      the ``checkpoint`` section's directory (``last.ckpt``) and exit status 128 + signal;
    * ``fit --ckpt_path last`` continues the newest ``version_<n>`` of the logger that has a
      ``checkpoints/last*.ckpt`` (:meth:`continue_last_run`);
    * linked arguments (:data:`LINKS`): the model's ``num_labels`` and ``label_names`` follow
      the DataModule's (GLUE: the task's), so STS-B needs no ``--model.init_args.num_labels 1``;
      an image model's ``num_classes`` and ``in_chans`` follow the image DataModule's;
      a value given anyway that differs from the data's is refused when the config is checked;
    * TensorBoard logs under ``runs/<name>/version_<n>`` by default, and every fit adds a
      :class:`lsframe.callbacks.HParamsMetrics` (the HPARAMS tab gets the final and best
      validation metrics).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ClosureModule)
        kwargs.setdefault("datamodule_class", pl.LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        # HParamsMetrics: TensorBoard's HPARAMS tab gets the final and best val metrics
        kwargs.setdefault("trainer_defaults", {**TRAINER_DEFAULTS, "callbacks": [HParamsMetrics()]})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse (a null for a nested class's argument as :func:`nested_nulls_as_init_args` gives
        it), then check the values before anything is built or loaded
        (:func:`lsframe.config_checks.check_parsed`: optimizer and data arguments, data files,
        the model reference, precision, ``--ckpt_path``). With ``parser_kwargs={"exit_on_error":
        False}`` (``python -m lsframe``) a parse error raises :class:`lsframe.errors.UsageError`
        with the full key instead of printing the usage."""
        try:
            if args is None:  # LightningCLI's own reading of sys.argv, on the rewritten list
                self.config = parser.parse_args(rewritten_arguments(sys.argv[1:]))
            else:
                if isinstance(args, list):
                    args = rewritten_arguments(args)
                super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            raise usage_error(
                error, parser, args if isinstance(args, list) else sys.argv[1:]
            ) from error
        self.checked_data = check_parsed(self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
            }
        )

    def instantiate_classes(self) -> None:
        """Build as LightningCLI does; with a ``ckpt_path`` (a resume, or ``validate``, ``test``,
        ``predict``) without transformers' load report, whose "newly initialized" head the
        checkpoint then restores."""
        section = self.config[self.subcommand] if self.subcommand else self.config
        if section.get("ckpt_path"):
            with quiet_weight_report():
                super().instantiate_classes()
        else:
            super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        dump_enums_as_values()
        self._honour_disabled_checkpointing()
        if self.subcommand == "fit":
            self.continue_last_run()

    def _honour_disabled_checkpointing(self) -> None:
        """``trainer.enable_checkpointing: false`` writes no checkpoint: the forced ``checkpoint``
        section keeps none (``save_top_k: 0``, ``save_last: false``), as Lightning refuses the
        flag beside a ModelCheckpoint. A preemption still saves the run's progress."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("trainer.enable_checkpointing") is not False:
            return
        for i, node in enumerate(config.get("trainer.callbacks") or []):
            cls = import_class(str(node_get(node, "class_path")))
            if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
                raise ConfigError(
                    f"enable_checkpointing is false, but trainer.callbacks[{i}] is a "
                    f"{cls.__name__}: remove one of the two",
                    where="trainer.enable_checkpointing",
                )
        config.trainer.enable_checkpointing = True
        config.checkpoint.save_top_k = 0
        config.checkpoint.save_last = False

    def _lsframe_checkpoint(self) -> ModelCheckpoint | None:
        """The ModelCheckpoint of the ``checkpoint`` section (``trainer.checkpoint_callback`` is
        the first Checkpoint of any kind, e.g. a user's OnExceptionCheckpoint)."""
        checkpoint = self.config_init[self.subcommand].get("checkpoint")
        return checkpoint if isinstance(checkpoint, ModelCheckpoint) else None

    def before_validate(self) -> None:
        self._note_newly_initialized()

    def before_test(self) -> None:
        self._note_newly_initialized()

    def _note_newly_initialized(self) -> None:
        """Without ``--ckpt_path``, ``validate``, ``test`` and ``predict`` run the model as
        loaded, which is right for a pretrained model; where loading initialised weights the
        pretrained files did not hold (a hub encoder's classification head, random), one line
        on stderr says so, as the numbers then describe no fit."""
        if self.config[self.subcommand].get("ckpt_path") or rank_zero_only.rank != 0:
            return
        new = list(getattr(self.model, "newly_initialized", None) or ())
        if not new:
            return
        names = ", ".join(new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
        source = getattr(self.model, "model_name_or_path", type(self.model).__name__)
        print(
            f"lsframe {self.subcommand}: no --ckpt_path: {source} is evaluated as loaded, with "
            f"newly initialised weights ({names}); give --ckpt_path (a checkpoint, last or "
            "best) to evaluate a fit",
            file=sys.stderr,
            flush=True,
        )

    def before_predict(self) -> None:
        """Predictions go to ``<run folder>/predictions.jsonl`` (:class:`PredictionWriter`)
        unless the config lists a prediction writer of its own."""
        self._note_newly_initialized()
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def before_fit(self) -> None:
        self.refuse_changes_to_resume()  # before the config is saved again
        for folder in getattr(self, "_continued_csv", []) if rank_zero_only.rank == 0 else []:
            keep_csv_metrics(folder, "lsframe fit")
        readable_progress_bar(self.trainer)
        preemption = self.config_init[self.subcommand].get("preemption")
        checkpoint = self._lsframe_checkpoint()
        if isinstance(preemption, Preemption):
            preemption.model_checkpoint = checkpoint
        # the default monitor is val/acc; a task scored otherwise (GLUE CoLA: mcc, STS-B:
        # pearson) names its main metric first in the DataModule's metric_names
        names = getattr(self.datamodule, "metric_names", None)
        if (
            checkpoint is not None
            and checkpoint.monitor == "val/acc"
            and names
            and names[0] != "acc"
        ):
            checkpoint.monitor = f"val/{names[0]}"
            print(
                f"lsframe: checkpoint.monitor set to {checkpoint.monitor}, the task's main metric"
            )

    def fit(self, **kwargs: Any) -> None:
        """``trainer.fit`` with SIGTERM, SIGUSR1 and Ctrl-C caught from the start of the fit
        (:func:`lsframe.preemption.catch_signals`)."""
        callbacks = lambda: self.config[self.subcommand].get("trainer.callbacks")  # noqa: E731
        # a callback's refusal is placed at its item of trainer.callbacks, once the line says
        # where the run is (that test asks for the very error the checkpoint saw)
        with callback_errors_placed(callbacks):
            try:
                with catch_signals("lsframe fit"):
                    self.trainer.fit(**kwargs)
            except NonFiniteLossError as error:  # its one line says where the run so far is
                checkpoint = self._lsframe_checkpoint()
                before = isinstance(error, NonFiniteParametersError)
                # a loss's: ``last`` saved for this error, not one a resume restored the path of
                saved_now = getattr(checkpoint, "saved_for", None) is error
                if (
                    checkpoint is None
                    or not checkpoint.last_model_path
                    or not (before or saved_now)
                ):
                    raise
                saved = (
                    "the last checkpoint with finite parameters" if before else "the run up to it"
                )
                raise type(error)(
                    f"{error.message}; {saved}: {checkpoint.last_model_path}", error.where
                ) from error
            except DataError as error:  # a file met between two steps: the run so far is saved
                checkpoint = self._lsframe_checkpoint()
                if getattr(checkpoint, "saved_for", None) is not error:
                    raise
                found = unwrap_worker_error(error)  # a DataLoader worker's: its own line
                raise type(error)(
                    f"{found.message}; the run up to it: {checkpoint.last_model_path} (fix the "
                    "input and resume it with --ckpt_path last)",
                    found.where,
                    found.argument,
                ) from error

    def validate(self, **kwargs: Any) -> Any:
        """``trainer.validate`` without Lightning's warnings about the checkpoint's fit
        (:func:`lsframe.modules.policy.fit_only_warnings_off`); so are ``test`` and ``predict``."""
        with fit_only_warnings_off():
            return self.trainer.validate(**kwargs)

    def test(self, **kwargs: Any) -> Any:
        with fit_only_warnings_off():
            return self.trainer.test(**kwargs)

    def predict(self, **kwargs: Any) -> Any:
        with fit_only_warnings_off():
            return self.trainer.predict(**kwargs)

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = validation_metrics(trainer)  # val/ and MNLI's val_mismatched/
        lines = ["", "lsframe: fit finished"]
        held = next((c for c in trainer.callbacks if isinstance(c, HParamsMetrics)), None)
        # none since a resume (the callback metrics it starts with are the checkpoint's)
        if held is not None and not held.validated_in_fit and held.last_validation:
            metrics = held.last_validation
            lines.append(f"  the last validation, at step {held.last_validation_step}:")
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
        checkpoint = self._lsframe_checkpoint()
        if checkpoint is not None and checkpoint.best_model_path:
            score = checkpoint.best_model_score  # None: no validation since a resume
            scored = "" if score is None else f" ({checkpoint.monitor} = {float(score):.4f})"
            lines.append(f"  best checkpoint{scored}: {checkpoint.best_model_path}")
        if checkpoint is not None and checkpoint.last_model_path:
            lines.append(f"  last checkpoint: {checkpoint.last_model_path}")
        if isinstance(trainer.logger, TensorBoardLogger) and trainer.logger.log_dir:
            lines.append(f"  TensorBoard logs: tensorboard --logdir {trainer.logger.log_dir}")
        elif trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"  logs: {trainer.logger.log_dir}")
        print("\n".join(lines), flush=True)
