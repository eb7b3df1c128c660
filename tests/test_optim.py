"""The line-search family: a table over the registry (each rule's focused tests:
test_optim_rules.py; its hyperparameters: test_optim_hyperparameters.py)."""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lsframe import optim
from lsframe.optim import (
    ALSALS,
    PLASLS,
    SGDSLS,
    AdamSLS,
    SaLSA,
    SlopeTrackingAdam,
    StepSizeSchedule,
)

# ---------------------------------------------------------------------------- the problem
# L2-regularised logistic regression on a fixed synthetic dataset: strongly convex, so the
# optimum is unique and known to high precision (maths only; real data is for benchmarks).
GEN = torch.Generator().manual_seed(0)
X = torch.randn(256, 10, generator=GEN)
Y = (X @ torch.randn(10, generator=GEN) + 0.5 * torch.randn(256, generator=GEN) > 0).float()
L2 = 1e-2


class Logistic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def loss(self, index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        logits = self.linear(X[index]).squeeze(-1)
        penalty = 0.5 * L2 * self.linear.weight.square().sum()
        return F.binary_cross_entropy_with_logits(logits, Y[index]) + penalty


def make_closure(model: Logistic, opt: torch.optim.Optimizer, index=slice(None)):
    def closure(backward: bool = True) -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return model.loss(index)
        opt.zero_grad()
        loss = model.loss(index)
        loss.backward()
        return loss.detach()

    return closure


def optimum() -> float:
    model = Logistic()
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    opt.step(closure)
    return float(model.loss())


F_STAR = optimum()


def make(name: str, model: torch.nn.Module, **kwargs):
    if optim.info(name).param_grouping == "parts":
        groups = [
            {"params": [model.linear.weight], "part": "w"},
            {"params": [model.linear.bias], "part": "b"},
        ]
        return optim.create(name, groups, **kwargs)
    return optim.create(name, model.parameters(), **kwargs)


NAMES = optim.line_searches()
SEARCHES = [name for name in NAMES if optim.info(name).forward_trials]  # trials move x


# ------------------------------------------------------------------ acceptance conditions
def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def loss_at(model, params, index=slice(None)):
    trial = Logistic()
    with torch.no_grad():
        for p, value in zip(trial.parameters(), params):
            p.copy_(value)
        return float(trial.loss(index))


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


# step-size trackers run no trial search: their rule is checked on every step
TRACKERS = {SlopeTrackingAdam}


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


def run(model, opt, steps, start=0):
    for step in range(start, start + steps):
        index = torch.arange(step * 32 % 256, step * 32 % 256 + 32)
        opt.step(make_closure(model, opt, index))


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


@pytest.mark.parametrize("name", NAMES)
def test_nan_trial_losses_and_nan_gradients_never_reach_the_parameters(name):
    model = Logistic()
    opt = make(name, model)
    calls = {"n": 0}
    base = make_closure(model, opt)

    def forward():
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] % 2 == 1 else base(backward=False)

    for _ in range(20):
        opt.step(base, forward=forward)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    before = snapshot(model)

    def nan_closure(backward: bool = True):
        loss = base(backward)
        model.linear.weight.grad.fill_(float("nan"))
        return loss

    opt.step(nan_closure, forward=forward)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.state["line_search"]["rejected_steps"] == 1


@pytest.mark.parametrize("name", SEARCHES)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_slope_moves_nothing_and_the_search_goes_on_after_it(name, bad):
    # finite gradients, a direction with an infinite entry (an underflowed Adam denominator):
    # the failed search moved back from x - inf and left NaN in the parameters; then, with the
    # slope's average made infinite, every later step was rejected
    from lsframe.optim import rules

    model = Logistic()
    opt = make(name, model, smooth=True) if name in ("adamsls", "plasls") else make(name, model)
    run(model, opt, 3)
    before = snapshot(model)
    inner_product = rules.inner_product
    try:
        rules.inner_product = lambda *args: torch.tensor(bad)
        opt.step(make_closure(model, opt))
    finally:
        rules.inner_product = inner_product
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.last_step["rejected"] and not opt.last_step["failed"]
    run(model, opt, 3, start=4)
    assert not opt.last_step["rejected"] and opt.state["line_search"]["rejected_steps"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", [n for n in NAMES if "eps" in make(n, Logistic()).defaults])
def test_an_eps_that_rounds_to_zero_in_the_parameters_dtype_is_refused(name):
    # a tracker too: its Adam direction is infinite where v underflows, as torch Adam's
    model = Logistic().half()
    with pytest.raises(ValueError, match=r"eps=1e-08 rounds to 0 in torch.float16"):
        make(name, model, eps=1e-8)
    make(name, model, eps=1e-4)  # representable


@pytest.mark.parametrize("name", [*NAMES, "lamb", "alto"])
def test_complex_parameters_are_refused_where_the_kernels_would_square_them(name):
    z = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="does not support complex parameters"):
        optim.create(name, [{"params": [z], "part": "z"}])


