"""Issue 18's held-out pilot (``benchmarks.heldout``): the step sizes halve on a significant rise
of the kept-back examples' loss, never on a flat or noisy one, and the factor reaches the
optimizer after the scheduler rewrote its step sizes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.heldout import CHECKS, HELDOUT, HeldOutHalving, keep_back, split_spec
from lsframe.data.examples import TextExamples


def halving() -> HeldOutHalving:
    rule = HeldOutHalving.__new__(HeldOutHalving)  # the rule alone, without a model or data
    rule.steps, rule.factor, rule.reference, rule.checks = 0, 1.0, None, []
    return rule


def test_a_flat_noisy_held_out_loss_seldom_halves():
    """The reference is the lowest check so far, which noise pulls down: the threshold must
    leave room for that (at 2 standard errors, 47 % of these runs would halve)."""
    gen = torch.Generator().manual_seed(0)
    halved = 0
    for _ in range(200):
        rule = halving()
        base = torch.rand(64, generator=gen) + 0.2
        for _ in range(CHECKS):
            rule.check(base + 0.02 * torch.randn(64, generator=gen))
        halved += rule.factor < 1
    assert halved / 200 <= 0.1


def test_a_significant_rise_halves_once_and_becomes_the_new_reference():
    rule = halving()
    base = torch.linspace(0.3, 0.9, 64)
    wobble = 0.05 * torch.sin(torch.arange(64.0))  # examples move by different amounts
    rule.check(base)
    rule.check(base - 0.05)  # a new best: the reference
    rule.check(base + 0.1 + wobble)  # worse than the best, every example: halve
    assert rule.factor == 0.5
    rule.check(base + 0.1)  # no rise against the new reference: hold
    assert rule.factor == 0.5
    rule.check(base + 0.3 + wobble)
    assert rule.factor == 0.25
    assert [c[-1] for c in rule.checks] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_a_rise_of_a_few_examples_is_not_significant():
    rule = halving()
    base = torch.full((64,), 0.5)
    rule.check(base)
    worse = base.clone()
    worse[:4] += 1.0  # mean +0.06, carried by 4 of 64 examples: z ≈ 2
    rule.check(worse)
    assert rule.factor == 1.0


def test_the_factor_scales_the_step_sizes_the_scheduler_just_set():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    run = SimpleNamespace(name="adamw", optimizer=opt, scheduler=sched)
    rule = halving()
    rule.every = 10**9
    rule.factor = 0.25
    for _ in range(3):  # applied afresh after each scheduler step, not compounded
        sched.step()
        rule.after_step(run)
        assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    run.scheduler = None
    with pytest.raises(ValueError, match="needs a schedule"):
        HeldOutHalving(None, None, None, 0, run, 10)


def test_a_non_finite_held_out_loss_halves_and_never_becomes_the_reference():
    rule = halving()
    base = torch.linspace(0.3, 0.9, 64)
    rule.check(base)
    diverged = base.clone()
    diverged[3] = float("nan")
    rule.check(diverged)
    assert rule.factor == 0.5 and torch.equal(rule.reference, base)
    rule.check(base + 0.01 * torch.sin(torch.arange(64.0)))  # finite reference again: no rise
    assert rule.factor == 0.5


def test_the_kept_back_examples_are_the_last_ones_and_are_not_trained_on():
    train = TextExamples([f"s{i}" for i in range(100)], [i % 2 for i in range(100)])
    fit, kept = keep_back(train)
    assert len(kept.labels) == HELDOUT and kept.text[0] == f"s{100 - HELDOUT}"
    assert set(fit.text).isdisjoint(kept.text) and len(fit.text) == 100 - HELDOUT
    assert split_spec("adamw@1e-4^heldout") == ("adamw@1e-4", "heldout")
    assert split_spec("salsa") == ("salsa", "")
    with pytest.raises(ValueError, match="unknown suffix"):
        split_spec("salsa^later")
    with pytest.raises(ValueError, match="keeps back"):
        keep_back(train.head(HELDOUT))


def test_a_pass_factor_scales_the_step_sizes_from_the_second_pass_on_only():
    from torch import nn

    from benchmarks.heldout import PassFactor
    from benchmarks.specs import build

    model = nn.Linear(3, 2)
    run = build("adamw@1e-4", model, total_steps=12)  # 10 % warmup (2 steps), then a cosine
    twin = build("adamw@1e-4", nn.Linear(3, 2), total_steps=12)
    factor = PassFactor(run, 0.5, pass_steps=4)
    for step in range(1, 12):
        for r in (run, twin):
            r.optimizer.step()
            r.scheduler.step()
        factor.after_step(run)
        want = twin.optimizer.param_groups[0]["lr"] * (0.5 if step >= 4 else 1.0)
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12), step
