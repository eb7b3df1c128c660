"""SlopeTrackingAdam's ceiling, its burn-in and its rules for combining the two horizons, against the rule
written out by hand (:func:`test_slope_tracking_adam.reference_step_sizes`)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_slope_tracking_adam import (
    EARLIER,
    alignments_and_step_sizes,
    problem,
    reference_step_sizes,
    twin_of,
)

from lsframe import optim
from lsframe.optim import SlopeTrackingAdam
from lsframe.optim._alignment import burn_in_length
from lsframe.optim._slope_rule import step_size_change
from lsframe.optim.slope_tracking_adam import RULE_KEYS


def test_under_a_ceiling_the_step_size_follows_the_rule_and_never_exceeds_it():
    torch.manual_seed(0)
    model, x, y = problem()
    betas, ceiling = (0.5, 0.8, 0.9), 0.1  # uncapped, η climbs to 0.17 and swings 0.08–0.16
    opt = SlopeTrackingAdam(
        model.parameters(),
        lr=1e-4,
        max_change=1.5,
        alignment_betas=betas,
        max_step_size=ceiling,
        **EARLIER,
    )
    alignments, etas = alignments_and_step_sizes(opt, model, x, y)
    expected = reference_step_sizes(alignments, 1e-4, 1.5, betas, False, ceiling=ceiling)
    assert etas == pytest.approx(expected, rel=1e-9)
    assert max(etas) == pytest.approx(ceiling, rel=1e-12)
    reached = etas.index(max(etas))
    assert min(etas[reached:]) < ceiling * (1 - 1e-6)  # and it still comes down from there


def test_from_top_starts_at_the_ceiling_and_a_ceiling_below_lr_is_refused():
    model, _, _ = problem()
    opt = optim.create("slope_tracking_adam", model.parameters(), preset="from_top")
    assert opt.defaults["lr"] == opt.defaults["max_step_size"] == 1e-4
    with pytest.raises(ValueError, match="max_step_size"):
        SlopeTrackingAdam(model.parameters(), lr=1e-3, max_step_size=1e-4)


def test_a_ceiling_resumes_from_the_state_dict_and_the_steps_continue_identically():
    torch.manual_seed(0)
    model, x, y = problem()
    kwargs = {"lr": 1e-4, "max_change": 1.5, "alignment_betas": (0.5, 0.8, 0.9), "burn_in": False}
    opt = SlopeTrackingAdam(model.parameters(), max_step_size=0.1, **kwargs)
    alignments_and_step_sizes(opt, model, x, y, steps=10)
    twin = twin_of(model)
    resumed = SlopeTrackingAdam(twin.parameters(), **kwargs)  # no ceiling until loaded
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert resumed.param_groups[0]["max_step_size"] == 0.1
    _, etas = alignments_and_step_sizes(opt, model, x, y, steps=15)
    _, resumed_etas = alignments_and_step_sizes(resumed, twin, x, y, steps=15)
    assert resumed_etas == etas and max(etas) == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("combine", ["agree", "agree_else_min", "significant"])
def test_each_horizon_rule_gives_the_documented_step_sizes(combine):
    torch.manual_seed(0)
    model, x, y = problem()
    betas = (0.5, 0.8, 0.9)
    opt = optim.create(
        "slope_tracking_adam",
        model.parameters(),
        preset=combine,
        lr=1e-4,
        max_change=1.5,
        alignment_betas=betas,
        burn_in=False,
    )
    alignments, etas = alignments_and_step_sizes(opt, model, x, y)
    expected = reference_step_sizes(alignments, 1e-4, 1.5, betas, False, combine=combine)
    assert etas == pytest.approx(expected, rel=1e-9)
    assert expected != pytest.approx(reference_step_sizes(alignments, 1e-4, 1.5, betas, False))
    assert max(etas) > 1e-4 * 1.5**3  # it grew while the horizons agreed


def test_under_pure_noise_the_other_horizon_rules_drift_less_than_the_minimum():
    gen = torch.Generator().manual_seed(0)
    noise = (0.05 * torch.randn(3000, generator=gen)).tolist()  # alignments with mean 0
    drift = {}
    moved = {}
    for combine in ("min", "agree", "agree_else_min", "significant"):
        model = problem()[0]
        opt = SlopeTrackingAdam(model.parameters(), combine_horizons=combine)
        rule = {key: opt.defaults[key] for key in RULE_KEYS}  # as the step reads them
        logs = [
            math.log(step_size_change(opt.search_state, a, rule)) / math.log(rule["max_change"])
            for a in noise
        ]
        drift[combine] = sum(logs) / len(logs)  # mean exponent per step
        moved[combine] = sum(e != 0 for e in logs) / len(logs)
    # min(z_fast, z_slow) of two zero-mean scores is negative on average: η halves every
    # log(2)/(|drift|·log 1.2) steps; agreeing in sign is symmetric about 0, and braking only
    # where the horizons disagree keeps a third of the minimum's drift
    assert drift["min"] < -0.1
    assert abs(drift["agree"]) < 0.03
    assert drift["min"] / 2 < drift["agree_else_min"] < -0.03
    # a two-standard-error test on the slow average: η holds on about 19 steps in 20
    assert abs(drift["significant"]) < 0.02 and moved["significant"] < 0.08
    assert moved["min"] == 1.0


def test_a_significant_horizon_still_moves_the_step_size_on_a_weak_steady_signal():
    gen = torch.Generator().manual_seed(1)
    for sign in (1, -1):  # a slope a third of the noise, either way
        alignments = (sign * 0.03 + 0.1 * torch.randn(2000, generator=gen)).tolist()
        opt = SlopeTrackingAdam(problem()[0].parameters(), combine_horizons="significant")
        rule = {key: opt.defaults[key] for key in RULE_KEYS}
        logs = [
            math.log(step_size_change(opt.search_state, a, rule)) / math.log(rule["max_change"])
            for a in alignments
        ]
        assert sign * sum(logs) / len(logs) > 0.05  # η doubles within ~80 steps, or halves


def test_the_burn_in_lasts_until_the_first_alignments_carry_under_five_percent_of_the_weight():
    for beta in (0.5, 0.8, 0.9, 0.99):
        n = burn_in_length(beta)
        assert beta**n < 0.05 <= beta ** (n - 1)
    assert burn_in_length(0.9) == 29


@pytest.mark.parametrize("lr", [1e-4, 0.3])  # too short here: growth is held; too long: η falls
def test_during_the_burn_in_the_step_size_may_fall_but_not_grow(lr):
    torch.manual_seed(0)
    model, x, y = problem()
    twin = twin_of(model)
    rule = dict(lr=lr, max_change=1.5, alignment_betas=(0.5, 0.8, 0.9), **EARLIER)  # no burn-in
    opt = SlopeTrackingAdam(model.parameters(), **(rule | {"burn_in": True}))
    free = SlopeTrackingAdam(twin.parameters(), **rule)
    alignments, etas = alignments_and_step_sizes(opt, model, x, y)
    length = burn_in_length(0.8)  # 14 alignments
    expected = reference_step_sizes(alignments, lr, 1.5, (0.5, 0.8, 0.9), False, burn_in=length)
    assert etas == pytest.approx(expected, rel=1e-9)
    assert max(etas[: length - 1]) <= lr
    _, free_etas = alignments_and_step_sizes(free, twin, x, y)
    if lr == 1e-4:  # every early step looks too short: without the burn-in η grows at once
        assert max(free_etas[: length - 1]) > 2 * lr
        assert max(etas[length - 1 :]) > lr  # and after it, with the burn-in too
    else:  # η falls at once either way, identically, as long as it only falls
        falls = next(i for i in range(1, len(free_etas)) if free_etas[i] > free_etas[i - 1])
        assert falls >= 3 and free_etas[:falls] == pytest.approx(etas[:falls], rel=1e-9)
        assert etas[falls - 1] < lr / 3
