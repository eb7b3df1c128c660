"""The ``checkpoint`` section's callback: the best checkpoints and a ``last`` that is the latest.

Lightning 2.6's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``save_last=True``
writes ``last.ckpt`` only when it also saves a top-k checkpoint at that step (or never saved one
before, at the end of training). Once the monitored metric stops improving, ``last.ckpt`` then
stays at the last improvement: ``--ckpt_path last``, ``lsframe export`` and a resumed job would
go back to it and lose every step since. :class:`BestAndLastCheckpoint` keeps Lightning's rules
for the best checkpoints and writes ``last`` after every validation and at the end of training
whenever it is not already at the current step, and when a run stops on a non-finite loss
(:class:`lsframe.errors.NonFiniteLossError`: the step was not applied, so the state is that of
the last completed step, and a resume repeats the batch that failed), and when a data error
(:class:`lsframe.errors.DataError`: an image that does not decode, a batch a hook refuses) stops
its training: fix the file and resume with ``--ckpt_path last``. Such a save is of the run as
its last optimizer step left it (the loaders' places, Lightning's count of the epoch's batches,
the random generators), so a resume fetches the failed step's micro-batches again and goes on
as the uninterrupted run. No checkpoint is written
with non-finite parameters: an update that made them so is found at the next step's loss, and a
save that comes first (a validation's, a periodic one) stops the fit with
:class:`lsframe.errors.NonFiniteParametersError` instead; ``last`` and the best stay at the last
finite state.

A ``monitor`` that names a validation metric the module does not log (``val/acc_typo``) is
refused when Lightning's sanity check ends, before the first training step; Lightning itself
finds it only at the first validation. Without a sanity check (``num_sanity_val_steps: 0``)
Lightning's own check stays.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from lsframe.checkpoint_io import remove_interrupted_writes
from lsframe.data.resumable import ResumableDataLoader
from lsframe.errors import ConfigError, DataError, NonFiniteLossError, NonFiniteParametersError
from lsframe.modules.policy import check_parameters_finite
from lsframe.modules.random_state import own_random_states, random_states, set_random_states


class BestAndLastCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` whose ``last`` checkpoint follows every validation and the end
    of training (with ``save_last``), not only the validations that improved the monitor.
    Arguments, files and state are ModelCheckpoint's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.save_last == "link":
            raise ConfigError(
                "save_last=link makes last a link to the newest best checkpoint, not the run's "
                "latest state, which lsframe's last is (after every validation, a stop, a failed "
                "step, the end of training): use save_last=true"
            )
        self._last_written_at: int | None = None
        # at the end of this fit's last optimizer step (in this process): the random generators
        # (None: no step yet), global_step, the training loaders' places, and Lightning's count
        # of the epoch's completed batches (both at the epoch's start until its first step)
        self._step_end_random: dict[str, Any] | None = None
        self._steps_seen: int | None = None
        self._places_at_step: dict[int, int] | None = None
        self._completed_at_step: int | None = None
        self._first_epoch_random: dict[str, Any] | None = None
        # the random generators of the checkpoint a fit resumes from (lsframe's module's)
        self._resumed_random: dict[str, Any] | None = None
        self._epoch_started = False
        #: The error (a non-finite loss, a data error between steps) ``last`` was brought up to
        #: date for: the error line names ``last`` only then (:meth:`on_exception`).
        self.saved_for: BaseException | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._step_end_random = self._first_epoch_random = None
        if trainer.is_global_zero and self.dirpath is not None and Path(self.dirpath).is_dir():
            remove_interrupted_writes(self.dirpath)  # of a killed run of this folder

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # this process's generators as the checkpoint's step left them, which lsframe's module
        # restores
        saved = checkpoint.get("lsframe") or {}
        self._resumed_random = own_random_states(saved, trainer.global_rank)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Lightning calls no on_train_epoch_start for an epoch restarted mid-way: the bookkeeping
        # starts as the checkpoint's step left the run (a new epoch's start redoes it)
        resumed = self._resumed_random if trainer.ckpt_path else None
        self._start_bookkeeping(trainer, pl_module, resumed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._start_bookkeeping(trainer, pl_module, None)

    def _start_bookkeeping(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, resumed: dict | None
    ) -> None:
        # the batches of this epoch done when its last optimizer step ended (a resumed epoch's
        # count starts where its checkpoint's step did)
        self._steps_seen = trainer.global_step
        # Lightning resets its count for a new epoch after this hook: 0 then; a resumed epoch
        # keeps the count its checkpoint restored (refined at the epoch's first batch start)
        restarting = getattr(trainer.fit_loop.epoch_loop, "restarting", False)
        self._completed_at_step = _batches(trainer).completed if restarting else 0
        self._places_at_step, self._epoch_started = None, False
        if self._step_end_random is None:  # no step in this fit yet: as its first one starts
            self._first_epoch_random = resumed or random_states(pl_module.device)

    def _between_micro_batches(self, trainer: pl.Trainer) -> bool:
        """A validation between two micro-batches of a step: a save then holds the last step's
        state, and a resume fetches the micro-batches since again (they are in no checkpoint)."""
        return trainer.validating and self._completed_at_step not in (
            None,
            _batches(trainer).completed,
        )

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        pending = self._between_micro_batches(trainer)
        with self._as_at_the_last_step(trainer) if pending else nullcontext():
            super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_at = trainer.global_step

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        pending = self._between_micro_batches(trainer)  # a best checkpoint is resumed too
        with self._as_at_the_last_step(trainer) if pending else nullcontext():
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    @contextmanager
    def _as_at_the_last_step(self, trainer: pl.Trainer) -> Iterator[None]:
        """Inside, the run is as its last optimizer step left it (:func:`_rewound`), with the
        random generators of that step's end (or of the fit's first epoch start)."""
        device = trainer.lightning_module.device
        now = random_states(device)
        then = self._step_end_random or self._first_epoch_random
        if then is not None:
            set_random_states(then, device)
        try:
            with _rewound(trainer, self._completed_at_step, self._places_at_step):
                yield
        finally:
            set_random_states(now, device)

    def _bring_last_up_to_date(self, trainer: pl.Trainer) -> bool:
        """Save ``last`` unless it is up to date or this run saves none; whether it saved."""
        if (
            not self.save_last
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_written_at == trainer.global_step
        ):
            return False
        saved_at = self._last_global_step_saved  # Lightning skips its own saves at that step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved_at
        return True

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a ``monitor`` under the validation's prefix (``val/``) that the validation
        just run did not log. A monitor under another prefix (``train/loss``) may be logged
        by training, which has not run yet: Lightning checks it at the first validation."""
        super().on_sanity_check_end(trainer, pl_module)
        logged = sorted(trainer.callback_metrics)
        if self.monitor is None or self.monitor in logged or "/" not in self.monitor:
            return
        prefix = self.monitor.split("/", 1)[0] + "/"
        validation = [name for name in logged if name.startswith(prefix)]
        if validation:
            raise ConfigError(
                f"monitor {self.monitor!r} is not a metric the validation logs; it logs "
                f"{', '.join(validation)}",
                where="checkpoint.monitor",
            )

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # every save of this callback (best, last, periodic, epoch end) comes through here
        for optimizer in trainer.optimizers:
            check_parameters_finite(optimizer, trainer.global_step)
        super()._save_checkpoint(trainer, filepath)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else it decides at epoch end
            self._bring_last_up_to_date(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._bring_last_up_to_date(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:  # Lightning 2.6's on_train_end wrote last.ckpt even then
            return
        super().on_train_end(trainer, pl_module)
        swa = "StochasticWeightAveraging"
        if any(swa in {k.__name__ for k in type(c).__mro__} for c in trainer.callbacks):
            self._last_written_at = None  # its train end (before this one) put in the average
        self._bring_last_up_to_date(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, NonFiniteParametersError):
            return  # nothing with these parameters is saved, not even ``save_on_exception``'s
        super().on_exception(trainer, pl_module, exception)  # ``save_on_exception`` as chosen
        if not self.save_last:
            return
        nonfinite = isinstance(exception, NonFiniteLossError)
        between = (
            not nonfinite
            and trainer.training
            and trainer.world_size == 1
            and self._between_steps(exception)
        )
        if not (nonfinite or between) or self._completed_at_step is None:
            return
        if not nonfinite and trainer.training:
            self._note_a_step(trainer, pl_module)  # raised after this batch's step (a check)
        # the generators as the last step's end left them: the failed fetch's images drew random
        # crops, the failed step its dropout masks, which a resume draws again; written even where
        # a validation of this step wrote last before (between two of its micro-batches)
        self._last_written_at = None
        with self._as_at_the_last_step(trainer):
            if self._bring_last_up_to_date(trainer):
                self.saved_for = exception

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, *args)
        if not self._epoch_started:  # the epoch's first batch: Lightning's count is reset now
            self._epoch_started = True
            self._completed_at_step = _batches(trainer).completed

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._note_a_step(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, *args)

    def _note_a_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At a training batch's end (this callback's, or an error's before it, Lightning
        running checkpoint callbacks last): if the batch took an optimizer step, the run as that
        step left it."""
        saves = self.save_last or self.save_top_k != 0  # it may save at a validation
        if saves and trainer.global_step != self._steps_seen:
            self._steps_seen = trainer.global_step
            self._step_end_random = random_states(pl_module.device)
            self._completed_at_step = _batches(trainer).completed + 1  # counted after the hooks
            self._places_at_step = {id(x): x._batches_handed_out for x in _train_loaders(trainer)}

    def _between_steps(self, exception: BaseException) -> bool:
        """Whether ``exception`` is a data error met after an optimizer step of this fit in this
        process (a file that does not decode, fetched for a batch; a batch hook's or callback's
        refusal of it): the state to save is that of the step, which a resume continues from
        with the micro-batches of the next step fetched again. Not before such a step (a resume
        whose checkpoint failed to load: its state is half restored). The caller also checks
        that the trainer was training, not validating (a resume would count the validation it
        interrupted as done), and that it runs alone (a save waits for every process, and the
        others do not come)."""
        return isinstance(exception, DataError) and self._step_end_random is not None


def _batches(trainer: pl.Trainer) -> Any:
    """Lightning's count of this epoch's training batches (``ready``: fetched; ``completed``)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current


