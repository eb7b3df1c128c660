"""The quality benchmark's optimizer specs (``benchmarks.specs``): presets, schedules, start values
and held-out marks, what each spec builds, which logged runs count for the default, and the
specs refused before any run."""

from __future__ import annotations

import math
import re

import pytest
import torch
from quality_helpers import Regression

from benchmarks.specs import build


def test_an_annealed_spec_moves_by_the_tracked_step_times_a_cosine_that_ends_at_zero():
    torch.manual_seed(0)
    total = 6
    run = build("slope_tracking_adam+fresh_peak~anneal", Regression(), total_steps=total)
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8)}
    for k in range(1, total + 1):
        before = [p.detach().clone() for p in run.model.parameters()]
        run.step(batch)
        group = run.optimizer.param_groups[0]
        factor = 0.5 * (1 + math.cos(math.pi * k / total))
        assert group["lr_multiplier"] == pytest.approx(factor, abs=1e-12)
        assert group["lr"] == pytest.approx(group["step_size"] * factor, rel=1e-12)
        moved = any(not torch.equal(b, p) for b, p in zip(before, run.model.parameters()))
        assert moved  # the step before the last still had a multiplier above 0
    assert run.optimizer.param_groups[0]["lr_multiplier"] == pytest.approx(0.0, abs=1e-12)


def test_a_warmup_annealed_spec_rises_over_a_tenth_of_the_run_then_follows_the_cosine():
    torch.manual_seed(0)
    total = 20  # 2 warmup steps
    run = build("slope_tracking_adam~warmup_anneal", Regression(), total_steps=total)
    batch = {"x": torch.randn(8, 3), "y": torch.randn(8)}
    group = run.optimizer.param_groups[0]
    assert group["lr_multiplier"] == pytest.approx(0.5)  # the first step is not wasted at 0
    expected = [1.0] + [0.5 * (1 + math.cos(math.pi * (t - 2) / 18)) for t in range(2, total + 1)]
    for factor in expected:
        run.step(batch)
        assert group["lr_multiplier"] == pytest.approx(factor, abs=1e-12)
        assert group["lr"] == pytest.approx(group["step_size"] * factor, rel=1e-12)
    assert group["lr_multiplier"] == pytest.approx(0.0, abs=1e-12)  # the run ends at 0


@pytest.mark.parametrize("spec", ["slope_tracking_adam~warmup", "adamw@1e-4~anneal"])
def test_a_spec_with_an_unknown_or_misplaced_schedule_is_refused(spec):
    with pytest.raises(ValueError, match="anneal"):
        build(spec, Regression(), total_steps=4)


def test_two_presets_in_a_spec_build_the_optimizer_with_both():
    run = build("slope_tracking_adam+agree+fresh_peak@1e-4", Regression(), total_steps=4)
    group = run.optimizer.param_groups[0]
    assert group["combine_horizons"] == "agree"
    assert group["cap_at_fresh_peak"] is True
    assert group["lr"] == pytest.approx(1e-4)


def test_a_bare_tracker_spec_keeps_the_earlier_defaults_and_the_default_spec_is_the_class():
    from benchmarks.specs import DEFAULT
    from lsframe import optim

    earlier = optim.info("slope_tracking_adam").preset("earlier_defaults")
    logged = build("slope_tracking_adam", Regression(), total_steps=4).optimizer.defaults
    current = optim.create("slope_tracking_adam", Regression().parameters()).defaults
    assert {key: logged[key] for key in earlier} == earlier  # as its runs were logged
    assert all(current[key] != value for key, value in earlier.items())
    run = build(DEFAULT, Regression(), total_steps=4)  # the class's defaults, warmed, annealed
    assert run.optimizer.defaults == current
    assert run.scheduler.warmup_ratio == 0.1 and run.scheduler.total_steps == 4


def test_the_default_and_its_spec_before_the_long_run_start_differ_only_beyond_375_steps():
    from benchmarks.specs import BURN_IN_DEFAULT, DEFAULT, LONG_RUN_STEPS

    def groups(spec: str, steps: int) -> list[dict]:
        run = build(spec, Regression(), total_steps=steps)
        drop = ("params", "long_run_steps", "unscaled_initial_step_size")
        return [{k: v for k, v in g.items() if k not in drop} for g in run.optimizer.param_groups]

    # long_run_steps acts in set_run_length alone: equal groups are the same run
    assert groups(DEFAULT, LONG_RUN_STEPS) == groups(BURN_IN_DEFAULT, LONG_RUN_STEPS)
    assert groups(DEFAULT, LONG_RUN_STEPS + 1) != groups(BURN_IN_DEFAULT, LONG_RUN_STEPS + 1)


