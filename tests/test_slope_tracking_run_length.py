"""SlopeTrackingAdam's start on long runs (``long_run_steps``) and how the run's length reaches
it: a plain loop, Lightning, Hugging Face's Trainer, the benchmarks' specs."""

from __future__ import annotations

import copy
import math
from functools import partial

import helpers
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from test_slope_tracking_adam import alignments_and_step_sizes, problem, twin_of

from lsframe.optim import SlopeTrackingAdam, long_run_start, set_run_length


def test_a_run_longer_than_long_run_steps_starts_at_lr_times_the_root_of_their_ratio():
    assert long_run_start(1e-4, 375, 300) == 1e-4
    assert long_run_start(1e-4, 375, 375) == 1e-4
    assert long_run_start(1e-4, 375, 1000) == pytest.approx(1e-4 * math.sqrt(0.375), rel=1e-15)
    model = problem()[0]
    opt = SlopeTrackingAdam(model.parameters())  # long_run_steps=375, the default
    assert opt.needs_run_length
    opt.set_run_length(1000)
    group = opt.param_groups[0]
    assert group["step_size"] == group["initial_step_size"] == pytest.approx(6.1237e-5, rel=1e-4)
    assert group["lr"] == group["step_size"] * group["lr_multiplier"]
    opt.set_run_length(1500)  # from the unscaled start again, not compounded
    assert group["step_size"] == pytest.approx(1e-4 * math.sqrt(375 / 1500), rel=1e-12)
    opt.set_run_length(200)
    assert group["step_size"] == 1e-4


def test_a_long_run_starts_at_the_floor_when_its_start_would_fall_below_min_step_size():
    # below the floor, the first update would lift η to it at once: ×1.63 here, past max_change
    model = problem()[0]
    opt = SlopeTrackingAdam(model.parameters(), min_step_size=8e-5)
    opt.set_run_length(1000)  # 1e-4 · √(375/1000) = 6.1e-5 < 8e-5
    group = opt.param_groups[0]
    assert group["step_size"] == group["initial_step_size"] == 8e-5
    assert group["lr"] == group["step_size"] * group["lr_multiplier"]
    opt.set_run_length(500)  # 8.7e-5: above the floor, the rule's own start
    assert group["step_size"] == pytest.approx(1e-4 * math.sqrt(375 / 500), rel=1e-12)


def test_the_option_changes_the_start_only_a_run_is_that_start_given_as_lr():
    torch.manual_seed(0)
    model, x, y = problem()
    twin = twin_of(model)
    scaled = SlopeTrackingAdam(model.parameters(), lr=1e-2, max_change=1.5, long_run_steps=10)
    set_run_length(scaled, 40)
    plain = SlopeTrackingAdam(
        twin.parameters(), lr=long_run_start(1e-2, 10, 40), max_change=1.5, long_run_steps=None
    )
    assert not plain.needs_run_length and not set_run_length(plain, 40)
    _, etas = alignments_and_step_sizes(scaled, model, x, y, steps=40)
    _, plain_etas = alignments_and_step_sizes(plain, twin, x, y, steps=40)
    assert etas == plain_etas and len(set(etas)) > 3  # the rule acted, the same way
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_after_the_first_step_the_run_length_leaves_eta_alone_and_a_resume_keeps_its_own():
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(model.parameters(), long_run_steps=10)
    opt.set_run_length(40)
    alignments_and_step_sizes(opt, model, x, y, steps=3)
    eta = opt.param_groups[0]["step_size"]
    opt.set_run_length(4000)
    assert opt.param_groups[0]["step_size"] == eta
    saved = copy.deepcopy(opt.state_dict())
    resumed = SlopeTrackingAdam(twin_of(model).parameters(), long_run_steps=10)
    resumed.set_run_length(90)  # a resumed run is configured first, then loaded (Lightning)
    resumed.load_state_dict(saved)
    group = resumed.param_groups[0]
    assert group["step_size"] == eta and group["initial_step_size"] == 5e-5
    resumed.set_run_length(90)  # the loaded run has stepped: η stays its own
    assert group["step_size"] == eta


