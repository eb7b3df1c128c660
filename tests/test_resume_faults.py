"""A run stopped by a data error or a failed step keeps its place: its resume ends where the run
through ends."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import TinyRegression, ValidatedRegression, regression_data, trainer
from resume_helpers import (
    STEPS,
    FailsOnce,
    Restores,
    assert_same_parameters,
    data,
    make_module,
)

from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.data.resumable import ResumableDataLoader
from lsframe.errors import DataError


class _Undecodable(torch.utils.data.Dataset):
    """regression_data(40) with random noise added, where example ``bad`` raises a DataError
    while it is set."""

    bad: int | None = None

    def __init__(self) -> None:
        self.base = regression_data(40)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        if index == _Undecodable.bad:
            raise DataError("image does not decode", where=f"images/{index}.png")
        x, y = self.base[index]
        return x + 0.1 * torch.rand_like(x), y  # a random augmentation, as a crop draws


class _StopAndResume:
    """SaLSA (``accumulate`` micro-batches a step) over ``loader()``: the uninterrupted run, a
    second module for a run that stops on an error (with ``last``, its BestAndLastCheckpoint),
    and :meth:`resume_and_compare` from that run's ``last.ckpt``."""

    def __init__(self, accumulate: int, loader, tmp_path) -> None:
        self.loader, self.tmp_path = loader, tmp_path
        self.fit = partial(trainer, deterministic=True, max_steps=STEPS // accumulate)
        self.make = partial(make_module, "salsa", accumulate_grad_batches=accumulate)
        torch.manual_seed(0)
        self.uninterrupted = self.make()
        self.fit().fit(self.uninterrupted, loader())
        torch.manual_seed(0)
        self.stopped = self.make()
        self.last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)

    def resume_and_compare(self) -> TinyRegression:
        torch.manual_seed(1234)
        resumed = self.make()
        self.fit().fit(resumed, self.loader(), ckpt_path=self.tmp_path / "last.ckpt")
        assert_same_parameters(self.uninterrupted, resumed)
        return resumed


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_file_that_does_not_decode_mid_epoch_keeps_the_run_up_to_it_to_resume_exactly(
    accumulate, tmp_path
):
    # the fit ended with no checkpoint: every step since the last save was lost
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(_Undecodable(), batch_size=4, shuffle=True, seed=3)

    run = _StopAndResume(accumulate, loader, tmp_path)
    _Undecodable.bad = 5  # met while the batch after step 9 is fetched
    try:
        with pytest.raises(DataError, match="does not decode"):
            run.fit(callbacks=[run.last], enable_checkpointing=True).fit(run.stopped, loader())
    finally:
        _Undecodable.bad = None
    step = run.stopped.trainer.global_step
    # inside an accumulation the micro-batch fetched before the bad one is fetched again
    assert (
        step > 0 and torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == step
    )
    run.resume_and_compare()


def test_a_resume_that_cannot_load_its_checkpoint_leaves_last_as_it_was(tmp_path):
    # a data error while the state is half restored must not overwrite last with it
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(max_steps=3, enable_checkpointing=True, callbacks=[last]).fit(
        make_module("adamw"), data()
    )
    before = (tmp_path / "last.ckpt").read_bytes()
    again = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(DataError, match="another optimizer saved it"):
        trainer(max_steps=6, enable_checkpointing=True, callbacks=[again]).fit(
            make_module("salsa"), data(), ckpt_path=tmp_path / "last.ckpt"
        )
    assert (tmp_path / "last.ckpt").read_bytes() == before and again.saved_for is None


def test_a_file_that_does_not_decode_in_a_validation_leaves_last_where_it_was(tmp_path):
    # a resume from a save there counted the interrupted validation as done, and went on
    # otherwise than the uninterrupted run
    val = torch.utils.data.DataLoader(_Undecodable(), batch_size=8)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    run = trainer(
        max_steps=8,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[last],
    )
    _Undecodable.bad = 5  # in the validation's first batch
    try:
        with pytest.raises(DataError, match="does not decode"):
            run.fit(ValidatedRegression(), data(), val)
    finally:
        _Undecodable.bad = None
    assert run.global_step == 4 and last.saved_for is None
    assert not (tmp_path / "last.ckpt").exists()


