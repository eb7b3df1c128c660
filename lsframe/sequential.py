"""Sequential fine-tuning (task A → B → ...) and the forgetting it causes (P3's setting).

``python -m lsframe sequential --config configs/sequential/<x>.yaml`` fine-tunes one module on a
sequence of stages. Each stage names a task, its DataModule and optionally its own
``max_epochs``/``max_steps``; the rest of the Trainer comes from the shared ``trainer`` section.
The backbone carries over from stage to stage; with ``heads: separate`` (default) every task
keeps its own classification head (the module attribute ``head_attr`` is swapped; a new task
starts from a copy of the initial head, of its own data's number of classes:
:mod:`lsframe.sequence_heads`), with ``shared`` one head serves all. Each stage gets a
fresh optimizer (and schedule) from the module's configuration. Callbacks (e.g.
:class:`lsframe.callbacks.EWC`) are the same objects in every stage, so their state carries
over; in ``separate`` mode EWC leaves the head out of its penalty. Lightning's checkpoints within
a stage (``trainer.enable_checkpointing: true``, or a ``ModelCheckpoint`` among the callbacks)
are written for the user's own use; resuming uses the runner's stage checkpoints.

After every stage the module is evaluated on every task seen so far (their ``val`` sets):
``R[i][j]`` = metric after stage ``i`` on task ``j``. Written to ``<output_dir>``:
``accuracy_matrix.md`` / ``.json`` (with the average final accuracy, backward transfer and
forgetting), logs (``stage_<i>_<task>/`` for training, with the stage's final validation
metrics in TensorBoard's HPARAMS tab; ``summary/`` for ``R/<task>`` per stage and the summaries,
which with the module's hyperparameters also fill the HPARAMS tab), and ``stage_<i>.ckpt`` +
``sequence_state.pt`` (with the random generators' states) after each stage; running the same
command again resumes after the last finished stage, as the uninterrupted run would go on. The
logs are TensorBoard's by default; ``trainer.logger`` takes any Lightning logger
(``class_path`` + ``init_args``, or a list), from which each stage and the summary build
their own (:mod:`lsframe.loggers`; CSV and TensorBoard write under ``output_dir``).

SIGTERM, SIGUSR1 and Ctrl-C stop a stage after its current optimizer step
(:mod:`lsframe.preemption`): the stage's Lightning checkpoint goes to
``stage_<i>_preempted.ckpt`` and the command exits with status 128 + the signal number. Running
the same command again resumes after the finished stages and continues that stage from its
checkpoint, which is removed once the stage is done. The command records the config a sequence
started with (``sequence_config.json``) and refuses to resume that progress under another one
(:mod:`lsframe.run_config`; devices, logger and other settings of where it runs may change).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn

import lsframe.data  # noqa: F401 - registers the DataModules for class_path lookup
from lsframe import sequence_heads
from lsframe.callbacks import EWC, HParamsMetrics
from lsframe.callbacks.base import migrate_state_keys
from lsframe.checkpoint_io import remove_interrupted_writes, save_atomically
from lsframe.checkpoints import read_torch_file
from lsframe.cli_usage import parse_or_raise
from lsframe.config_nodes import callback_errors_placed, dump_enums_as_values
from lsframe.config_stacking import fresh_class_arguments
from lsframe.errors import ConfigError
from lsframe.loggers import keep_csv_metrics, keep_stopped_logs, logger_specs, readable_progress_bar
from lsframe.modules import ClosureModule
from lsframe.modules.export import is_lora
from lsframe.modules.random_state import random_states, set_random_states
from lsframe.preemption import Preemption, catch_signals
from lsframe.sequence_checks import (
    check_callback_patterns,
    check_sequence_config,
    check_stage_counts,
    check_stages,
    refuse_exception_checkpoints,
    task_head,
)
from lsframe.sequence_result import SequenceResult, write_result
from lsframe.sequence_state import (
    STAGE_CHECKPOINT,
    callback_settings,
    check_same_runner,
    check_same_sequence,
    note_callbacks_ran,
    read_sequence_state,
    runner_record,
)
from lsframe.validation import check_choice


@dataclass
class Stage:
    """One task of the sequence.

    Args:
        name: Task name used in the accuracy matrix (unique in the sequence).
        data: The task's DataModule (``class_path`` + ``init_args``).
        max_epochs: Epochs of this stage (None: the trainer section's).
        max_steps: Optimizer steps of this stage (None: the trainer section's).
    """

    name: str
    data: pl.LightningDataModule
    max_epochs: int | None = None
    max_steps: int | None = None


class SequenceRunner:
    """Runs the stages; see the module docstring. Usable from Python as well as from the CLI."""

    def __init__(
        self,
        model: ClosureModule,
        stages: list[Stage],
        trainer: dict[str, Any] | None = None,
        heads: Literal["separate", "shared"] = "separate",
        head_attr: str = "classifier",
        metric: str = "acc",
        output_dir: str | Path = "runs/sequential",
        preemption: dict[str, Any] | None = None,
    ) -> None:
        names = [s.name for s in stages]
        if not stages:
            raise ValueError("stages: give at least one stage")
        if len(set(names)) != len(names):
            raise ValueError(f"stages: task names must be unique, got {names}")
        check_stages(stages, "stages")  # the CLI checked them; a Python caller's are checked here
        check_choice("heads", heads, ("separate", "shared"))
        if heads == "separate" and is_lora(getattr(model, "model", None)):
            raise ConfigError(
                "heads: separate swaps the task head of each stage, but under model.lora the "
                "head that trains and predicts is peft's copy of it, which the swap does not "
                "reach (every task would share one head): use heads: shared, or leave out "
                "model.lora",
                where="heads",
            )
        self.trainer_kwargs = dict(trainer or {})
        if self.trainer_kwargs.get("enable_checkpointing") not in (None, True, False):
            raise ValueError("trainer.enable_checkpointing must be true or false")
        # a recipe: each stage and the summary build their own logger (lsframe.loggers)
        self.loggers = logger_specs(self.trainer_kwargs.pop("logger", None))
        self.module, self.stages, self.heads_mode = model, stages, heads
        self.head_attr, self.metric, self.output_dir = head_attr, metric, Path(output_dir)
        self.callbacks = list(self.trainer_kwargs.pop("callbacks", None) or [])
        refuse_exception_checkpoints(self.callbacks)
        # attributes of each stage's Preemption callback ("where" is appended to the stage)
        self.preemption = dict(preemption or {})
        self.heads: dict[str, nn.Module] = {}
        self._first_stage_steps = 0  # steps of a first stage that did not finish (a rerun)
        check_callback_patterns(model.model, self.callbacks)  # before any file is written
        check_stage_counts(heads, [(f"stages[{i}].data", s.data) for i, s in enumerate(stages)])
        self.initial_labels = sequence_heads.initial_labels(model)
        if heads == "separate":
            self.initial_head = copy.deepcopy(task_head(model.model, head_attr))
            sequence_heads.check_heads(self.initial_head, stages, self.initial_labels)
            pattern = rf"^{re.escape(head_attr)}\."
            for callback in self.callbacks:
                if isinstance(callback, EWC) and pattern not in callback.exclude:
                    callback.exclude.append(pattern)

    def _use_head(self, task: str) -> None:
        if self.heads_mode == "shared":
            return
        index = [s.name for s in self.stages].index(task)
        labels = sequence_heads.task_labels(self.stages[index].data, self.initial_labels)
        if task not in self.heads:  # of its own stage's number of classes
            self.heads[task] = sequence_heads.new_task_head(
                self.initial_head, self.module.model, labels["num_labels"], f"stages[{index}].data"
            )
        self.module.model.set_submodule(self.head_attr, self.heads[task])
        sequence_heads.use_labels(self.module, labels)

    def _trainer(self, stage: Stage, index: int) -> pl.Trainer:
        kwargs = dict(self.trainer_kwargs)
        # the runner resumes from its own stage checkpoints; Lightning's within a stage (asked
        # for, or a ModelCheckpoint among the callbacks) are the user's to keep
        asked = kwargs.get("enable_checkpointing") or any(
            isinstance(c, Checkpoint) for c in self.callbacks
        )
        kwargs["enable_checkpointing"] = bool(asked)
        for key in ("max_epochs", "max_steps"):
            if getattr(stage, key) is not None:
                kwargs[key] = getattr(stage, key)
        label = f"stage_{index}_{stage.name}"
        loggers = [spec.build(self.output_dir, label) for spec in self.loggers]
        if not loggers:  # Lightning's own files (checkpoints) go to the stage's folder, not cwd
            kwargs.setdefault("default_root_dir", str(self.output_dir / label))
        callbacks = [*self.callbacks, HParamsMetrics(), self._preemption(stage, index)]
        trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, **kwargs)
        readable_progress_bar(trainer)  # a step size of 5e-5 shows as 0.000 otherwise
        return trainer

    def _preempted_path(self, index: int) -> Path:
        """The mid-stage checkpoint a signal leaves for stage ``index``."""
        return self.output_dir / f"stage_{index}_preempted.ckpt"

    def _preemption(self, stage: Stage, index: int) -> Preemption:
        """The stage's :class:`Preemption`: its checkpoint is :meth:`_preempted_path`."""
        callback = Preemption(str(self.output_dir), self._preempted_path(index).stem)
        callback.command = "lsframe sequential"
        callback.resume_hint = "resume with the same command"
        callback.hyper_parameters = False  # rebuilt from the config; read with weights_only
        settings = dict(self.preemption)
        callback.where = f" of stage {index} ({stage.name}){settings.pop('where', '')}"
        for key, value in settings.items():
            setattr(callback, key, value)
        return callback

    def _evaluate(self, stage: Stage) -> float:
        device = self._device()  # the GPU the fit ran on (devices: [1] is not GPU 0)
        evaluator = pl.Trainer(
            accelerator=self.trainer_kwargs.get("accelerator", "auto"),
            devices=[device.index] if device.type == "cuda" else 1,
            precision=self.trainer_kwargs.get("precision"),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Preemption()],  # a signal waits for the next stage's fit
        )
        # one dict per evaluation set (MNLI: matched, mismatched); val/<metric> is the first's
        results = evaluator.validate(self.module, datamodule=stage.data, verbose=False)
        scores = {key: value for result in results for key, value in result.items()}
        key = f"val/{self.metric}"
        if key not in scores:
            raise KeyError(f"metric: {key} was not logged for {stage.name} (got {sorted(scores)})")
        return float(scores[key])

    def _device(self) -> torch.device:
        """The device whose generator a stage draws from (the module is back on the CPU after
        each fit and evaluation: Lightning's teardown)."""
        if torch.cuda.is_available() and self.trainer_kwargs.get("accelerator") in (
            None,
            "auto",
            "gpu",
            "cuda",
        ):
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _state_path(self) -> Path:
        return self.output_dir / "sequence_state.pt"

    def _save_stage(self, index: int) -> None:
        """``stage_<index>.ckpt``: the module's state dict and the callbacks' states, plain
        tensors and containers only (so :meth:`_resume` reads it with ``weights_only=True``; a
        Lightning checkpoint would also pickle the module's optimizer callable)."""
        callbacks = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()}
        state = {"state_dict": self.module.state_dict(), "callbacks": callbacks}
        save_atomically(state, self.output_dir / f"stage_{index}.ckpt")

    def _resume(self) -> list[list[float | None]]:
        state = read_sequence_state(self.output_dir, len(self.stages))
        if state is None:
            return []
        done = len(state["matrix"])
        checkpoint = read_torch_file(
            self.output_dir / f"stage_{done - 1}.ckpt", "stage checkpoint", STAGE_CHECKPOINT
        )
        for task, head_state in state["heads"].items():
            self._use_head(task)
            self.heads[task].load_state_dict(head_state)
        self._use_head(self.stages[done - 1].name)
        self.module.load_state_dict(checkpoint["state_dict"])
        states = checkpoint.get("callbacks", {})
        migrate_state_keys(self.callbacks, states)
        for callback in self.callbacks:
            saved = states.get(callback.state_key)
            if saved is not None:
                callback.load_state_dict(saved)
        if "random" in state:  # a state from before lsframe saved it starts from the seed
            set_random_states(state["random"], self._device())
        if done == len(self.stages):
            print(f"lsframe sequential: the sequence in {self.output_dir} has finished its stages")
        else:
            last = self.stages[done - 1].name
            print(f"lsframe sequential: resuming after stage {done - 1} ({last})")
        return state["matrix"]

    def run(self) -> SequenceResult:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        current = runner_record(
            self.module,
            self.stages,
            self.trainer_kwargs,
            self.callbacks,
            heads=self.heads_mode,
            head_attr=self.head_attr,
            metric=self.metric,
        )
        # every rank checks; rank 0 alone writes a new record (no other rank reads it)
        check_same_runner(
            self.output_dir, current, rank_zero_only.rank == 0, callbacks=self.callbacks
        )
        before = [callback_settings(c) for c in self.callbacks]
        try:
            return self._run_stages()
        finally:
            note_callbacks_ran(self.callbacks, before)

    def _run_stages(self) -> SequenceResult:
        if self.output_dir.is_dir():  # a killed run's half-written stage checkpoint or state
            self._on_rank_zero(partial(remove_interrupted_writes, self.output_dir))
        self._refuse_a_trained_first_stage()
        tasks = [s.name for s in self.stages]
        # the heads as the saved state has them: a failed stage's half-trained one goes
        self.heads = {}
        matrix = self._resume()
        for i in range(len(matrix), len(self.stages)):
            stage = self.stages[i]
            self._use_head(stage.name)
            preempted = self._preempted_path(i)
            if not preempted.is_file():  # an attempt killed or failed: its logs go aside
                folder = self.output_dir / f"stage_{i}_{stage.name}"
                self._on_rank_zero(partial(keep_stopped_logs, folder, "lsframe sequential"))
            trainer = self._trainer(stage, i)
            if preempted.is_file():
                print(f"lsframe sequential: resuming stage {i} ({stage.name}) from {preempted}")
                for logger in trainer.loggers:  # CSVLogger deletes the stage's metrics.csv
                    if isinstance(logger, CSVLogger):
                        keep = partial(keep_csv_metrics, Path(logger.log_dir), "lsframe sequential")
                        self._on_rank_zero(keep)
            resume = {"ckpt_path": preempted, "weights_only": True} if preempted.is_file() else {}
            try:
                trainer.fit(self.module, datamodule=stage.data, **resume)
            finally:
                if i == 0:  # the steps a failed first stage took are in the module's weights
                    self._first_stage_steps = trainer.global_step
            self._on_rank_zero(partial(self._save_stage, i))
            row: list[float | None] = [None] * len(tasks)
            for j in range(i + 1):
                self._use_head(tasks[j])
                row[j] = self._evaluate(self.stages[j])
            self._use_head(stage.name)
            matrix.append(row)
            heads = {t: h.state_dict() for t, h in self.heads.items()}
            # the generators where the next stage starts: a resume draws what this run would
            random = random_states(self._device())
            state = {"matrix": matrix, "heads": heads, "random": random}
            self._on_rank_zero(partial(save_atomically, state, self._state_path()))
            self._on_rank_zero(partial(preempted.unlink, missing_ok=True))
        result = SequenceResult(tasks, matrix, self.metric)
        write = partial(write_result, result, self.output_dir, self.loggers, self._summary_params())
        self._on_rank_zero(write)
        return result

    def _refuse_a_trained_first_stage(self) -> None:
        """A rerun of this runner after its first stage failed part-way: the model holds that
        attempt's weights and nothing saved holds the ones it started from (a later stage
        restarts from the checkpoint of the stage before it)."""
        if not self._first_stage_steps:
            return
        if self._state_path().is_file() or self._preempted_path(0).is_file():
            return
        raise RuntimeError(
            f"SequenceRunner.run: this runner's first stage ({self.stages[0].name}) stopped after "
            f"{self._first_stage_steps} optimizer steps, and its model holds that attempt's "
            "weights: build the model and the SequenceRunner again to start the sequence afresh"
        )

    def _summary_params(self) -> dict[str, Any]:
        """The module's hyperparameters with the sequence's tasks, heads, metric and each
        callback's settings (``EWC.ewc_lambda``): what the summary's HPARAMS entry shows."""
        params = HParamsMetrics.hyperparameters_of(self.module)
        tasks = " -> ".join(s.name for s in self.stages)
        params.update(tasks=tasks, heads=self.heads_mode, metric=self.metric)
        for callback in self.callbacks:
            settings = callback_settings(callback).items()
            params.update({f"{type(callback).__name__}.{k}": v for k, v in settings})
        return params

    @staticmethod
    def _on_rank_zero(write: Any) -> None:
        """Run ``write`` on rank 0 alone, then let every rank wait for it: under DDP each rank
        runs the sequence, and two ranks writing one file removed each other's temporary
        file."""
        import torch.distributed as dist

        if rank_zero_only.rank == 0:
            write()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def build_parser() -> ArgumentParser:
    """The parser of ``lsframe sequential``."""
    parser = ArgumentParser(
        prog="lsframe sequential", description=__doc__.split("\n\n")[0], exit_on_error=False
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_class_arguments(pl.Trainer, "trainer", instantiate=False)
    parser.add_subclass_arguments(ClosureModule, "model", required=True)
    parser.add_argument("--stages", type=list[Stage], required=True)
    parser.add_argument("--heads", type=Literal["separate", "shared"], default="separate")
    parser.add_argument("--head_attr", type=str, default="classifier")
    parser.add_argument("--metric", type=str, default="acc")
    parser.add_argument("--output_dir", type=str, default="runs/sequential")
    return parser


def main(argv: list[str]) -> SequenceResult:
    """``python -m lsframe sequential --config <yaml>`` (``--help`` lists every key)."""
    parser = build_parser()
    config = parse_or_raise(parser, fresh_class_arguments(argv))
    check_sequence_config(config)
    check_same_sequence(config)
    # a recipe, not an instance: each stage builds its own logger (lsframe.loggers)
    logger = config.trainer.get("logger")
    logger_specs(logger)
    config.trainer.logger = None
    pl.seed_everything(config.seed_everything)
    dump_enums_as_values()
    init = parser.instantiate_classes(config)
    trainer_kwargs = {k: v for k, v in vars(init.trainer).items() if v is not None}
    if logger is not None:
        trainer_kwargs["logger"] = logger
    placed = partial(callback_errors_placed, lambda: config.trainer.get("callbacks"))
    with placed():
        runner = SequenceRunner(
            init.model,
            init.stages,
            trainer_kwargs,
            heads=init.heads,
            head_attr=init.head_attr,
            metric=init.metric,
            output_dir=init.output_dir,
        )
    check_same_sequence(config, write=True)  # once the runner took its settings: nothing before
    with placed(), catch_signals("lsframe sequential"):
        return runner.run()
