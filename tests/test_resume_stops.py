"""Validations and stops between the micro-batches of a step, saves after a fit returned, and
evaluation loaders that leave the training's generators alone: each resume ends where the run
through ends."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyRegression, ValidatedRegression, mlp, regression_data, trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from resume_helpers import (
    Crash,
    FailsOnce,
    Restores,
    assert_same_parameters,
    data,
    make_module,
)

from lsframe import optim
from lsframe.checkpointing import BestAndLastCheckpoint


def _accumulating() -> ValidatedRegression:
    """Two micro-batches a step, with dropout: a validation every 3 batches (see
    :data:`_validating`) falls between the micro-batches of every other step."""
    return ValidatedRegression(
        model=mlp(dropout=0.2), optimizer=optim.SGDSLS, accumulate_grad_batches=2
    )


_validating = partial(trainer, deterministic=True, max_steps=8, val_check_interval=3,
                      check_val_every_n_epoch=None)  # fmt: skip


def _validation_data() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(regression_data(8), batch_size=8)


def _assert_resumes_to(uninterrupted: ValidatedRegression, ckpt_path: Path, label: str) -> None:
    """A fresh module resumed from ``ckpt_path`` ends with ``uninterrupted``'s parameters."""
    torch.manual_seed(1234)
    resumed = _accumulating()
    _validating().fit(resumed, data(), _validation_data(), ckpt_path=ckpt_path)
    assert_same_parameters(uninterrupted, resumed, label)


def test_a_validation_between_two_micro_batches_saves_the_step_a_resume_goes_on_from(tmp_path):
    # last.ckpt of a validation after the first micro-batch of a step recorded the loader after
    # it: the resume's next step skipped it; a failure at that step kept that file
    from lsframe.errors import NonFiniteLossError

    torch.manual_seed(0)
    uninterrupted = _accumulating()
    _validating().fit(uninterrupted, data(), _validation_data())
    for failure in ("crash", "non-finite loss"):
        torch.manual_seed(0)
        stopped, last = _accumulating(), BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
        callbacks = [last] + (
            [Crash(at=2)] if failure == "crash" else [FailsOnce(2, failure), Restores()]
        )
        with pytest.raises(RuntimeError if failure == "crash" else NonFiniteLossError):
            fit = _validating(callbacks=callbacks, enable_checkpointing=True)
            fit.fit(stopped, data(), _validation_data())
        _assert_resumes_to(uninterrupted, tmp_path / "last.ckpt", failure)
        (tmp_path / "last.ckpt").unlink()


def test_every_best_checkpoint_of_validations_between_micro_batches_resumes_exactly(tmp_path):
    # a best checkpoint saved at a validation between two micro-batches of a step recorded the
    # loader past the first: a resume from it never trained that micro-batch
    best = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val/loss", save_top_k=-1)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit = _validating(callbacks=[best], enable_checkpointing=True)
    fit.fit(uninterrupted, data(), _validation_data())
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 5  # validations after batches 3, 6, 9 (epoch 0), 2 and 5 (epoch 1)
    for path in files:
        _assert_resumes_to(uninterrupted, path, path.name)


def test_a_resumed_fit_saves_a_validation_between_its_first_micro_batches_as_its_step_left_it(
    tmp_path,
):
    # Lightning calls no on_train_epoch_start for an epoch restarted mid-way: the resumed fit took
    # its first micro-batch's end for a step, so the checkpoints of its validation before its
    # first step ended recorded the loader past that micro-batch, which their resume never trained
    def best(folder: str) -> BestAndLastCheckpoint:
        return BestAndLastCheckpoint(
            dirpath=tmp_path / folder, monitor="val/loss", save_top_k=-1, save_last=True
        )

    torch.manual_seed(0)
    uninterrupted = _accumulating()
    _validating(callbacks=[best("a")], enable_checkpointing=True).fit(
        uninterrupted, data(), _validation_data()
    )
    start = tmp_path / "a" / "epoch=0-step=1.ckpt"  # the validation after batch 3
    torch.manual_seed(1234)
    fit = _validating(callbacks=[best("b")], enable_checkpointing=True)
    fit.fit(_accumulating(), data(), _validation_data(), ckpt_path=start)
    written = sorted((tmp_path / "b").glob("*.ckpt"))
    # its validations after batches 3 (between step 2's micro-batches, again), 6, 9, 2, 5; last
    assert len(written) == 6 and tmp_path / "b" / "epoch=0-step=1.ckpt" in written
    for path in written:
        _assert_resumes_to(uninterrupted, path, path.name)