def test_the_earlier_defaults_runs_of_at_most_375_steps_count_for_the_default_and_no_others():
    from benchmarks.specs import (
        BURN_IN_DEFAULT,
        DEFAULT,
        default_mode,
        logged_as,
        same_runs_note,
        with_same_runs,
    )

    assert logged_as(DEFAULT, 375) == BURN_IN_DEFAULT and logged_as(DEFAULT, 376) == DEFAULT
    fused = default_mode("fused")
    assert logged_as(fused, 80) == BURN_IN_DEFAULT.replace("@", "+fused@")
    assert logged_as(f"{DEFAULT}^heldout", 80) == f"{BURN_IN_DEFAULT}^heldout"
    assert logged_as("salsa@1e-3~anneal", 80) == "salsa@1e-3~anneal"

    def run(spec: str, seed: int, steps: int, acc: float) -> dict:
        return {"optimizer": spec, "seed": seed, "steps": steps, "acc": acc}

    runs = [
        run(BURN_IN_DEFAULT, 0, 300, 0.8),
        run(BURN_IN_DEFAULT, 1, 1000, 0.7),  # a longer run: the default starts lower there
        run(BURN_IN_DEFAULT, 2, 300, 0.6),
        run(DEFAULT, 2, 300, 0.9),  # the default's own run wins
        run(BURN_IN_DEFAULT, 0, 300, 0.85),  # a seed logged twice: the last run, as in a table
    ]
    out = with_same_runs(runs, [DEFAULT], lambda r: r["steps"])
    assert out[: len(runs)] == runs
    mine = {r["seed"]: r for r in out if r["optimizer"] == DEFAULT}
    assert set(mine) == {0, 2}
    assert mine[0]["acc"] == 0.85 and mine[0]["same_run_as"] == BURN_IN_DEFAULT
    assert mine[2]["acc"] == 0.9 and "same_run_as" not in mine[2]
    assert with_same_runs(runs, [DEFAULT], 1000) == runs  # an int: every run's length
    assert BURN_IN_DEFAULT in same_runs_note(out) and same_runs_note(runs) == ""


def test_presets_that_set_one_key_differently_are_refused():
    with pytest.raises(ValueError, match="disagree on combine_horizons"):
        build("slope_tracking_adam+agree+agree_else_min", Regression(), total_steps=4)


@pytest.mark.parametrize(
    "spec, start_free",
    [
        (
            "slope_tracking_adam+significant+slope@1e-4~warmup_anneal^heldout",
            "slope_tracking_adam+significant+slope~warmup_anneal^heldout",
        ),
        ("slope_tracking_adam+long_run_start@1e-4^heldout-z2", "slope_tracking_adam^heldout-z2"),
        ("slope_tracking_adam~anneal", "slope_tracking_adam~anneal"),
        ("slope_tracking_adam@5e-5", "slope_tracking_adam"),
    ],
)
def test_a_specs_name_and_its_start_free_form_keep_the_schedule_and_held_out_mark(spec, start_free):
    from benchmarks.specs import spec_name, without_start

    assert spec_name(spec) == "slope_tracking_adam"
    assert without_start(spec) == start_free


def test_a_hyphen_belongs_to_a_specs_name():
    from benchmarks.specs import spec_name

    assert spec_name("salsa-reference^heldout") == "salsa-reference"
    assert spec_name("adamw-fused-const@5e-5") == "adamw-fused-const"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("adamw+robust@1e-4", "adamw takes no preset"),
        ("adamw@inf", "lr must be a positive finite number"),
        ("adamw@0", "lr must be a positive finite number"),
        ("adamw", "adamw needs a learning rate"),
        ("salsa^late_half", r"\^late_half needs a schedule"),
    ],
)
def test_a_spec_part_that_would_be_ignored_or_fail_later_is_refused_before_any_run(spec, message):
    from benchmarks.specs import check_specs

    with pytest.raises(SystemExit, match=f"optimizer spec '{re.escape(spec)}': {message}"):
        check_specs([spec])
