"""The papers' rule pieces lsframe offers as options (issue 18, item 3).

ALSALS's finite-difference slope (``slope``, ``probe``) and the step-size floor after failed
searches (``min_step_size``, every line search); PLASLS's part merging (``merge_below``) has its
own rule tests in ``test_plasls_merging``. Each option also goes through the family's table tests
of ``test_optim`` (exact resume, NaN safety, the rule recomputed from fresh losses) by building
the optimizers with the option set.
"""

from __future__ import annotations

import copy
import math

import pytest
import test_optim as table
import test_optim_inputs as inputs_table
import torch
from optim_problem import Logistic, make_closure, run, snapshot

from lsframe import optim
from lsframe.optim import ALSALS, _linesearch

# the line searches that run trial searches (a step-size tracker has none to fail)
NAMES = [name for name in optim.line_searches() if optim.info(name).forward_trials]


def groups_for(name: str, model: Logistic, **options) -> list[dict]:
    """``test_optim.make``'s groups, each carrying ``options`` (any line search takes them)."""
    if optim.info(name).param_grouping == "parts":
        return [
            {"params": [model.linear.weight], "part": "w", **options},
            {"params": [model.linear.bias], "part": "b", **options},
        ]
    return [{"params": list(model.parameters()), **options}]


@pytest.fixture
def searches(monkeypatch):
    """Every search's first step size and the forwards made inside searches (not probes)."""
    record = {"starts": [], "trials": 0}
    original = _linesearch.backtrack

    def counting(forward, move_to, step_size, *args, **kwargs):
        record["starts"].append(step_size)

        def counted():
            record["trials"] += 1
            return forward()

        return original(counted, move_to, step_size, *args, **kwargs)

    monkeypatch.setattr(_linesearch, "backtrack", counting)
    return record


# ---------------------------------------------------------------- the table, with options
VARIANTS = [
    ("plasls", {"merge_below": 1e3}),  # above every step size: the two parts merge at once
    ("alsals", {"slope": "finite_difference"}),
    *((name, {"min_step_size": 1e-4}) for name in NAMES),
]
IDS = [f"{name}-{next(iter(options))}" for name, options in VARIANTS]


@pytest.fixture
def with_options(monkeypatch):
    def use(options: dict) -> None:
        def make(name, model, **kwargs):
            return optim.create(name, groups_for(name, model, **options), **kwargs)

        monkeypatch.setattr(table, "make", make)
        monkeypatch.setattr(inputs_table, "make", make)

    return use


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_options_resume_exactly_from_a_state_dict(name, options, with_options):
    with_options(options)
    table.test_state_dict_round_trip_resumes_the_exact_trajectory(name)


@pytest.mark.parametrize("name, options", VARIANTS, ids=IDS)
def test_options_keep_nan_trials_and_gradients_out_of_the_parameters(name, options, with_options):
    with_options(options)
    inputs_table.test_nan_trial_losses_and_nan_gradients_never_reach_the_parameters(name)


@pytest.mark.parametrize(
    "name, options",
    [v for v in VARIANTS if v[1] != {"slope": "finite_difference"}],  # FD: its own test below
    ids=[i for i, v in zip(IDS, VARIANTS) if v[1] != {"slope": "finite_difference"}],
)
def test_options_accept_only_steps_the_rule_recomputed_from_fresh_losses_accepts(
    name, options, with_options
):
    with_options(options)
    table.test_every_accepted_step_satisfies_the_rule_recomputed_from_fresh_losses(name)


