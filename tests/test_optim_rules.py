"""Focused tests of each line-search rule: PLASLS's parts, ALSALS's Armijo term, SaLSA's
amortisation and parity with the authors' package, trial moves, Goldstein."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from optim_problem import (
    SEARCHES,
    Logistic,
    X,
    Y,
    loss_at,
    make,
    make_closure,
    run,
    snapshot,
)

from lsframe import optim
from lsframe.optim import (
    ALSALS,
    PLASLS,
    SGDSLS,
    SaLSA,
)


def test_plasls_searches_parts_in_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    parts = [{"params": list(layer.parameters()), "part": f"p{i}"} for i, layer in enumerate(model)]
    opt = PLASLS(parts)
    x, y = torch.randn(16, 4), torch.randn(16)
    moved_per_step = []
    for _ in range(12):
        start = [p.detach().clone() for p in model.parameters()]
        moved: set[int] = set()

        def closure(backward: bool = True, start=start, moved=moved):
            with torch.set_grad_enabled(backward):
                loss = F.mse_loss(model(x).squeeze(-1), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            now = list(model.parameters())
            for i, group in enumerate(opt.param_groups):
                idx = [
                    j
                    for j, p in enumerate(model.parameters())
                    if any(p is q for q in group["params"])
                ]
                if any(not torch.equal(now[j], start[j]) for j in idx):
                    moved.add(i)
            return loss.detach()

        opt.step(closure)
        moved_per_step.append(moved)
    assert moved_per_step[:6] == [{0, 1, 2}] * 6
    assert moved_per_step[6:] == [{t % 3} for t in range(6, 12)]


def test_alsals_armijo_term_is_the_exact_inner_product_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    target = torch.tensor([0.5, 0.25])
    scales = torch.tensor([3.0, 0.1])
    opt = ALSALS([w])
    grads = []

    def closure(backward: bool = True):
        with torch.set_grad_enabled(backward):
            loss = (scales * (w - target) ** 2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
            grads.append(w.grad.clone())
        return loss.detach()

    opt.step(closure)
    opt.step(closure)
    g1, g2 = grads
    m = 0.1 * 0.9 * g1 + 0.1 * g2
    v = 0.001 * 0.999 * g1**2 + 0.001 * g2**2
    d = (m / (1 - 0.9**2)) / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
    g_term_2 = float((g2 * d).sum())
    g_term_1 = float((g1 * (g1 / (g1.abs() + 1e-8))).sum())
    expected = 0.99 * (0.01 * g_term_1) + 0.01 * g_term_2
    assert opt.state["line_search"]["smoothing"]["joint"]["slope"] == pytest.approx(
        expected, rel=1e-6
    )


def test_salsa_searches_every_step_at_first_then_at_most_every_max_gap_steps():
    model = Logistic()
    opt = SaLSA(model.parameters())
    searched = []
    for step in range(400):
        before = opt.state["line_search"]["searches"]
        gap = opt.search_gap()
        since = opt.state["line_search"]["steps_since_search"]
        run(model, opt, 1, start=step)
        did = opt.state["line_search"]["searches"] > before
        searched.append(did)
        if step + 1 < 10:
            assert did
        else:
            assert did == (since + 1 >= gap)
    gaps = [
        j - i
        for i, j in zip(
            [k for k, s in enumerate(searched) if s][:-1],
            [k for k, s in enumerate(searched) if s][1:],
        )
    ]
    assert max(gaps) <= 10
    assert sum(searched[-100:]) <= 25  # amortised: the rule above holds step by step
    m2 = Logistic()
    always = SaLSA(m2.parameters(), amortize=False)
    run(m2, always, 30)
    assert always.state["line_search"]["searches"] == 30


def test_salsa_follows_the_authors_package_step_sizes():
    salsa_package = pytest.importorskip(
        "salsa.SaLSA", reason="salsa-optimizer (dev dependency) is not installed"
    )
    torch.manual_seed(0)
    ours_model, ref_model = Logistic(), Logistic()
    ours = optim.create("salsa", ours_model.parameters(), preset="package")
    assert ours.defaults["bias_correction_offset"] == 1  # the package's correction, one ahead
    ref = salsa_package.SaLSA(list(ref_model.parameters()))
    ours_steps, ref_steps = [], []
    for step in range(150):
        index = torch.arange(step * 32 % 256, step * 32 % 256 + 32)
        ours.step(make_closure(ours_model, ours, index))

        def ref_closure(backwards: bool = False, index=index):
            with torch.set_grad_enabled(backwards):
                loss = ref_model.loss(index)
            if backwards:
                ref.zero_grad()
                loss.backward()
            return loss.detach()

        ref.step(ref_closure)
        ours_steps.append(ours.param_groups[0]["step_size"])
        ref_steps.append(ref.step_size * (1 if ref.tslls == 0 else ref.growth_factor))
    assert ours_steps == pytest.approx(ref_steps, rel=1e-4)
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_trial_moves_return_the_parameters_within_rounding_after_a_failed_search():
    model = Logistic()
    opt = SGDSLS(model.parameters(), lr=10.0, max_backtracks=3)
    start = snapshot(model)
    opt.step(make_closure(model, opt), forward=lambda: torch.tensor(math.inf))
    assert opt.state["line_search"]["failed_searches"] == 1
    for a, b in zip(model.parameters(), start):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=4 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("trial_loss", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", SEARCHES)
def test_a_search_whose_trials_are_all_non_finite_fails_and_leaves_x_with_weight_decay_too(
    name, trial_loss
):
    # a −inf trial was accepted (its decrease is +inf); a failed search still decayed the
    # weights by the step size no trial accepted
    model = Logistic()
    with torch.no_grad():
        model.linear.weight.copy_(torch.linspace(-1.0, 1.0, 10))
        model.linear.bias.fill_(0.5)
    opt = make(name, model, weight_decay=0.1, max_backtracks=3)
    start = snapshot(model)
    opt.step(make_closure(model, opt), forward=lambda: torch.tensor(trial_loss))
    assert opt.last_step["failed"] and opt.last_step["trials"] == 3
    for a, b in zip(model.parameters(), start):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-5)


class BFloat16Logistic(Logistic):
    def loss(self, index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        logits = self.linear(X[index].to(torch.bfloat16)).squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(logits, Y[index])


def bfloat16_logistic() -> Logistic:
    model = BFloat16Logistic()
    with torch.no_grad():
        model.linear.weight.copy_(torch.linspace(-1.0, 1.0, 10))
        model.linear.bias.fill_(0.3)
    return model.to(torch.bfloat16)


@pytest.mark.parametrize("name", SEARCHES)
def test_a_failed_search_leaves_bfloat16_parameters_exactly_at_x(name):
    # trials were undone by opposite moves: two bf16 ulps on half the entries after 5 trials
    model = bfloat16_logistic()
    opt = make(name, model, lr=1.0, max_backtracks=5)
    start = snapshot(model)
    opt.step(make_closure(model, opt), forward=lambda: torch.tensor(math.inf))
    assert opt.last_step["failed"]
    assert all(torch.equal(a.detach(), b) for a, b in zip(model.parameters(), start))


def test_an_exception_in_a_bfloat16_trial_releases_the_copy_of_x():
    model = bfloat16_logistic()
    opt = SGDSLS(model.parameters(), lr=1.0)
    start = snapshot(model)

    def forward():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        opt.step(make_closure(model, opt), forward=forward)
    assert opt._start is None  # it stayed allocated until the next step
    assert all(torch.equal(a.detach(), b) for a, b in zip(model.parameters(), start))


def test_an_accepted_bfloat16_trial_after_backtracks_is_x_minus_the_step_rounded_once():
    model = bfloat16_logistic()
    opt = SGDSLS(model.parameters(), lr=1.0)
    start = snapshot(model)
    trials = []

    def forward():  # the first three trials are rejected
        trials.append(1)
        return torch.tensor(math.inf if len(trials) <= 3 else 0.0)

    opt.step(make_closure(model, opt), forward=forward)
    assert opt.last_step["accepted"] and opt.last_step["trials"] == 4
    eta = opt.param_groups[0]["step_size"]
    for p, x in zip(model.parameters(), start):
        assert torch.equal(p.detach(), x.add(p.grad, alpha=-eta))


@pytest.mark.parametrize("name", ["sgdsls", "salsa", "alsals", "adamsls"])
def test_an_exception_during_a_trial_leaves_the_parameters_at_the_step_start(name):
    model = Logistic()
    opt = optim.create(name, model.parameters(), lr=10.0)
    start = snapshot(model)
    moved = []

    def forward():  # the second trial fails, as a batch or Ctrl-C would
        moved.append(max(float((a - b).abs().max()) for a, b in zip(model.parameters(), start)))
        if len(moved) == 2:
            raise KeyboardInterrupt
        return torch.tensor(math.inf)

    with pytest.raises(KeyboardInterrupt):
        opt.step(make_closure(model, opt), forward=forward)
    assert len(moved) == 2 and min(moved) > 1e-2  # both trials were far from the start
    for a, b in zip(model.parameters(), start):  # back within rounding of the trial moves
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-5)


def test_goldstein_accepted_steps_satisfy_both_conditions():
    model = Logistic()
    opt = SGDSLS(model.parameters(), line_search_fn="goldstein", c=0.2)
    checked = 0
    for _ in range(30):
        x0 = snapshot(model)
        before = dict(opt.state["line_search"])
        opt.step(make_closure(model, opt))
        state = opt.state["line_search"]
        if state["failed_searches"] > before["failed_searches"]:
            continue
        grads = [p.grad for p in model.parameters()]
        eta = opt.param_groups[0]["step_size"]
        slope = sum(float(g.square().sum()) for g in grads)
        decrease = loss_at(model, x0) - loss_at(model, [x - eta * g for x, g in zip(x0, grads)])
        assert decrease >= 0.2 * eta * slope - 1e-7
        assert decrease <= 0.8 * eta * slope + 1e-7 or eta == opt.defaults["eta_max"]
        checked += 1
    assert checked >= 20
