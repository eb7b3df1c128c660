"""SlopeTrackingAdam over passes of a finite training set (growth on fresh batches, the cap at
the first pass's peak), its present defaults, and how the pass reaches it (Lightning, wrappers)."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from test_slope_tracking_adam import (
    EARLIER,
    alignments_and_step_sizes,
    batches,
    closure_for,
    flat,
    problem,
    reference_step_sizes,
    twin_of,
)

from lsframe import optim
from lsframe.optim import SlopeTrackingAdam
from lsframe.optim._alignment import burn_in_length
from lsframe.optim.slope_tracking_adam import RULE_KEYS

PASS_BETAS = (0.6, 0.6, 0.9)


def preset_against_default(preset: str, lr: float):
    """``preset`` and an uncapped twin from the same weights and rule (max_change 1.5,
    :data:`PASS_BETAS`, the minimum of the horizons on cosines) through 5 passes of 8 batches of
    32, each pass told to both (twice: the call is idempotent). Returns the preset's optimizer,
    and for each of the two the alignments and step sizes of the steps that had an alignment."""
    torch.manual_seed(0)
    model, x, y = problem()
    twin = twin_of(model)
    rule = dict(lr=lr, max_change=1.5, alignment_betas=PASS_BETAS)
    rule |= {k: v for k, v in EARLIER.items() if k != "cap_at_fresh_peak"}
    opt = optim.create("slope_tracking_adam", model.parameters(), preset=preset, **rule)
    free = SlopeTrackingAdam(twin.parameters(), cap_at_fresh_peak=False, **rule)
    record = {opt: ([], []), free: ([], [])}
    for step in range(40):
        for o, m in ((opt, model), (free, twin)):
            o.start_pass(step // 8)
            o.start_pass(step // 8)
            o.step(closure_for(m, o, *batches(x, y, step)))
            if o.search_state["alignment"] is not None:
                record[o][0].append(o.search_state["alignment"])
                record[o][1].append(o.param_groups[0]["step_size"])
    return opt, record[opt], record[free]


def test_with_fresh_growth_the_step_size_can_fall_but_not_grow_after_the_first_pass():
    # from 1e-2 it overshoots on this problem, so there is something to come down from
    opt, (alignments, etas), (free_alignments, free_etas) = preset_against_default(
        "fresh_growth", 1e-2
    )
    assert not opt.defaults["grow_on_repeats"]  # the uncapped twin grows on repeats
    # step 8 opens pass 1; it is the 8th step with an alignment (step 0 has none)
    assert etas == pytest.approx(
        reference_step_sizes(alignments, 1e-2, 1.5, PASS_BETAS, False, 7), rel=1e-9
    )
    assert free_etas == pytest.approx(
        reference_step_sizes(free_alignments, 1e-2, 1.5, PASS_BETAS, False), rel=1e-9
    )
    assert all(b <= a for a, b in zip(etas[6:], etas[7:]))
    assert any(b < a for a, b in zip(etas[6:], etas[7:]))  # it still comes down
    assert any(b > a for a, b in zip(free_etas[6:], free_etas[7:]))  # the twin grew there
    assert opt.state_dict()["param_groups"][0]["line_search"]["data_pass"] == 4
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="index"):
            opt.start_pass(bad)


def test_capped_at_the_fresh_peak_it_grows_again_on_repeats_but_not_above_the_first_pass():
    opt, (alignments, etas), (_, free_etas) = preset_against_default("fresh_peak", 3e-3)
    reference = reference_step_sizes(alignments, 3e-3, 1.5, PASS_BETAS, False, 7, cap=True)
    assert etas == pytest.approx(reference, rel=1e-9)
    peak = max([3e-3, *etas[:7]])
    assert opt.search_state["fresh_peak"] == pytest.approx(peak, rel=1e-12)
    assert max(etas[7:]) <= peak * (1 + 1e-12)
    assert any(b < a for a, b in zip(etas[7:], etas[8:]))  # it comes down on repeats
    assert any(b > a for a, b in zip(etas[7:], etas[8:]))  # and grows back
    assert max(free_etas[7:]) > max([3e-3, *free_etas[:7]])  # uncapped, it went past


def default_run(steps: int, pass_length: int | None):
    """The defaults (no argument) over ``steps`` batches, a new pass every ``pass_length`` (None:
    one pass, every batch fresh); each step's slope ⟨g_t, d_{t−1}⟩ and step size."""
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(model.parameters())
    slopes, etas, last = [], [], None
    for step in range(steps):
        if pass_length is not None:
            opt.start_pass(step // pass_length)
        before = flat(p.detach().clone() for p in model.parameters())
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        if last is not None:  # the alignment is the slope ⟨g_t, d_{t−1}⟩, not its cosine
            grad = flat(p.grad for p in model.parameters())
            assert opt.search_state["alignment"] == pytest.approx(float(grad @ last), rel=1e-4)
            slopes.append(opt.search_state["alignment"])
            etas.append(opt.param_groups[0]["step_size"])
        moved = before - flat(p.detach() for p in model.parameters())
        last = moved / opt.param_groups[0]["step_size"]  # the step was −η·d
    return opt, slopes, etas


def test_by_default_it_starts_at_1e_4_grows_after_the_burn_in_and_is_capped_at_the_fresh_peak():
    rule = dict(
        eta0=1e-4, max_change=1.2, betas=(0.5, 0.9, 0.99), gain_decay=False, combine="significant"
    )
    opt, slopes, etas = default_run(80, None)  # fresh batches: every step looks too short
    assert len(etas) == 79 and burn_in_length(0.9) == 29
    assert etas == pytest.approx(reference_step_sizes(slopes, **rule, burn_in=29), rel=1e-9)
    assert max(etas[:28]) == 1e-4  # no growth during the burn-in ...
    assert reference_step_sizes(slopes, **rule)[27] > 1e-4 * 1.2**5  # ... where it would grow
    assert etas[-1] > 1e-4 * 1.2**10 and len(set(etas)) > 20  # after it, the rule acts
    # passes of 8 batches: the first pass lies inside the burn-in, its peak is the start, and
    # from the second pass on η may not grow above it
    _, slopes, etas = default_run(40, 8)
    expected = reference_step_sizes(slopes, **rule, fresh=7, cap=True, burn_in=29)
    assert etas == pytest.approx(expected, rel=1e-9) and max(etas) == 1e-4
    assert max(reference_step_sizes(slopes, **rule, fresh=7, cap=True)) > 1.2e-4
    keys = ("lr", "combine_horizons", "alignment_measure", "burn_in", "hold_while_warming")
    assert {k: opt.defaults[k] for k in keys} == {
        "lr": 1e-4,
        "combine_horizons": "significant",
        "alignment_measure": "slope",
        "burn_in": True,
        "hold_while_warming": True,
    }
    assert opt.defaults["cap_at_fresh_peak"] and opt.defaults["grow_on_repeats"]


def test_a_run_saved_under_the_earlier_defaults_resumes_with_its_rule_and_a_new_group_joins_it():
    torch.manual_seed(0)
    model, x, y = problem()
    old = optim.create("slope_tracking_adam", model[0].parameters(), preset="earlier_defaults")
    alignments_and_step_sizes(old, model, x, y, steps=5)
    twin = twin_of(model)
    resumed = SlopeTrackingAdam(twin[0].parameters())  # today's defaults, then the checkpoint
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))
    assert resumed.param_groups[0]["combine_horizons"] == "min"
    resumed.add_param_group({"params": twin[2].parameters()})  # gradual unfreezing
    old.add_param_group({"params": model[2].parameters()})
    for key in RULE_KEYS:
        assert resumed.param_groups[1][key] == old.param_groups[1][key]
    _, etas = alignments_and_step_sizes(old, model, x, y, steps=5)
    _, resumed_etas = alignments_and_step_sizes(resumed, twin, x, y, steps=5)
    assert resumed_etas == etas  # one rule over both groups, the run's own