def _train_loaders(trainer: pl.Trainer) -> list[ResumableDataLoader]:
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    loaders = getattr(combined, "flattened", None) or []
    return [loader for loader in loaders if isinstance(loader, ResumableDataLoader)]


@contextmanager
def _rewound(trainer: pl.Trainer, completed: int, places: dict[int, int] | None) -> Iterator[None]:
    """Inside, the fit is saved as it stood at the end of its last optimizer step: Lightning's
    count of the epoch's batches back to ``completed`` (the micro-batches of an accumulation
    and the batch whose step failed are counted done or fetched), and each training loader's
    place to ``places`` (None: its epoch start), so that a resume fetches them again instead of
    going on after them."""
    epoch_loop = trainer.fit_loop.epoch_loop
    progress = epoch_loop.batch_progress
    behind = progress.current.completed - completed
    saved = (progress.current.state_dict(), progress.total.state_dict(), progress.is_last_batch)
    stepped = epoch_loop._batches_that_stepped
    loaders = _train_loaders(trainer)
    handed_out = [loader._batches_handed_out for loader in loaders]
    for tracker, done in ((progress.current, completed), (progress.total, None)):
        done = tracker.completed - behind if done is None else done
        tracker.ready = tracker.started = tracker.processed = tracker.completed = done
    epoch_loop._batches_that_stepped = stepped - behind  # the logging step of each batch
    progress.is_last_batch = False  # the failed or pending batch's flag: the step's was not
    for loader in loaders:
        start = loader.epoch_start_place
        loader._batches_handed_out = start if places is None else places.get(id(loader), start)
    try:
        yield
    finally:
        progress.current.load_state_dict(saved[0])
        progress.total.load_state_dict(saved[1])
        progress.is_last_batch = saved[2]
        epoch_loop._batches_that_stepped = stepped
        for loader, count in zip(loaders, handed_out):
            loader._batches_handed_out = count


def last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The file ``trainer.fit(ckpt_path="last")`` will load, found as Lightning 2.6 finds it:
    the newest (by modification time) of every ModelCheckpoint's ``last*.ckpt`` and every
    OnExceptionCheckpoint's file. None when there is none (Lightning then starts afresh)."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    candidates = {cb.ckpt_path for cb in trainer.callbacks if isinstance(cb, OnExceptionCheckpoint)}
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            candidates |= callback._find_last_checkpoints(trainer)
    found = [path for path in map(Path, candidates) if path.is_file()]
    return str(max(found, key=lambda path: path.stat().st_mtime)) if found else None
