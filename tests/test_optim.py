"""The line-search family: a table over the registry plus focused tests of each rule."""

from __future__ import annotations

import copy
import inspect
import math
import weakref

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
    with pytest.raises(RuntimeError, match="lr_multiplier"):
        run(model, opt, 1)
    model = Logistic()
    opt = make(name, model)
    schedule = StepSizeSchedule(opt, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    run(model, opt, 1)
    schedule.step()
    assert [g["lr_multiplier"] for g in opt.param_groups] == [0.5] * len(opt.param_groups)
    run(model, opt, 1)


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
    ours = SaLSA(ours_model.parameters(), bias_correction_offset=1)
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


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_is_in_defaults_and_a_state_dict_lacking_one_is_backfilled(name):
    model = Logistic()
    opt = make(name, model)
    signature = inspect.signature(type(opt).__init__).parameters
    assert set(signature) - {"self", "params"} <= set(opt.defaults)
    run(model, opt, 3)
    saved = copy.deepcopy(opt.state_dict())
    key = "max_change" if type(opt) in TRACKERS else "c"  # a rule constant of each
    for group in saved["param_groups"]:
        del group[key], group["max_backtracks"]
    resumed = make(name, model)
    resumed.load_state_dict(saved)
    assert all(g[key] == opt.defaults[key] for g in resumed.param_groups)
    assert all(g["max_backtracks"] == 100 for g in resumed.param_groups)
    run(model, resumed, 2, start=3)


def test_a_salsa_state_dict_from_before_the_flat_family_resumes():
    model = Logistic()
    opt = SaLSA(model.parameters())
    run(model, opt, 5)
    old = copy.deepcopy(opt.state_dict())
    search = old["state"]["line_search"]
    search["last_step_size"] = search.pop("searched_step_size")
    for group in old["param_groups"]:
        group["betas"] = group["betas"][:2]
    resumed = SaLSA(Logistic().parameters())
    resumed.load_state_dict(old)
    assert resumed.state["line_search"] == opt.state["line_search"]
    assert resumed.param_groups[0]["betas"] == (0.9, 0.999, 0.9)


def test_a_bad_hyperparameter_in_one_group_is_named_at_construction():
    model = Logistic()
    groups = [{"params": [model.linear.weight]}, {"params": [model.linear.bias], "c": 2.0}]
    with pytest.raises(ValueError, match="c must be in"):
        SaLSA(groups)


def test_a_joint_search_refuses_groups_that_disagree_and_plasls_parts_may_differ():
    model = Logistic()
    groups = [{"params": [model.linear.weight]}, {"params": [model.linear.bias], "c": 0.2}]
    opt = AdamSLS(groups)
    with pytest.raises(ValueError, match="different c"):
        run(model, opt, 1)
    model = Logistic()
    parts = [
        {"params": [model.linear.weight], "part": "w", "c": 0.2},
        {"params": [model.linear.bias], "part": "b", "c": 0.3},
    ]
    opt = PLASLS(parts, joint_steps=0)
    run(model, opt, 4)
    assert opt.state["line_search"]["searches"] == 4


def test_an_unregistered_line_search_subclass_gets_a_line_search_record_and_old_register_works():
    class Mine(optim.LineSearchOptimizer):
        def __init__(self, params, lr: float = 1.0) -> None:
            super().__init__(params, {"lr": lr})

    record = optim.info_for(Mine)
    assert record.searches and record.forward_trials and record.reduces_over_parameters
    try:
        assert optim.register("mine", Mine) == optim.info("mine")
        assert optim.info("mine").searches
    finally:
        optim._registry.REGISTRY.pop("mine", None)


def test_salsa_groups_may_keep_adams_own_betas_and_only_beta3_is_joint():
    model = Logistic()
    groups = [
        {"params": [model.linear.weight], "betas": (0.8, 0.99)},
        {"params": [model.linear.bias]},
    ]
    opt = SaLSA(groups)
    assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.99, 0.9), (0.9, 0.999, 0.9)]
    run(model, opt, 3)
    assert opt.state["line_search"]["searches"] == 3
    model = Logistic()
    groups[0] = {"params": [model.linear.weight], "betas": (0.9, 0.999, 0.5)}
    groups[1] = {"params": [model.linear.bias]}
    with pytest.raises(ValueError, match=r"different betas\[2\]"):
        run(model, SaLSA(groups), 1)


@pytest.mark.parametrize(
    "name", sorted(n for n, p in optim._registry.PRESETS.items() if "robust" in p)
)
def test_a_robust_preset_sets_its_arguments_and_paper_keeps_the_class_defaults(name):
    robust = optim.create(name, make_groups(name), preset="robust")
    for key, value in optim.info(name).preset("robust").items():
        assert robust.defaults[key] == value != optim.create(name, make_groups(name)).defaults[key]
    overridden = optim.create(name, make_groups(name), preset="robust", c=0.2)
    assert overridden.defaults["c"] == 0.2  # explicit arguments win over the preset's


def test_an_unknown_preset_is_refused_with_the_known_ones_listed():
    with pytest.raises(ValueError, match="presets: paper, robust"):
        optim.create("adamsls", Logistic().parameters(), preset="fast")
    with pytest.raises(ValueError, match="presets: paper$"):
        optim.create("salsa", Logistic().parameters(), preset="robust")


def make_groups(name):
    model = Logistic()
    if optim.info(name).param_grouping == "parts":
        return [{"params": [p], "part": f"p{i}"} for i, p in enumerate(model.parameters())]
    return model.parameters()


def test_all_finite_finds_nan_and_both_infinities_and_no_overflow_in_any_dtype():
    from lsframe.optim import all_finite

    base = [torch.randn(3, 4), torch.zeros(0), torch.randn(5)]
    assert all_finite(base) and all_finite([]) and all_finite([torch.zeros(0)])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            tensors = [t.to(dtype) for t in base]
            tensors[2][3] = bad
            assert not all_finite(tensors), (bad, dtype)
    # finite extremes stay finite: no sum of squares, no float32 rounding of a float64 maximum
    huge = [torch.tensor([1e300, -1e300], dtype=torch.float64), torch.full((4,), 6e4).half()]
    assert all_finite(huge)
