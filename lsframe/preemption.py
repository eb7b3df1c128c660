"""Preemption-safe runs: a signal stops a fit at the end of an optimizer step, with a checkpoint.

What SLURM, Kubernetes and spot instances send before they take a machine back (SIGTERM,
SLURM's ``--signal=USR1@<seconds>`` warning) and Ctrl-C (SIGINT) only set a flag here: a
line search is never cut short. :class:`Preemption`, a Lightning callback that ``lsframe fit``
and ``lsframe sequential`` attach to every fit, reads the flag after each optimizer step (on a
batch that only accumulated gradients it waits for the step) and stops the run:

1. Under DDP the ranks agree first (an all-reduce MAX of the signal number after every step), so
   every rank stops after the same step, even when only one of them got the signal.
2. When a validation is due right after that step, the stop waits for its end (a checkpoint
   taken before it would make the resumed run skip it); at an epoch's last batch it waits for
   the end-of-epoch validation, or, without one, for the epoch-end hooks (Lightning resumes such
   a checkpoint in the next epoch).
3. The hook that was running finishes for the callbacks after this one and for the module, then
   ``trainer.save_checkpoint`` writes a mid-epoch checkpoint with everything a periodic one holds
   (optimizer, schedulers, callbacks, the loader's position, the random generators), atomically
   (:mod:`lsframe.checkpoint_io`); under DDP rank 0 writes the one file.
4. Rank 0 prints one line (where the checkpoint is, how to resume) and every rank raises
   :class:`Preempted`, a ``SystemExit`` with status ``128 + signal number`` (143 for SIGTERM,
   138 for SIGUSR1 on Linux, 130 for Ctrl-C).

A signal that arrives before the fit's first step stops it there, without a checkpoint; one
that arrives after the last step lets the run finish. Under SLURM with Lightning's
``SLURMEnvironment(auto_requeue=True)`` (the default) the environment's requeue signal also
requeues the job (``scontrol requeue``), as Lightning's own handler does, but after the step and
the checkpoint rather than in the middle of them.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NoReturn

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lsframe._signals import (
    _FLAG,
    SIGNALS,
    Preempted,
    _install,
    _note,
    catch_signals,
    received,
    requeue_slurm_job,
    signal_name,
    stop_if_received,
)
from lsframe.checkpoint_io import use_atomic_checkpoint_io
from lsframe.errors import mark_run_started

__all__ = [
    "SIGNALS",
    "Preempted",
    "Preemption",
    "catch_signals",
    "received",
    "requeue_slurm_job",
    "signal_name",
    "stop_if_received",
]


def agree(trainer: pl.Trainer) -> int:
    """The largest signal number any rank received (0: none); a collective under DDP."""
    local = _FLAG.signum or 0
    if trainer.world_size <= 1:
        return local
    flag = torch.tensor([local], dtype=torch.int64, device=trainer.strategy.root_device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    else:
        flag = trainer.strategy.reduce(flag, reduce_op="max")
    return int(flag.item())


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether the training loop validates right after the current batch (Lightning's test)."""
    loop = trainer.fit_loop.epoch_loop
    check = getattr(loop, "_should_check_val_fx", None)
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if check is None or fetcher is None:
        return False
    return bool(check(fetcher)) and not getattr(loop, "_skip_next_val", False)


def _at_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether the current training batch is the epoch's last (Lightning's test)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or progress.current.ready >= trainer.num_training_batches


def _run_is_over(trainer: pl.Trainer, epoch_end: bool) -> bool:
    """Whether the fit ends here (``max_steps`` reached; at an epoch's end, ``max_epochs``):
    a signal then lets it finish, with its closing lines and exit status 0."""
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return True
    epochs = trainer.max_epochs
    return epoch_end and epochs not in (None, -1) and trainer.current_epoch + 1 >= epochs