@pytest.mark.parametrize("length", [{"max_steps": 17}, {"max_epochs": 3}])
def test_a_resume_at_the_end_of_an_epoch_limit_train_batches_ended_starts_the_next(
    length, tmp_path
):
    # the loader, which does not know the limit, went on with the rest of the ended epoch's
    # order (4 batches of epoch 0 "in epoch 1"), and the run ended elsewhere
    fit = partial(trainer, deterministic=True, limit_train_batches=6, **length)
    torch.manual_seed(0)
    uninterrupted = make_module("adamw")
    fit().fit(uninterrupted, data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(RuntimeError, match="killed"):
        fit(callbacks=[Crash(at=8), last], enable_checkpointing=True).fit(
            make_module("adamw"), data()
        )
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6
    torch.manual_seed(1234)
    resumed = make_module("adamw")
    fit().fit(resumed, data(), ckpt_path=tmp_path / "last.ckpt")
    assert_same_parameters(uninterrupted, resumed)


def test_each_process_resumes_with_its_own_generators_and_an_older_checkpoint_with_rank_0s():
    from lsframe.modules.random_state import own_random_states

    saved = {"random_states": "rank 0", "random_states_by_rank": ["rank 0", "rank 1"]}
    assert [own_random_states(saved, rank) for rank in (0, 1)] == ["rank 0", "rank 1"]
    # saved by one process, by lsframe before 2026-12-07, or by fewer processes than resume
    assert own_random_states({"random_states": "rank 0"}, 1) == "rank 0"
    assert own_random_states(saved, 2) == "rank 0"


def _post_fit_module() -> TinyRegression:
    torch.manual_seed(0)
    return make_module("adamw")


def _extended_to_20_steps_equals_the_run_through_them(checkpoint) -> None:
    """The fit from ``checkpoint`` to step 20 ends where one fit through 20 steps ends."""
    fit = partial(trainer, deterministic=True, max_steps=20)
    plain = _post_fit_module()
    fit().fit(plain, data())
    torch.manual_seed(99)  # a fresh process: whatever state the generators are in
    extended = _post_fit_module()
    fit().fit(extended, data(), ckpt_path=checkpoint)
    assert extended.trainer.global_step == 20
    assert_same_parameters(plain, extended)


def test_a_checkpoint_saved_after_a_fit_stopped_inside_an_epoch_goes_on_at_its_next_batch(
    tmp_path,
):
    # trainer.save_checkpoint after fit returned from max_steps inside epoch 1: Lightning had
    # counted that epoch completed, and the extended run began epoch 2, skipping 5 batches
    stopped = trainer(deterministic=True, max_steps=15)
    stopped.fit(_post_fit_module(), data())
    stopped.save_checkpoint(tmp_path / "final.ckpt")
    _extended_to_20_steps_equals_the_run_through_them(tmp_path / "final.ckpt")


def test_a_checkpoint_saved_after_a_resumed_fit_that_trained_nothing_keeps_its_generators(
    tmp_path,
):
    # the resumed fit never reached on_train_start, where the held generators are restored:
    # its save kept the fresh process's, and the run extended from it drew other dropout masks
    fit = partial(trainer, deterministic=True, max_steps=15)
    first = fit()
    first.fit(_post_fit_module(), data())
    first.save_checkpoint(tmp_path / "a.ckpt")
    torch.manual_seed(1234)
    idle = fit()
    idle.fit(_post_fit_module(), data(), ckpt_path=tmp_path / "a.ckpt")  # nothing to train
    idle.save_checkpoint(tmp_path / "b.ckpt")
    _extended_to_20_steps_equals_the_run_through_them(tmp_path / "b.ckpt")


def test_last_checkpoint_bookkeeping_reads_this_process_s_generators(tmp_path):
    from types import SimpleNamespace

    saved = {"random_states": "rank 0", "random_states_by_rank": ["rank 0", "rank 1"]}
    callback = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    callback.on_load_checkpoint(SimpleNamespace(global_rank=1), None, {"lsframe": saved})
    assert callback._resumed_random == "rank 1"


class _StopAfter(Callback):
    """Asks the fit to stop at the end of its ``batches``-th training batch, as the Trainer's
    ``max_time`` does (``Timer`` sets ``should_stop`` at a batch's end)."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.seen += 1
        if self.seen == self.batches:
            trainer.should_stop = True


def _lsframe_validation_data() -> torch.utils.data.DataLoader:
    from lsframe.data.resumable import make_loader

    return make_loader(regression_data(8), batch_size=8, shuffle=False)


def _stopped_and_resumed_equals_the_run_through(stop_after: int, tmp_path, **settings) -> None:
    """A fit asked to stop after ``stop_after`` batches, then resumed from its last.ckpt and
    from a save after ``fit`` returned, ends where the fit through 8 steps ends."""
    fit = partial(_validating, **settings)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit().fit(uninterrupted, data(), _lsframe_validation_data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    stopped = fit(callbacks=[_StopAfter(stop_after), last], enable_checkpointing=True)
    stopped.fit(_accumulating(), data(), _lsframe_validation_data())
    assert 0 < stopped.global_step < 8
    stopped.save_checkpoint(tmp_path / "after_fit.ckpt")
    for name in ("last.ckpt", "after_fit.ckpt"):
        torch.manual_seed(1234)
        resumed = _accumulating()
        fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=tmp_path / name)
        assert_same_parameters(uninterrupted, resumed, name)


def test_a_stop_asked_between_two_micro_batches_waits_for_the_step(tmp_path):
    # max_time's stop after batch 3, the first micro-batch of step 2, saved the loader past it
    # and dropped its gradients: the resume never trained it, and every later step paired other
    # batches (SaLSA 0.77 away after 12 steps). The fit now stops once the step is taken
    _stopped_and_resumed_equals_the_run_through(3, tmp_path, val_check_interval=4)


def test_a_stop_between_validations_resumes_without_the_validation_lightning_adds(tmp_path):
    # a fit asked to stop runs one more validation: its loader's iterator drew a base seed from
    # torch's generator before the checkpoint saved it, so the resume's dropout masks differed
    _stopped_and_resumed_equals_the_run_through(2, tmp_path, val_check_interval=5)


def test_a_checkpoint_at_the_end_of_an_epoch_without_a_validation_resumes_exactly(tmp_path):
    # the restart's bookkeeping at an epoch's end opens the validation loader although this
    # epoch had no validation (every second epoch has one): one draw the run never made
    every_ten = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1)
    fit = partial(trainer, deterministic=True, max_steps=20, check_val_every_n_epoch=2)
    torch.manual_seed(0)
    uninterrupted = ValidatedRegression(model=mlp(dropout=0.2), optimizer=optim.SGDSLS)
    fit(callbacks=[every_ten], enable_checkpointing=True).fit(
        uninterrupted, data(), _lsframe_validation_data()
    )
    torch.manual_seed(1234)
    resumed = ValidatedRegression(model=mlp(dropout=0.2), optimizer=optim.SGDSLS)
    (epoch_end,) = tmp_path.glob("*step=10.ckpt")  # epoch 0's last batch: 10 batches an epoch
    fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=epoch_end)
    assert_same_parameters(uninterrupted, resumed)


def test_a_stop_asked_by_a_validation_between_two_micro_batches_waits_for_the_step(tmp_path):
    # EarlyStopping at the validation after batch 3 (inside step 2): a save after fit returned
    # held the loader past batch 3 (0.77 away); its hold runs at the validation's end
    stop = EarlyStopping("val/loss", stopping_threshold=1e9)  # stops at its first check
    fit = partial(_validating, val_check_interval=3)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit().fit(uninterrupted, data(), _lsframe_validation_data())
    torch.manual_seed(0)
    stopped = fit(callbacks=[stop])
    stopped.fit(_accumulating(), data(), _lsframe_validation_data())
    assert stopped.global_step == 2  # the step after the validation's micro-batch is taken
    stopped.save_checkpoint(tmp_path / "after_fit.ckpt")
    torch.manual_seed(1234)
    resumed = _accumulating()
    fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=tmp_path / "after_fit.ckpt")
    assert_same_parameters(uninterrupted, resumed)


def test_every_evaluation_set_of_a_text_data_module_leaves_torchs_generator_alone(minilm):
    # MNLI's matched and mismatched sets were plain DataLoaders: each validation drew a base
    # seed from torch's generator, which parts a resumed run (see the tests above)
    from lsframe.data.text import TextClassificationDataModule, TextExamples

    class TwoDevSets(TextClassificationDataModule):
        eval_names = ["matched", "mismatched"]

        def load_split(self, split):
            examples = TextExamples(["a good film", "a bad film", "fine", "awful"], [1, 0, 1, 0])
            return examples if split == "train" else [examples, examples]

    data_module = TwoDevSets(tokenizer=minilm, eval_batch_size=2)
    data_module.setup("validate")
    loaders = data_module.val_dataloader()
    assert len(loaders) == 2
    before = torch.get_rng_state()
    for loader in loaders:
        assert sum(len(batch["labels"]) for batch in loader) == 4
    assert torch.equal(before, torch.get_rng_state())


class _Recorder(pl.loggers.Logger):
    """Every value a fit logs, as ``(step, name, value)`` rows in the order written."""

    name, version = "recorder", "0"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.extend((step, key, float(value)) for key, value in sorted(metrics.items()))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


_CUT_AT = {  # how the first fit ends, its settings and its optimizer steps in all
    "a validation added for a stop": (lambda: _StopAfter(2), {"val_check_interval": 5}, 1, 8),
    "a validation between two micro-batches": (
        lambda: Crash(at=2),
        {"val_check_interval": 3},
        2,
        8,
    ),
    "an epoch's end": (lambda: Crash(at=12), {"check_val_every_n_epoch": 1}, 1, 15),
    "a validation on its schedule": (lambda: Crash(at=7), {"val_check_interval": 5}, 1, 8),
}


@pytest.mark.parametrize("where", list(_CUT_AT))
def test_a_resumed_fit_logs_each_value_at_the_uninterrupted_fit_s_step(where, tmp_path):
    # Lightning's logging step, restored from a last.ckpt written at a validation it ran for a
    # stop or between two micro-batches, put every curve of the resumed fit one step behind the
    # uninterrupted one (at an epoch's end, one ahead)
    cut, settings, accumulate, steps = _CUT_AT[where]
    settings = {"check_val_every_n_epoch": None, **settings}

    def fit(logger: _Recorder, **kwargs) -> pl.Trainer:
        return trainer(deterministic=True, max_steps=steps, log_every_n_steps=1, logger=logger,
                       **settings, **kwargs)  # fmt: skip

    def module() -> ValidatedRegression:
        return ValidatedRegression(model=mlp(dropout=0.2), optimizer=optim.SGDSLS,
                         accumulate_grad_batches=accumulate)  # fmt: skip

    through, resumed = _Recorder(), _Recorder()
    torch.manual_seed(0)
    fit(through).fit(module(), data(), _lsframe_validation_data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with contextlib.suppress(RuntimeError):  # the crash
        run = fit(_Recorder(), callbacks=[cut(), last], enable_checkpointing=True)
        run.fit(module(), data(), _lsframe_validation_data())
    torch.manual_seed(1234)
    fit(resumed).fit(module(), data(), _lsframe_validation_data(), ckpt_path=tmp_path / "last.ckpt")
    assert len(resumed.rows) > 10 and resumed.rows == through.rows[-len(resumed.rows) :]


def test_a_resume_ended_before_its_first_validation_keeps_early_stopping_s_metric(tmp_path):
    # a fit cut after its last validation, resumed to a max_steps inside the next epoch: at that
    # epoch's end EarlyStopping found no val/loss ("not available") and stopped the resume, and
    # every rerun of last.ckpt; the fit through had gone on with the last validation's value
    def fit(*callbacks, **kwargs) -> pl.Trainer:
        return trainer(deterministic=True, max_steps=15, callbacks=[*callbacks], **kwargs)

    def module() -> ValidatedRegression:
        return ValidatedRegression(model=mlp(dropout=0.2), optimizer=optim.SGDSLS)

    torch.manual_seed(0)
    through, stop = module(), EarlyStopping("val/loss", patience=5)
    fit(stop).fit(through, data(), _lsframe_validation_data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(RuntimeError, match="killed"):  # after the validation at step 10
        fit(
            EarlyStopping("val/loss", patience=5), Crash(at=12), last, enable_checkpointing=True
        ).fit(module(), data(), _lsframe_validation_data())
    torch.manual_seed(1234)
    resumed, resumed_stop = module(), EarlyStopping("val/loss", patience=5)
    run = fit(resumed_stop)
    run.fit(resumed, data(), _lsframe_validation_data(), ckpt_path=tmp_path / "last.ckpt")
    assert run.global_step == 15
    assert_same_parameters(through, resumed)
    assert resumed_stop.state_dict() == stop.state_dict()  # its wait count, its best score
    assert torch.equal(
        run.callback_metrics["val/loss"], through.trainer.callback_metrics["val/loss"]
    )
