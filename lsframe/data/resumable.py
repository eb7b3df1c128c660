"""A DataLoader whose place inside an epoch survives a checkpoint.

Lightning saves the ``state_dict`` of every training loader that has one and hands it back to
``load_state_dict`` before the resumed epoch starts (``_Stateful`` in ``lightning.fabric``).
A plain ``DataLoader`` has none, so a run resumed from a mid-epoch checkpoint starts its epoch
from the first batch again and the trajectory differs from the uninterrupted run (Lightning
warns). :class:`ResumableDataLoader` records the epoch and the number of batches it has handed
out; after ``load_state_dict`` its next iterator skips that many batches in index space (no
sample is loaded or collated for them) and continues with the same order.

The order is a pure function of ``(seed, epoch)``, as in ``DistributedSampler``: Lightning calls
``sampler.set_epoch`` at each epoch start (under DDP it swaps in a ``DistributedSampler``, which
has the same contract). A plain training loop should call ``loader.sampler.set_epoch(epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from lsframe.errors import ConfigError


class EpochSeededRandomSampler(RandomSampler):
    """A random permutation per epoch drawn from ``seed + epoch`` alone.

    Unlike ``RandomSampler`` without a generator, it reads nothing from the global random state,
    so a resumed run draws the same order without restoring that state first.

    Args:
        data_source: The dataset (only its length is used).
        seed: Base seed of the permutations. Default: 0.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class _SkipFirst:
    """Iterates ``index_sampler`` without its first ``count`` elements (batches of indices)."""

    def __init__(self, index_sampler: Any, count: int) -> None:
        self.index_sampler, self.count = index_sampler, count

    def __iter__(self) -> Iterator[Any]:
        # one-shot: persistent workers re-iterate this object at the next epoch, unskipped
        count, self.count = self.count, 0
        iterator = iter(self.index_sampler)
        for _ in range(count):
            if next(iterator, None) is None:
                return
        yield from iterator

    def __len__(self) -> int:
        return max(len(self.index_sampler) - self.count, 0)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that resumes mid-epoch from Lightning checkpoints.

    Accepts every ``DataLoader`` argument. ``shuffle=True`` (with no explicit ``sampler``) uses
    :class:`EpochSeededRandomSampler` with ``seed``.

    Args:
        dataset: A map-style dataset (an iterable dataset has no index space to skip in).
        seed: Seed of the shuffled order (with ``shuffle=True``). Default: 0.
        *args: Passed to ``DataLoader``.
        **kwargs: Passed to ``DataLoader``.
    """

    def __init__(self, dataset: Dataset, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        if kwargs.get("shuffle") and kwargs.get("sampler") is None:
            kwargs["shuffle"] = None
            kwargs["sampler"] = EpochSeededRandomSampler(dataset, seed)
        # an iterator draws its workers' base seed from the loader's generator, else from the
        # global one: a draw a resumed run would make at another moment than the original
        self._own_generator = kwargs.get("generator") is None
        if self._own_generator:
            kwargs["generator"] = torch.Generator()
        super().__init__(dataset, *args, **kwargs)
        if not hasattr(dataset, "__len__"):
            raise TypeError("ResumableDataLoader needs a map-style dataset with a length")
        self.seed = seed
        self._batches_handed_out = 0
        #: Where the current epoch's iterator started (a resumed epoch: after its skipped batches).
        self.epoch_start_place = 0
        self._skip = 0

    @property
    def _index_sampler(self) -> Any:
        index_sampler = super()._index_sampler
        return _SkipFirst(index_sampler, self._skip) if self._skip else index_sampler

    def __len__(self) -> int:
        skip, self._skip = self._skip, 0
        try:
            return super().__len__()
        finally:
            self._skip = skip

    def __iter__(self) -> Iterator[Any]:
        start = self._skip if self._skip < len(self) else 0
        self._skip = start
        if self._own_generator:
            self.generator.manual_seed(self.seed * 1_000_003 + getattr(self.sampler, "epoch", 0))
        try:
            iterator = super().__iter__()
        finally:
            self._skip = 0
        self._batches_handed_out = self.epoch_start_place = start
        return self._count(iterator)

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches_handed_out += 1
            yield batch

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Iterate the loader for something other than training (a callback's Fisher pass)
        without moving the place a checkpoint records: inside, a new iterator starts at the
        epoch's first batch, and on exit the count of batches handed out and a pending resume
        skip are as they were."""
        handed_out, skip = self._batches_handed_out, self._skip
        self._skip = 0
        try:
            yield
        finally:
            self._batches_handed_out, self._skip = handed_out, skip

    def state_dict(self) -> dict[str, Any]:
        """The epoch (the sampler's, if it has one) and the batches handed out in it, with what
        the place depends on: the seed, the batch size, the number of examples, and the
        processes and seed of the order (under DDP Lightning's ``DistributedSampler`` orders
        the epoch from ``seed_everything`` and splits it over the processes)."""
        return {
            "epoch": getattr(self.sampler, "epoch", None),
            "batches": self._batches_handed_out,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "examples": len(self.dataset),  # type: ignore[arg-type]
            **self._order(),
        }

    def _order(self) -> dict[str, int | None]:
        """The processes the epoch's order is split over and the seed that draws it (None for
        a sampler that does not shuffle: no seed changes its order)."""
        shuffles = getattr(self.sampler, "shuffle", True)
        return {
            "processes": int(getattr(self.sampler, "num_replicas", 1)),
            "order_seed": int(getattr(self.sampler, "seed", self.seed)) if shuffles else None,
        }

    def _saved_epoch_over(self, state: dict[str, Any], batches: int) -> bool:
        """Whether the saved place is at its epoch's end, in the saved epoch's batches (its
        batch size and number of examples, where recorded; else this loader's)."""
        size, examples = state.get("batch_size"), per_process_examples(state)
        if size is None or examples is None:
            return batches >= len(self)
        return batches >= (examples // size if self.drop_last else -(-examples // size))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iterator continue after the batches recorded in ``state``.

        Raises:
            ConfigError: If ``state`` was written with another shuffle seed, or inside an
                epoch with another batch size or number of examples: the batches to skip would
                be other examples (a state of before 2026-12-07 records the seed only). At an
                epoch's end they may differ: the next epoch starts afresh.
        """
        batches = int(state["batches"])
        # at the epoch's end: its loader ran out, or the run's limit_train_batches ended it
        finished = bool(state.get("epoch_over")) or self._saved_epoch_over(state, batches)
        mine = {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "examples": len(self.dataset),  # type: ignore[arg-type]
            **self._order(),
        }
        refusal = place_refusal(state, mine, finished)
        if refusal is not None:
            raise refusal
        epoch = state.get("epoch")
        if epoch is not None and hasattr(self.sampler, "set_epoch"):
            # set now: a multi-worker iterator draws indices before Lightning's set_epoch call
            self.sampler.set_epoch(epoch + 1 if finished else epoch)
        self._skip = 0 if finished else batches
        self._batches_handed_out = batches


#: What a saved place depends on: the key, the words for a difference, the argument to name.
_PLACE_CHECKS = (
    ("seed", "was shuffled with seed {}, this one with {}", "data.seed"),
    ("batch_size", "handed out batches of {}, this one of {}", "data.batch_size"),
    ("examples", "had {} examples, this one has {} (a changed train_limit, train_subsample or "
     "data file)", None),
    ("processes", "split its epoch over {} processes, this one over {}", "trainer.devices"),
    ("order_seed", "drew its epoch's order with seed {}, this one with {} (under DDP: "
     "seed_everything)", "seed_everything"),
)  # fmt: skip


def place_refusal(
    state: dict[str, Any], mine: dict[str, Any], finished: bool | None
) -> ConfigError | None:
    """The refusal of a saved loader place (:meth:`ResumableDataLoader.state_dict`) for a loader
    of the settings ``mine`` (``seed``, ``batch_size``, ``examples``, ``processes``,
    ``order_seed``; a missing one is not compared): another seed always, any other inside an
    epoch (``finished``: whether the place is at its epoch's end; None: not known, not
    compared)."""
    for key, text, argument in _PLACE_CHECKS:
        saved, current = state.get(key), mine.get(key)
        if key != "seed" and finished is not False:
            continue  # nothing of that epoch is left; the next one starts afresh
        if saved is not None and current is not None and saved != current:
            run_setting = argument is not None and not argument.startswith("data.")
            return ConfigError(
                f"the checkpoint's training loader {text.format(saved, current)}: resuming "
                "would train other examples than the rest of its epoch; resume with the "
                f"{'run' if run_setting else 'data'} settings it was saved with",
                where=argument if run_setting else None,
                argument=None if run_setting else argument,
            )
    return None


def refuse_another_place(loops: Any, datamodule: Any, order: dict[str, int] | None = None) -> None:
    """Before a resume writes anything (its config, its logs): refuse a checkpoint whose saved
    training-loader place (in its ``loops``) ``datamodule``'s ``seed`` or ``batch_size`` cannot
    continue, at ``data.init_args.<key>``, or the ``order`` the run will draw its epochs in
    (``processes``, ``order_seed``: :meth:`ResumableDataLoader.state_dict`'s, as the caller
    knows them from the strategy), at ``trainer.devices`` or ``seed_everything``. The number of
    examples is known only once the data is set up: the loader refuses it then. ``seed`` and
    ``batch_size`` are compared only for lsframe's DataModules, where they are the training
    loader's; another DataModule's loader refuses them itself."""
    mine = dict(order or {})
    if type(datamodule).__module__.startswith("lsframe."):
        mine.update({k: getattr(datamodule, k, None) for k in ("seed", "batch_size")})
    for state in _loader_places(loops):
        batches, size, examples = (
            state.get("batches"),
            state.get("batch_size"),
            per_process_examples(state),
        )
        finished = None  # at the epoch's end, inside it, or (drop_last unknown here) either
        if isinstance(batches, int) and size and isinstance(examples, int):
            full, partial = examples // size, -(-examples // size)
            finished = True if batches >= partial else False if batches < full else None
        refusal = place_refusal(state, mine, finished)
        if refusal is not None:
            raise refusal.at("data.init_args")


def per_process_examples(state: dict[str, Any]) -> int | None:
    """The examples of a saved place's epoch that one process saw (``DistributedSampler`` pads
    the epoch to a multiple of the processes)."""
    examples, processes = state.get("examples"), state.get("processes") or 1
    return None if not isinstance(examples, int) else -(-examples // processes)


def _loader_places(node: Any) -> Iterator[dict[str, Any]]:
    """The saved :class:`ResumableDataLoader` places anywhere in a checkpoint's loop states."""
    if isinstance(node, dict):
        if {"batches", "seed"} <= node.keys():
            yield node
            return
        for value in node.values():
            yield from _loader_places(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _loader_places(value)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, **kwargs: Any
) -> DataLoader:
    """A training loader (``shuffle=True``: resumable, ordered by ``seed`` and epoch) or an
    evaluation loader (in dataset order). An evaluation loader has a generator of its own: each
    of its iterators draws a base seed, which from torch's global generator would move the
    dropout masks of the training after every validation, and a validation that a resumed run
    does not repeat (one Lightning adds when a fit is asked to stop, or its restart's
    bookkeeping at an epoch's end) would move them apart from the uninterrupted run's."""
    if shuffle:
        return ResumableDataLoader(
            dataset, batch_size=batch_size, shuffle=True, seed=seed, **kwargs
        )
    kwargs.setdefault("generator", torch.Generator())
    return DataLoader(dataset, batch_size=batch_size, **kwargs)