@pytest.mark.parametrize("name", NAMES)
def test_a_closure_returning_a_non_scalar_is_refused_before_the_step_counts(name):
    model = Logistic()
    opt = make(name, model)
    closure = make_closure(model, opt)

    def per_example(backward: bool = True) -> torch.Tensor:
        return closure(backward).expand(4)

    with pytest.raises(TypeError, match=r"got a tensor of shape \(4,\) \(reduce it"):
        opt.step(per_example)
    assert opt.state["line_search"]["step"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_no_step_keeps_the_gradients_alive_once_they_are_zeroed(name):
    # a reference kept past the step would hold a whole gradient through the next backward
    model = Logistic()
    opt = make(name, model)
    base = make_closure(model, opt)

    def nan_closure(backward: bool = True):
        loss = base(backward)
        if backward:
            model.linear.weight.grad.fill_(float("nan"))
        return loss

    for closure in (base, base, nan_closure, base):
        opt.step(closure)
        grads = [weakref.ref(p.grad) for p in model.parameters()]
        opt.zero_grad(set_to_none=True)
        assert all(ref() is None for ref in grads), closure


@pytest.mark.parametrize("name", NAMES)
def test_groups_carry_lr_equal_to_the_step_size(name):
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 12)
    for group in opt.param_groups:
        assert group["lr"] == group["step_size"] * group["lr_multiplier"]
        assert group["lr"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_a_scheduler_writing_lr_directly_is_an_error_and_the_multiplier_works(name):
    model = Logistic()
    opt = make(name, model)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5).step()
    with pytest.raises(RuntimeError, match="lr_multiplier.*hf.LineSearchTrainer does"):
        run(model, opt, 1)
    model = Logistic()
    opt = make(name, model)
    schedule = StepSizeSchedule(opt, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    run(model, opt, 1)
    schedule.step()
    assert [g["lr_multiplier"] for g in opt.param_groups] == [0.5] * len(opt.param_groups)
    run(model, opt, 1)


def test_a_timm_scheduler_drives_the_multiplier_per_update_and_per_epoch():
    # step_update moved only the shadow (the multiplier stayed at the warmup's first value), and
    # step(epoch) was a TypeError
    from timm.scheduler import CosineLRScheduler

    model = Logistic()
    opt = make("salsa", model)
    cosine = partial(CosineLRScheduler, t_initial=10, warmup_t=3, warmup_lr_init=0.1)
    schedule = StepSizeSchedule(opt, partial(cosine, t_in_epochs=False))
    seen = []
    for update in range(1, 9):
        run(model, opt, 1)
        schedule.step_update(num_updates=update)
        expected = schedule.scheduler._get_lr(update)[0]  # timm's factor of the base lr 1
        seen.append(opt.param_groups[0]["lr_multiplier"])
        assert seen[-1] == pytest.approx(expected)
    assert seen[0] < seen[2] and seen[-1] < 0.2  # the warmup and the decay reached the optimizer
    per_epoch = StepSizeSchedule(make("salsa", model), lambda o: CosineLRScheduler(o, 4))
    per_epoch.step(2)
    assert per_epoch.optimizer.param_groups[0]["lr_multiplier"] == pytest.approx(0.5)


def test_a_schedulers_momentum_cycle_is_warned_about():
    opt = make("adamsls", Logistic())
    one_cycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0, total_steps=10)
    with pytest.warns(UserWarning, match="not its momentum cycle"):
        StepSizeSchedule(opt, one_cycle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StepSizeSchedule(opt, partial(one_cycle, cycle_momentum=False))


BAD = [
    (name, kwargs, key) for name in optim.names() for kwargs, key in optim.info(name).invalid_args
]


@pytest.mark.parametrize("name, kwargs, key", BAD, ids=[f"{n}-{k}" for n, _, k in BAD])
def test_bad_hyperparameters_raise_value_error_naming_them(name, kwargs, key):
    with pytest.raises(ValueError, match=key):
        make(name, Logistic(), **kwargs)


def test_registry_creates_by_name_and_lists_valid_names_for_unknown_ones():
    assert isinstance(optim.create("SaLSA", Logistic().parameters()), SaLSA)
    assert set(optim.line_searches()) <= set(optim.names())
    with pytest.raises(ValueError, match="salsa") as info:
        optim.create("nadamsls", Logistic().parameters())
    assert "nadamsls" in str(info.value)


def test_lsframe_optim_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, lsframe.optim; print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_tracker_s_closure_may_return_nothing_as_torch_s_closures_may():
    # the check of a closure's loss must not refuse a closure that back-propagates and returns
    # None, which torch's optimizers (and SlopeTrackingAdam, which runs no trial) accept
    model = Logistic()
    opt = SlopeTrackingAdam(model.parameters())
    before = snapshot(model)

    def closure() -> None:
        opt.zero_grad()
        model.loss().backward()

    assert opt.step(closure) is None
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", SEARCHES)
def test_a_search_whose_closure_returns_nothing_is_refused_before_anything_moves(name):
    # it died in the first trial's verdict with a TypeError, parameters at the trial point
    from lsframe.optim.closure import ClosureContractError

    model = Logistic()
    opt = make(name, model)
    before = snapshot(model)

    def closure(backward: bool = True) -> None:
        opt.zero_grad()
        loss = model.loss()
        if backward:
            loss.backward()

    with pytest.raises(ClosureContractError, match="must return the mean loss"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.state["line_search"]["step"] == 0


@pytest.mark.parametrize("name", ["alsals", "adamsls"])  # SaLSA may amortise that step away
def test_a_non_finite_average_of_the_slopes_is_a_rejected_step_too(name, monkeypatch):
    from lsframe.optim.rules import SmoothedArmijo

    model = Logistic()
    opt = make(name, model, smooth=True) if name == "adamsls" else make(name, model)
    run(model, opt, 3)
    before = snapshot(model)
    monkeypatch.setattr(SmoothedArmijo, "update_slope", lambda self, state, key, slope: math.inf)
    opt.step(make_closure(model, opt))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.last_step["rejected"] and not opt.last_step["failed"]