def test_lightning_tells_it_each_epoch(monkeypatch):
    import helpers

    seen = []
    start_pass = SlopeTrackingAdam.start_pass
    monkeypatch.setattr(
        SlopeTrackingAdam, "start_pass", lambda self, i: (seen.append(i), start_pass(self, i))
    )
    module = helpers.registry_module("slope_tracking_adam")
    trainer = helpers.trainer(max_epochs=3)
    trainer.fit(module, helpers.loader())
    assert seen == [0, 1, 2]
    assert trainer.optimizers[0].search_state["data_pass"] == 2


def test_start_pass_reaches_the_tracker_through_wrappers_and_skips_optimizers_that_do_not_ask():
    model = problem()[0]
    tracker = SlopeTrackingAdam(model.parameters())
    wrapped = LightningOptimizer(tracker)  # what LightningModule.optimizers() returns
    assert optim.innermost_optimizer(wrapped) is tracker
    assert optim.start_pass(wrapped, 3)
    assert tracker.search_state["data_pass"] == 3
    assert not optim.start_pass(torch.optim.AdamW(model.parameters()), 1)
    with pytest.raises(ValueError, match="start_pass"):
        optim.start_pass(tracker, -1)


def warmed_up(
    hold: bool, steps: int = 40, state: dict | None = None, start: int = 0, burn_in: bool = False
):
    """SlopeTrackingAdam (1e-4, max_change 1.5, the horizons of the hand computations) under a
    10-step linear warmup and a cosine to 0 over 40 steps, the multiplier set before each step
    as a module's scheduler leaves it; from ``state`` (a state dict) at step ``start``."""
    from lsframe.optim import StepSizeSchedule, WarmupCosineLR

    torch.manual_seed(0)
    model, x, y = problem()
    rule = dict(lr=1e-4, max_change=1.5, alignment_betas=(0.5, 0.8, 0.9), **EARLIER)
    rule |= {"hold_while_warming": hold, "burn_in": burn_in}
    opt = SlopeTrackingAdam(model.parameters(), **rule)
    schedule = StepSizeSchedule(opt, lambda o: WarmupCosineLR(o, total_steps=40, warmup_ratio=0.25))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(copy.deepcopy(state["opt"]))
        schedule.load_state_dict(state["schedule"])
    multipliers, alignments, etas = [], [], []
    for step in range(start, steps):
        multipliers.append(opt.param_groups[0]["lr_multiplier"])
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        alignments.append(opt.search_state["alignment"])
        etas.append(opt.param_groups[0]["step_size"])
        schedule.step()
    saved = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
    saved["schedule"] = schedule.state_dict()
    return multipliers, alignments, etas, saved