def test_only_an_optimizer_that_asks_is_told_and_the_steps_are_counted_only_then():
    model = problem()[0]

    def never() -> int:
        raise AssertionError("counted the steps of a run whose optimizer did not ask")

    assert not set_run_length(SlopeTrackingAdam(model.parameters(), long_run_steps=None), never)
    assert not set_run_length(torch.optim.AdamW(model.parameters()), never)
    tracker = SlopeTrackingAdam(model.parameters(), long_run_steps=4)
    assert set_run_length(LightningOptimizer(tracker), lambda: 16)  # through the wrapper
    assert tracker.param_groups[0]["step_size"] == pytest.approx(5e-5, rel=1e-12)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "375"])
def test_a_bad_long_run_steps_or_run_length_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="long_run_steps"):
        SlopeTrackingAdam(problem()[0].parameters(), long_run_steps=bad)
    opt = SlopeTrackingAdam(problem()[0].parameters(), long_run_steps=5)
    with pytest.raises(ValueError, match="total_steps"):
        opt.set_run_length(bad)


def test_lightning_tells_it_the_runs_optimizer_steps_before_the_first():
    module = helpers.TinyRegression(
        optimizer=partial(SlopeTrackingAdam, long_run_steps=4), param_grouping="single"
    )
    trainer = helpers.trainer(max_epochs=2)
    trainer.fit(module, helpers.loader(n=32, batch_size=4))  # 2 epochs × 8 batches
    group = trainer.optimizers[0].param_groups[0]
    assert trainer.global_step == 16
    assert group["initial_step_size"] == pytest.approx(1e-4 * math.sqrt(4 / 16), rel=1e-12)


class _Stream(torch.utils.data.IterableDataset):
    """Eight regression samples with no length: Lightning counts its batches as infinite."""

    def __iter__(self):
        yield from helpers.regression_data(8)


def test_a_run_of_unknown_length_starts_at_lr_with_a_warning():
    module = helpers.TinyRegression(
        optimizer=partial(SlopeTrackingAdam, long_run_steps=1), param_grouping="single"
    )
    trainer = helpers.trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="starts at its lr"):
        trainer.fit(module, torch.utils.data.DataLoader(_Stream(), batch_size=4))
    assert trainer.global_step == 2
    assert trainer.optimizers[0].param_groups[0]["initial_step_size"] == 1e-4


def test_hugging_faces_trainer_tells_it_the_runs_optimizer_steps(tmp_path):
    from hf_helpers import DATA, arguments, bert

    from lsframe.integrations.hf import LineSearchTrainer

    model = bert()
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3, long_run_steps=5)
    args = arguments(tmp_path, max_steps=20)
    LineSearchTrainer(model=model, args=args, train_dataset=DATA, optimizers=(opt, None)).train()
    assert opt.param_groups[0]["initial_step_size"] == pytest.approx(5e-4, rel=1e-12)
    assert opt.search_state["step"] == 20


def test_the_default_spec_starts_a_1000_step_run_where_the_pilot_started_and_older_specs_do_not():
    from benchmarks.specs import BURN_IN_DEFAULT, DEFAULT, build

    def start(spec: str, steps: int) -> float:
        return build(spec, problem()[0], total_steps=steps).optimizer.param_groups[0]["step_size"]

    assert start(DEFAULT, 1000) == pytest.approx(6.12e-5, rel=1e-3)
    assert start(DEFAULT, 375) == 1e-4
    # specs logged before the default changed keep their meaning on runs of any length
    assert start(BURN_IN_DEFAULT, 1000) == 1e-4
    assert start("slope_tracking_adam", 1000) == 1e-5
    # the class's defaults are the default spec's rules
    opt = SlopeTrackingAdam(problem()[0].parameters())
    opt.set_run_length(1000)
    assert opt.param_groups[0]["step_size"] == start(DEFAULT, 1000)