def test_the_merge_variant_of_the_table_really_merges():
    model = Logistic()
    opt = optim.create("plasls", groups_for("plasls", model, merge_below=1e3))
    run(model, opt, 1)
    assert len(opt.parts()) == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_without_the_new_options_loads_with_their_defaults_and_resumes(name):
    model = Logistic()
    opt = table.make(name, model)
    run(model, opt, 4)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key in ("min_step_size", "merge_below", "slope", "probe"):
            group.pop(key, None)
    run(model, opt, 4, start=4)
    resumed = Logistic()
    resumed.load_state_dict(saved_model)
    opt2 = table.make(name, resumed)
    opt2.load_state_dict(saved)
    assert all(g["min_step_size"] == 0.0 for g in opt2.param_groups)
    run(resumed, opt2, 4, start=4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    assert opt.state["line_search"] == opt2.state["line_search"]


# --------------------------------------------------------- ALSALS finite-difference slope
def quadratic(seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    target = torch.randn(5, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    return w, lambda: 0.5 * (a * (w - target) ** 2).sum(), a


def simple_closure(opt, f):
    def closure(backward: bool = True):
        with torch.set_grad_enabled(backward):
            loss = f()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss.detach()

    return closure


def first_slope(opt) -> float:
    """``G`` of the first step, from ``Ḡ = (1 − β)·G`` (the average starts at 0)."""
    return opt.state["line_search"]["smoothing"]["joint"]["slope"] / (1 - opt.defaults["beta"])


@pytest.mark.parametrize("probe", [5e-9, 1e-3])
@pytest.mark.parametrize("seed", [0, 1])
def test_finite_difference_slope_matches_the_exact_inner_product_on_a_quadratic(seed, probe):
    w, f, a = quadratic(seed)
    w_exact, f_exact, _ = quadratic(seed)
    fd = ALSALS([w], slope="finite_difference", probe=probe)
    exact = ALSALS([w_exact])
    loss = float(f())
    fd.step(simple_closure(fd, f))
    exact.step(simple_closure(exact, f_exact))
    grad = w_exact.grad  # the same gradient at the same x
    d = grad / (grad.abs() + exact.defaults["eps"])  # Adam's first update: m̂ = g, v̂ = g²
    curvature = float((a * d * d).sum())
    exact_slope = float((grad * d).sum())
    # a float64 model keeps float64 through the slope's reduction
    assert first_slope(exact) == pytest.approx(exact_slope, rel=1e-12)
    # on a quadratic (f(x) − f(x − h·d))/h = ⟨g, d⟩ − (h/2)·dᵀAd exactly; the rest is rounding
    rounding = 16 * torch.finfo(torch.float64).eps * loss / probe  # ~2n·ε·f/h, n = 5
    assert abs(first_slope(fd) - (exact_slope - probe / 2 * curvature)) <= rounding
    assert abs(first_slope(fd) - exact_slope) <= probe / 2 * curvature + rounding


@pytest.mark.parametrize("slope", ["exact", "finite_difference"])
def test_the_finite_difference_costs_exactly_one_forward_per_search(slope, searches):
    model = Logistic()
    opt = ALSALS(model.parameters(), slope=slope)
    run(model, opt, 20)
    state = opt.state["line_search"]
    extra = state["forwards"] - searches["trials"]
    assert state["searches"] == 20
    assert extra == (state["searches"] if slope == "finite_difference" else 0)


def test_a_non_finite_probe_loss_falls_back_to_the_exact_slope():
    w, f, _ = quadratic(3)
    w_exact, f_exact, _ = quadratic(3)
    fd = ALSALS([w], slope="finite_difference")
    exact = ALSALS([w_exact])
    calls = {"n": 0}

    def forward():
        calls["n"] += 1
        return torch.tensor(math.nan) if calls["n"] == 1 else f().detach()

    fd.step(simple_closure(fd, f), forward=forward)
    exact.step(simple_closure(exact, f_exact))
    assert first_slope(fd) == first_slope(exact)
    assert torch.equal(w, w_exact)


def test_finite_difference_steps_satisfy_the_smoothed_rule_recomputed_from_fresh_losses():
    gen = torch.Generator().manual_seed(4)
    x_data = torch.randn(128, 6, generator=gen, dtype=torch.float64)
    y_data = x_data @ torch.randn(6, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))

    def loss_at(x, index):
        return float(0.5 * ((x_data[index] @ x - y_data[index]) ** 2).mean())

    opt = ALSALS([w], slope="finite_difference", probe=1e-6)
    beta, c, h = opt.defaults["beta"], opt.defaults["c"], opt.defaults["probe"]
    beta1, beta2 = opt.defaults["betas"]
    checked = 0
    for step in range(30):
        index = torch.arange(step * 32 % 128, step * 32 % 128 + 32)
        x0 = w.detach().clone()
        before = copy.deepcopy(opt.state["line_search"])
        batch_loss = lambda index=index: 0.5 * ((x_data[index] @ w - y_data[index]) ** 2).mean()  # noqa: E731
        opt.step(simple_closure(opt, batch_loss))
        state = opt.state["line_search"]
        if state["failed_searches"] > before["failed_searches"]:
            continue
        t, moments = state["moment_step"], opt.state[w]
        m_hat = moments["exp_avg"] / (1 - beta1**t)
        v_hat = moments["exp_avg_sq"] / (1 - beta2**t)
        d = m_hat / (v_hat.sqrt() + opt.defaults["eps"])
        f0 = loss_at(x0, index)
        probe_slope = (f0 - loss_at(x0 - h * d, index)) / h
        averages, previous = state["smoothing"]["joint"], before.get("smoothing", {})
        previous = previous.get("joint", {"slope": 0.0, "decrease": 0.0})
        assert averages["slope"] == pytest.approx(
            beta * previous["slope"] + (1 - beta) * probe_slope, rel=1e-6, abs=1e-12
        )
        eta = opt.param_groups[0]["step_size"]
        decrease = f0 - loss_at(x0 - eta * d, index)
        c_eff = c if averages["slope"] > 0 else 1 / c
        assert beta * previous["decrease"] + (1 - beta) * decrease >= (
            c_eff * eta * averages["slope"] - 1e-10
        )
        torch.testing.assert_close(w.detach(), x0 - eta * d)
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------ the step-size floor
FLOOR = 1e-3

# where the next search starts after a failed one, from each optimizer's own rule
NEXT_START = {
    "sgdsls": lambda g: g["step_size"] * g["gamma"] ** (1 / g["n_batches_per_epoch"]),
    "adamsls": lambda g: g["step_size"] * g["gamma"] ** (1 / g["n_batches_per_epoch"]),
    "plasls": lambda g: g["step_size"] * g["gamma"] ** (1 / g["n_batches_per_epoch"]),
    "alsals": lambda g: g["step_size"] * g["growth"],
    "salsa": lambda g: g["step_size"] * g["growth"],
}


def test_every_line_search_states_where_it_restarts_after_a_floored_failure():
    assert set(NEXT_START) == set(NAMES)


def failing_step(name: str, **options):
    model = Logistic()
    opt = optim.create(name, groups_for(name, model, max_backtracks=3, **options), lr=1e-6)
    start = snapshot(model)
    opt.step(make_closure(model, opt), forward=lambda: torch.tensor(math.inf))
    assert opt.state["line_search"]["failed_searches"] == 1
    eps = 4 * torch.finfo(torch.float32).eps
    for p, x in zip(model.parameters(), start):
        torch.testing.assert_close(p.detach(), x, rtol=0, atol=eps)  # a failure does not step
    return model, opt


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_search_leaves_the_step_size_at_the_floor(name, searches):
    _, unfloored = failing_step(name)
    assert all(g["step_size"] < FLOOR for g in unfloored.param_groups)  # the rule alone
    model, opt = failing_step(name, min_step_size=FLOOR)
    assert [g["step_size"] for g in opt.param_groups] == [FLOOR] * len(opt.param_groups)
    assert all(g["lr"] == FLOOR * g["lr_multiplier"] for g in opt.param_groups)
    if name == "salsa":
        assert opt.state["line_search"]["searched_step_size"] == FLOOR
    expected = NEXT_START[name](opt.param_groups[0])  # the floor, then the optimizer's rule
    searches["starts"].clear()
    run(model, opt, 1)
    assert searches["starts"][0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_the_floor_leaves_accepted_step_sizes_alone(name):
    model = Logistic()
    opt = optim.create(name, groups_for(name, model, min_step_size=50.0))
    for step in range(6):
        before = opt.state["line_search"]["failed_searches"]
        run(model, opt, 1, start=step)
        assert opt.state["line_search"]["failed_searches"] == before
        assert all(g["step_size"] < 50.0 for g in opt.param_groups)


@pytest.mark.parametrize("name", NAMES)
def test_a_negative_floor_in_a_group_is_named(name):
    with pytest.raises(ValueError, match="min_step_size"):
        optim.create(name, groups_for(name, Logistic(), min_step_size=-1.0))