def _log_the_step(trainer: pl.Trainer) -> None:
    """Send the stopped step's logged metrics to the loggers, as Lightning does right after
    ``on_train_batch_end`` (a stop there would otherwise leave that step out of TensorBoard;
    the resumed run logs from the next step on)."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or not hasattr(connector, "update_train_step_metrics"):
        return  # Lightning moved its helpers: the step's metrics are lost, as before
    connector.on_batch_end()
    connector.update_train_step_metrics()


def _slurm_environment(trainer: pl.Trainer) -> Any:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:
        connector = getattr(trainer, "_accelerator_connector", None)
        environment = getattr(connector, "cluster_environment", None)
    return environment if isinstance(environment, SLURMEnvironment) else None


class Preemption(Callback):
    """Stop a fit for a signal after an optimizer step, with a resumable checkpoint.

    The rules are the module's (:mod:`lsframe.preemption`). From the first loop of a fit (the
    sanity check or training) until Lightning restores them at the end, this callback's handlers
    replace Lightning's SIGTERM handler (which would raise its exit-status-0 ``SystemExit`` at its
    next check) and its SLURM requeue handler (which saves in the middle of a step).

    Args:
        dirpath: Directory of the checkpoint. None: that of the ModelCheckpoint in
            :attr:`model_checkpoint`, else of the trainer's first ModelCheckpoint, else
            ``<log_dir or default_root_dir>/checkpoints``.
        filename: Checkpoint file name without ``.ckpt``. Default: ``last``, so that
            ``--ckpt_path last`` finds it.

    Attributes (set by the command that attaches the callback):
        model_checkpoint: The ModelCheckpoint whose directory holds the checkpoint.
        command: Prefix of the printed line. Default: ``lsframe fit``.
        where: Appended to the step number in the line, e.g. `` of stage 1 (mrpc)``.
        resume_hint: The line's last part.
        save: Write the checkpoint (False: stop without one, for a caller that discards it).
        announce: Print the line (False: the caller reports :class:`Preempted` itself).
        hyper_parameters: Keep the module's and data's ``hyper_parameters`` in the checkpoint
            (False: drop them, for a caller that rebuilds both from its config and loads the
            checkpoint with ``weights_only=True``, which refuses pickled callables).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last") -> None:
        super().__init__()
        self.dirpath, self.filename = dirpath, filename
        self.model_checkpoint: ModelCheckpoint | None = None
        self.command = "lsframe fit"
        self.where = ""
        self.resume_hint = "resume with the same command and --ckpt_path last"
        self.save = True
        self.announce = True
        self.hyper_parameters = True
        self._step: int | None = None
        self._accumulating = False  # the last training batch took no optimizer step
        self._writing = False

    # ------------------------------------------------------------------------ signal handlers
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        use_atomic_checkpoint_io(trainer)
        if stage == "fit" and _FLAG.depth == 0:
            _FLAG.signum = None  # a fit outside catch_signals starts without an old signal

    def _take_over(self, trainer: pl.Trainer) -> None:
        """Install this module's handlers over Lightning's (registered just before the loops)."""
        connector = getattr(trainer, "_signal_connector", None)
        if getattr(connector, "received_sigterm", False):  # Lightning's handler was first
            _note(signal.SIGTERM, None)
            connector.received_sigterm = False
        signals = SIGNALS
        environment = _slurm_environment(trainer)
        requeue = getattr(environment, "requeue_signal", None)
        if requeue is not None and requeue not in signals:
            signals = (*signals, requeue)
        _install(signals)

    def _take_over_outside_fit(self, trainer: pl.Trainer) -> None:
        """In a validate/test/predict run only inside :func:`catch_signals`, whose owner acts on
        the flag later (a plain ``lsframe validate`` keeps Lightning's handling)."""
        if trainer.state.fn == "fit" or _FLAG.depth > 0:
            self._take_over(trainer)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_outside_fit(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_outside_fit(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_outside_fit(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mark_run_started()  # from here on an exception is the run's, not a bad input's

    # ------------------------------------------------------------------------------ stopping
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over(trainer)
        self._step, self._accumulating = trainer.global_step, False
        signum = agree(trainer)
        if signum:
            self._stop(trainer, signum, stepped=False)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._accumulating = trainer.global_step == self._step
        if self._accumulating:
            return  # a micro-batch that only accumulated gradients: wait for the step
        self._step = trainer.global_step
        if _validation_follows(trainer):
            return  # decided at the end of that validation
        if _at_epoch_end(trainer):
            return  # decided at the end of the epoch
        signum = agree(trainer)
        if signum and not _run_is_over(trainer, epoch_end=False):
            self._stop(trainer, signum, "on_train_batch_end", (outputs, batch, batch_idx))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signum = agree(trainer)
        if signum and not _run_is_over(trainer, epoch_end=True):
            self._stop(trainer, signum, "on_train_epoch_end", ())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._accumulating and not _at_epoch_end(trainer):
            return  # between two micro-batches of a step: decided when the step ends
        signum = agree(trainer)
        if signum and not _run_is_over(trainer, epoch_end=_at_epoch_end(trainer)):
            self._stop(trainer, signum, "on_validation_end", ())

    def _finish_hook(self, trainer: pl.Trainer, hook: str, args: tuple) -> None:
        """Run ``hook`` for the callbacks after this one, then for the module, as Lightning would
        have: the checkpoint then holds their end-of-hook state (masks restored, metrics saved)."""
        from lightning.pytorch.callbacks import Checkpoint, EarlyStopping
        from lightning.pytorch.trainer import call

        callbacks = trainer.callbacks
        later = callbacks[callbacks.index(self) + 1 :] if self in callbacks else []
        # at the epoch's end Lightning calls all monitoring callbacks after the module
        monitoring = (EarlyStopping, Checkpoint) if hook == "on_train_epoch_end" else ()
        for callback in [c for c in later if not isinstance(c, monitoring)]:
            getattr(callback, hook)(trainer, trainer.lightning_module, *args)
        module_hook = getattr(call, "_call_lightning_module_hook", None)
        if module_hook is not None:
            module_hook(trainer, hook, *args)
        else:  # Lightning moved its helper: the module's own hook, as it would call it
            getattr(trainer.lightning_module, hook)(*args)
        for callback in [c for c in callbacks if monitoring and isinstance(c, monitoring)]:
            getattr(callback, hook)(trainer, trainer.lightning_module, *args)

    def _stop(
        self,
        trainer: pl.Trainer,
        signum: int,
        hook: str | None = None,
        args: tuple = (),
        stepped: bool = True,
    ) -> NoReturn:
        if hook is not None:
            self._finish_hook(trainer, hook, args)
        step = trainer.global_step
        path = self.checkpoint_path(trainer) if stepped and self.save else None
        if path is not None:
            self._mark_as_last(trainer, path)
            self._writing = True
            try:
                trainer.save_checkpoint(path, weights_only=False)  # all a resume needs
            finally:
                self._writing = False
        if hook == "on_train_batch_end":
            _log_the_step(trainer)
        parts = [f"{self.command}: stopped by {signal_name(signum)}"]
        if stepped:
            parts[0] += f" after optimizer step {step}{self.where}"
            parts.append(f"checkpoint {path}" if path else "no checkpoint kept")
        else:
            parts[0] += f" before optimizer step {step + 1}{self.where}"
            parts.append("no step was taken, nothing new to save")
        environment = _slurm_environment(trainer)
        if (
            environment is not None
            and environment.auto_requeue
            and signum == environment.requeue_signal
            and trainer.is_global_zero
        ):
            parts.append(requeue_slurm_job())
        parts.append(self.resume_hint)
        line = "; ".join(parts)
        if self.announce and trainer.is_global_zero:
            print(line, file=sys.stderr, flush=True)
        raise Preempted(signum, step if stepped else None, path, line)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._writing and not self.hyper_parameters:
            for owner in (pl.LightningModule, pl.LightningDataModule):
                checkpoint.pop(owner.CHECKPOINT_HYPER_PARAMS_KEY, None)
                checkpoint.pop(owner.CHECKPOINT_HYPER_PARAMS_NAME, None)
                checkpoint.pop(owner.CHECKPOINT_HYPER_PARAMS_TYPE, None)

    def checkpoint_path(self, trainer: pl.Trainer) -> str:
        """Where the checkpoint goes (see ``dirpath``)."""
        dirpath = self.dirpath
        if dirpath is None:
            candidates = [self.model_checkpoint, *trainer.checkpoint_callbacks]
            dirpath = next(
                (
                    c.dirpath
                    for c in candidates
                    if isinstance(c, ModelCheckpoint) and c.dirpath is not None
                ),
                None,
            )
        if dirpath is None:
            dirpath = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")
        return os.path.join(dirpath, f"{self.filename}.ckpt")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fit resumed from this callback's checkpoint that no ModelCheckpoint keeps as its
        ``last`` (``enable_checkpointing: false``) brings that file to the run's end: left at
        the stop, it outlived the finished run, and ``--ckpt_path last`` then evaluated, or
        trained again from, the stopped step."""
        path = self.checkpoint_path(trainer) if self.save else None
        resumed = trainer.ckpt_path
        if path is None or resumed is None or not os.path.isfile(path):
            return
        if os.path.normpath(str(resumed)) != os.path.normpath(path):
            return
        kept = [
            c
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.save_last and c.dirpath is not None
        ]
        if any(
            os.path.dirname(os.path.normpath(path)) == os.path.normpath(c.dirpath) for c in kept
        ):
            return  # that callback writes its last there at the end
        trainer.save_checkpoint(path, weights_only=False)

    @staticmethod
    def _mark_as_last(trainer: pl.Trainer, path: str) -> None:
        """A ModelCheckpoint whose ``last`` file this is records it as its last checkpoint, so
        that the resumed run overwrites it (rather than writing ``last-v1.ckpt`` beside it)."""
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                continue
            if callback.dirpath is None:
                continue
            last = os.path.join(
                callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            )
            if os.path.normpath(last) == os.path.normpath(path):
                callback.last_model_path = path
