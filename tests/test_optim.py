"""The line-search family: a table over the registry, each accepted step against its rule
recomputed from fresh losses (each rule's focused tests: test_optim_rules.py; its hyperparameters:
test_optim_hyperparameters.py; bad values and inputs: test_optim_inputs.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_problem import (
    F_STAR,
    NAMES,
    TRACKERS,
    Logistic,
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
    AdamSLS,
    SaLSA,
    SlopeTrackingAdam,
)


def adam_preconditioner(opt, p, t, offset=0):
    beta1, beta2 = opt.param_groups[0]["betas"][:2]  # SaLSA keeps β3 third
    v = opt.state[p]["exp_avg_sq"]
    m = opt.state[p]["exp_avg"]
    bc1, bc2 = 1 - beta1 ** (t + offset), 1 - beta2 ** (t + offset)
    return 1 / ((v / bc2).sqrt() + opt.param_groups[0]["eps"]), m / bc1


# Each rule, recomputed by hand: the direction it searches along, and its acceptance condition
# checked on a fresh evaluation of the loss (``check(opt, state, before, decrease, eta, slope,
# x0, d, model)``), and whether a step's search covers all groups.
def gradient(opt, model, grads, t):
    return grads


def preconditioned_gradient(opt, model, grads, t):
    offset = opt.defaults.get("bias_correction_offset", 0)
    return [
        adam_preconditioner(opt, p, t, offset)[0] * g for p, g in zip(model.parameters(), grads)
    ]


def adam_update(opt, model, grads, t):
    return [
        pre * m_hat for pre, m_hat in (adam_preconditioner(opt, p, t) for p in model.parameters())
    ]


def armijo_holds(opt, state, state_before, decrease, eta, slope, x0, d, model):
    assert decrease >= opt.defaults["c"] * eta * slope - 1e-7, (decrease, eta, slope)


def smoothed_armijo_flipping_c_holds_and_the_trial_is_the_step(
    opt, state, state_before, decrease, eta, slope, x0, d, model
):
    c = opt.defaults["c"]
    avg_slope = state["smoothing"]["joint"]["slope"]
    beta = opt.defaults["beta"]
    assert avg_slope == pytest.approx(
        beta * state_before.get("smoothing", {}).get("joint", {}).get("slope", 0.0)
        + (1 - beta) * slope,
        rel=1e-5,
    )
    prev = state_before.get("smoothing", {}).get("joint", {}).get("decrease", 0.0)
    c_eff = c if avg_slope > 0 else 1 / c
    assert beta * prev + (1 - beta) * decrease >= c_eff * eta * avg_slope - 1e-7
    # the accepted trial point is the step
    for p, x, di in zip(model.parameters(), x0, d):
        torch.testing.assert_close(p.detach(), x - eta * di)


def smoothed_armijo_or_zero_decrease_holds(
    opt, state, state_before, decrease, eta, slope, x0, d, model
):
    c = opt.defaults["c"]
    beta3 = opt.defaults["betas"][2]
    assert state["avg_slope"] == pytest.approx(
        beta3 * state_before["avg_slope"] + (1 - beta3) * slope, rel=1e-5
    )
    ok = decrease == 0 or (
        beta3 * state_before["avg_decrease"] + (1 - beta3) * decrease
        >= c * eta * state["avg_slope"] - 1e-7
    )
    assert ok


def always_joint(opt, step):
    return True


def adams_update_at_the_tracked_step_size(
    opt, state, state_before, decrease, eta, slope, x0, d, model
):
    # no trial: the step is Adam's update at the η the alignment rule set (its rule by hand:
    # tests/test_slope_tracking_adam.py)
    for p, x, di in zip(model.parameters(), x0, d):
        torch.testing.assert_close(p.detach(), x - eta * di)


RULES = {
    SGDSLS: (gradient, armijo_holds, always_joint),
    AdamSLS: (preconditioned_gradient, armijo_holds, always_joint),
    # part-wise searches after the joint phase: see test_plasls_searches_parts_in_order
    PLASLS: (
        preconditioned_gradient,
        armijo_holds,
        lambda opt, step: step < opt.defaults["joint_steps"],
    ),
    ALSALS: (adam_update, smoothed_armijo_flipping_c_holds_and_the_trial_is_the_step, always_joint),
    SaLSA: (preconditioned_gradient, smoothed_armijo_or_zero_decrease_holds, always_joint),
    SlopeTrackingAdam: (adam_update, adams_update_at_the_tracked_step_size, always_joint),
}


def test_every_registered_line_search_has_its_rule_recomputed_here():
    assert {optim.info(name).cls for name in NAMES} == set(RULES)


@pytest.mark.parametrize("name", NAMES)
def test_every_accepted_step_satisfies_the_rule_recomputed_from_fresh_losses(name):
    torch.manual_seed(0)
    model = Logistic()
    opt = make(name, model)
    direction, check, joint = RULES[type(opt)]
    checked = 0
    for step in range(40):
        index = torch.arange(step * 32 % 256, step * 32 % 256 + 32)  # mini-batches
        x0 = snapshot(model)
        state_before = copy.deepcopy(opt.state["line_search"])
        loss0 = loss_at(model, x0, index)
        closure = make_closure(model, opt, index)
        opt.step(closure)
        state = opt.state["line_search"]
        searched = state["searches"] > state_before["searches"] or type(opt) in TRACKERS
        if not searched or state["failed_searches"] > state_before["failed_searches"]:
            continue
        if not joint(opt, step):
            continue
        grads = [p.grad for p in model.parameters()]
        eta = opt.param_groups[0]["step_size"]
        t = state.get("moment_step", 0)
        d = direction(opt, model, grads, t)
        slope = sum(float((g * di).sum()) for g, di in zip(grads, d))
        decrease = loss0 - loss_at(model, [x - eta * di for x, di in zip(x0, d)], index)
        check(opt, state, state_before, decrease, eta, slope, x0, d, model)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", NAMES)
def test_converges_to_the_known_optimum_of_a_convex_problem(name):
    model = Logistic()
    opt = make(name, model)
    closure = make_closure(model, opt)
    for _ in range(300):
        opt.step(closure)
    gap = float(model.loss()) - F_STAR
    assert 0 <= gap + 1e-7 and gap < 2e-3, (name, gap)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_the_exact_trajectory(name):
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 15)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, 15, start=15)
    resumed = Logistic()
    resumed.load_state_dict(saved_model)
    opt2 = make(name, resumed)
    opt2.load_state_dict(saved_opt)
    run(resumed, opt2, 15, start=15)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert opt.state["line_search"] == opt2.state["line_search"]
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
