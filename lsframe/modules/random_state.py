"""A run's random state in its checkpoints, so that a resumed run draws what the uninterrupted
one would have drawn.

Lightning does not put the random number generators in a checkpoint, so a resumed run would draw
other dropout masks than the uninterrupted one. :class:`ClosureModule` saves the generators with
:func:`random_states` and, through :class:`ResumeRandomState`, restores them just before
training resumes, which makes a resumed trajectory bit-identical on the CPU in deterministic
mode. (The random state of one optimizer step, restored before each closure evaluation, is
:class:`lsframe.optim.StepRandomState`.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def random_states(device: torch.device) -> dict[str, Any]:
    """The torch (CPU and ``device``'s CUDA), Python and NumPy generator states."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def every_process_random_states(own: dict[str, Any], processes: int) -> list[dict[str, Any]] | None:
    """``own`` (this process's :func:`random_states`) of each of a fit's ``processes`` (its
    trainer's ``world_size``, the default process group), in rank order; None for one process.
    The processes' generators part as soon as they draw different numbers of values (dropout on
    batches padded to each one's longest text), and only rank 0 writes the checkpoint. A
    collective: every process of the fit saves each checkpoint (``Trainer.save_checkpoint``
    waits for all of them)."""
    if processes < 2:
        return None
    states: list[Any] = [None] * processes
    dist.all_gather_object(states, own)
    return states


def own_random_states(saved: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s generator states in what a checkpoint saved: its entry of
    :func:`every_process_random_states`, else the saving process's (a checkpoint of one
    process, or of lsframe before 2026-12-07, which gave every process rank 0's)."""
    by_rank = saved.get("random_states_by_rank")
    if by_rank and rank < len(by_rank):
        return by_rank[rank]
    return saved.get("random_states")


def _numpy_state() -> tuple:
    # as torch and Python types: Lightning loads checkpoints with weights_only=True
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, float(cached)


def set_random_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`random_states` returned (CUDA only on a CUDA device)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


class ResumeRandomState:
    """The generator states a loaded checkpoint carried, held until training resumes.

    :meth:`hold` keeps them when the checkpoint is loaded; :meth:`restore` applies them once, at
    the last hook before the first resumed step (nothing after it draws from the generators),
    and only when the fit resumes from that checkpoint: weights loaded for a new fit keep the new
    fit's seed.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def hold(self, states: dict[str, Any] | None) -> None:
        """Keep ``states`` (from :func:`random_states`; None: nothing to restore)."""
        self.pending = states

    def restore(self, resuming: bool, device: torch.device) -> None:
        """Apply the held states if ``resuming``; forget them either way."""
        states, self.pending = self.pending, None
        if states is not None and resuming:
            set_random_states(states, device)


def restore_loader_position(trainer: Any) -> None:
    """Give a resumed fit's train loaders the position its checkpoint saved, where Lightning
    loaded them before it restored that state.

    Lightning hands a checkpoint's loader states (a
    :class:`~lsframe.data.ResumableDataLoader`'s epoch and batches handed out) to the loaders
    when it first loads them in the fit loop. A run length taken in ``configure_optimizers``
    (:attr:`~lightning.pytorch.Trainer.estimated_stepping_batches`, for a schedule over
    ``max_epochs``) loads them earlier, before the checkpoint is restored; the states then stay
    unapplied and the resumed epoch starts from its first batch. Called at ``on_train_start``
    (after the restore, before the first batch is fetched), this applies them and makes the
    iterator anew. Lightning 2.6's fit loop; a no-op where nothing is left to apply.
    """
    loop = trainer.fit_loop
    pending = getattr(loop, "_combined_loader_states_to_load", None)
    fetcher = getattr(loop, "_data_fetcher", None)
    if not pending or getattr(loop, "_combined_loader", None) is None or fetcher is None:
        return
    loop._load_combined_loader_states()
    iter(fetcher)  # the iterator made before the states were applied would start the epoch over


def mark_an_epoch_ended_by_its_limit(checkpoint: dict[str, Any], trainer: Any) -> None:
    """In a checkpoint written at an epoch's last batch, mark the training loaders' places
    ``epoch_over`` (and ``limit_reached`` beside Lightning's ``is_last_batch``): a loader does not
    know ``limit_train_batches``, and resumed from the last batch the limit let an epoch take it
    went on with that epoch's order (the rest of its batches) instead of the next epoch's."""
    loop = (checkpoint.get("loops") or {}).get("fit_loop")
    progress = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    progress = getattr(progress, "batch_progress", None)
    limit = getattr(trainer, "num_training_batches", float("inf"))
    if not isinstance(loop, dict) or progress is None:
        return
    if not progress.is_last_batch and progress.current.ready < limit:
        return
    batches = loop.get("epoch_loop.batch_progress")
    if isinstance(batches, dict):
        batches["limit_reached"] = True
    places = (loop.get("state_dict") or {}).get("combined_loader") or []
    for place in places if isinstance(places, list) else []:
        if isinstance(place, dict) and "batches" in place:
            place["epoch_over"] = True


def finish_epoch_of_an_epoch_end_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint written at an epoch's end resume in the next epoch, as one written
    after the epoch-end hooks does.

    ``last.ckpt`` is written inside the epoch-end hooks (``on_train_epoch_end``, or the
    validation at the epoch's last batch), before Lightning counts the epoch completed. Lightning
    2.6 resumes such a checkpoint by running one more batch "in" the finished epoch and then
    numbering every later epoch one ahead (``set_epoch(e + 1)``), so a resumed run saw other
    batch orders and ended early under ``max_epochs``. Here the saved loop state says the epoch
    is over (its batches counted done, the epoch completed): Lightning then starts the next
    epoch at its first batch, and the resumed trajectory is the uninterrupted one.

    A checkpoint written after the epoch was counted completed (``on_train_end`` of a run that
    ended on ``max_epochs``, such as a resume with nothing left to train) still holds the
    finished epoch's batch count; a run extended by more epochs resumed the next epoch "at its
    last batch" and trained nothing. Its batch count is cleared the same way.

    A run stopped inside an epoch (``max_steps``, ``should_stop``) writes ``last.ckpt`` after
    the loop counted that epoch processed, and ``trainer.save_checkpoint`` after ``fit``
    returned writes it counted completed too; extended, it resumed in the next epoch and
    skipped the rest of this one. Its epoch is counted unprocessed again, and the run goes on at
    the next batch.
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if not isinstance(loop, dict):
        return
    batches = loop.get("epoch_loop.batch_progress") or {}
    epochs = loop.get("epoch_progress") or {}
    current = batches.get("current") or {}
    parts = (epochs.get("total") or {}, epochs.get("current") or {})
    unfinished = all(part.get("completed", 0) < part.get("processed", 0) for part in parts)
    if not (current.get("ready", 0) > 0 and current.get("processed") == current.get("ready")):
        return
    if not batches.get("is_last_batch") and not batches.get("limit_reached"):
        # stopped inside an epoch (max_steps, should_stop) and written after the loop counted
        # the epoch processed (last.ckpt at on_train_end), or completed too (a save after fit
        # returned): Lightning resumed in the next epoch and skipped the rest of this one.
        # Uncounted, the epoch resumes at its next batch, as the uninterrupted run goes on
        counted_done = all(
            part.get("completed", 0) == part.get("processed", 0) == part.get("ready", -1) > 0
            for part in parts
        )
        if unfinished or counted_done:
            for part in ("total", "current"):
                done = epochs[part]["completed"] - (1 if counted_done else 0)
                epochs[part]["processed"] = epochs[part]["completed"] = done
        return
    # written after Lightning counted the epoch done (``on_train_end`` of a run that ended on
    # ``max_epochs``): the finished epoch's batch count is still there, and the next epoch
    # resumed "at its last batch" and trained nothing
    completed = all(part.get("completed", 0) == part.get("ready", -1) > 0 for part in parts)
    # written at the last batch's end, before Lightning counted the epoch processed (a data
    # error after that batch's step, saved as the step left the run): the epoch is over too
    in_flight = all(part.get("processed", 0) < part.get("ready", 0) for part in parts)
    done = current.get("completed") == current.get("ready")
    if in_flight and done and batches.get("limit_reached"):
        for part in ("total", "current"):
            epochs[part]["processed"] = epochs[part]["ready"]
        unfinished = True
    if not (unfinished or completed):
        return
    for part in ("total", "current"):
        epochs[part]["completed"] = epochs[part]["processed"]
    batches["current"] = {key: 0 for key in current}
    batches["is_last_batch"] = False