def test_a_data_error_of_one_process_of_several_saves_nothing(monkeypatch):
    # the save waited for the other processes, which never came: the run hung
    from types import SimpleNamespace

    last = BestAndLastCheckpoint(save_last=True)
    last._step_end_random, last._completed_at_step = {}, 0
    saves = []
    monkeypatch.setattr(last, "_bring_last_up_to_date", saves.append)
    module = SimpleNamespace(_micro_batches=[], device=torch.device("cpu"))
    error = DataError("image does not decode", where="x.png")
    last.on_exception(SimpleNamespace(training=True, world_size=2), module, error)
    assert saves == [] and last.saved_for is None


def test_a_saved_place_is_checked_against_the_data_settings_before_the_resume_starts():
    from types import SimpleNamespace

    # one of lsframe's DataModules, whose seed and batch_size are its training loader's
    ours = type("GlueDataModule", (SimpleNamespace,), {"__module__": "lsframe.data.glue"})

    from lsframe.data.resumable import refuse_another_place
    from lsframe.errors import ConfigError

    def loops(batches: int) -> dict:
        place = {"epoch": 0, "batches": batches, "seed": 3, "batch_size": 4, "examples": 10}
        return {"fit_loop": {"state_dict": {"combined_loader": [place]}}}

    with pytest.raises(ConfigError, match="seed 3, this one with 4") as refused:
        refuse_another_place(loops(1), ours(seed=4, batch_size=4))
    assert refused.value.where == "data.init_args.seed"
    with pytest.raises(ConfigError, match="batches of 4, this one of 2") as refused:
        refuse_another_place(loops(1), ours(seed=3, batch_size=2))
    assert refused.value.where == "data.init_args.batch_size"
    refuse_another_place(loops(3), ours(seed=3, batch_size=2))  # the epoch is over
    # 2 of 10 // 4 = 2 full batches: over only if the loader drops the last one, which the
    # loader itself knows: left to it
    refuse_another_place(loops(2), ours(seed=3, batch_size=2))
    refuse_another_place(None, ours(seed=9, batch_size=9))  # nothing saved

    class TheirOwn:  # a user's DataModule: its seed picks a split, not the loader's order
        seed, batch_size = 42, 4

    refuse_another_place(loops(1), TheirOwn())


@pytest.mark.parametrize("at", ["late", "first", "epoch start"])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("how", ["batch check", "non-finite loss", "check after the step"])
def test_a_step_that_fails_after_its_batch_was_fetched_is_trained_again_by_the_resume(
    how, accumulate, at, tmp_path
):
    # last.ckpt recorded the loader one batch ahead of the run: the resume skipped the batch
    # of the failed step (16 steps where the uninterrupted run took 17); in an accumulation,
    # every micro-batch of it
    from lsframe.errors import NonFiniteLossError

    steps = STEPS // accumulate
    # late: inside epoch 1; first: the fit's first step (its generators as it began); epoch
    # start: epoch 1's first step (its batch count was taken before Lightning reset it)
    step = {"late": steps - 4, "first": 0, "epoch start": 10 // accumulate}[at]
    run = _StopAndResume(accumulate, data, tmp_path)
    failing = [FailsOnce(at=step, how=how), Restores(), run.last]
    with pytest.raises(NonFiniteLossError if how == "non-finite loss" else DataError):
        run.fit(callbacks=failing, enable_checkpointing=True).fit(run.stopped, data())
    if at == "first" and how != "non-finite loss":  # no step before the data error's
        assert run.last.saved_for is None and not (tmp_path / "last.ckpt").exists()
        return
    assert run.last.saved_for is not None
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == step + (how == "check after the step")
    assert run.resume_and_compare().trainer.global_step == steps