def test_holding_while_warming_leaves_the_warmups_alignments_out_of_the_rule():
    multipliers, alignments, etas, _ = warmed_up(hold=True)
    rising = [False] + [b > a for a, b in zip(multipliers, multipliers[1:])]
    assert sum(rising) == 9  # steps 1-9 judge a step taken below the peak (reached at step 9)
    assert all(eta == 1e-4 for eta, r in zip(etas, rising) if r)
    used = [a for a, r in zip(alignments, rising) if a is not None and not r]
    expected = reference_step_sizes(used, 1e-4, 1.5, (0.5, 0.8, 0.9), False)
    assert etas[10:] == pytest.approx(expected, rel=1e-9)
    assert len(set(etas[10:])) > 5  # after the warmup the rule acts
    # without the option the warmup's "too short" alignments move η from step 1 on
    _, free_alignments, free_etas, _ = warmed_up(hold=False)
    every = [a for a in free_alignments if a is not None]
    assert free_etas[1:] == pytest.approx(
        reference_step_sizes(every, 1e-4, 1.5, (0.5, 0.8, 0.9), False), rel=1e-9
    )
    assert max(free_etas[:10]) > 1e-4 * 1.5


def test_with_the_burn_in_too_growth_waits_for_that_many_alignments_after_the_warmup():
    multipliers, alignments, etas, _ = warmed_up(hold=True, burn_in=True)
    rising = [False] + [b > a for a, b in zip(multipliers, multipliers[1:])]
    used = [a for a, r in zip(alignments, rising) if a is not None and not r]
    length = burn_in_length(0.8)  # 14 alignments, counted from the first one averaged
    expected = reference_step_sizes(used, 1e-4, 1.5, (0.5, 0.8, 0.9), False, burn_in=length)
    assert etas[:10] == [1e-4] * 10 and etas[10:] == pytest.approx(expected, rel=1e-9)
    assert max(etas[: 10 + length - 1]) <= 1e-4  # held, then not grown, for 9 + 13 steps
    _, _, held_only, _ = warmed_up(hold=True)
    assert max(held_only[: 10 + length - 1]) > 1e-4 * 1.5  # the hold alone lets it grow there
    assert etas != held_only


def test_holding_while_warming_resumes_exactly_mid_warmup():
    _, _, etas, _ = warmed_up(hold=True)
    _, _, _, saved = warmed_up(hold=True, steps=6)
    _, _, resumed, _ = warmed_up(hold=True, state=saved, start=6)
    assert resumed == etas[6:]
