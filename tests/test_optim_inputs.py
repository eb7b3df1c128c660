"""The line-search family on bad values and inputs: non-finite losses, slopes and gradients,
bad hyperparameters, closures that break the contract, schedulers that write lr, and the
registry."""

from __future__ import annotations

import math
import warnings
import weakref
from functools import partial

import pytest
import torch
from optim_problem import (
    NAMES,
    SEARCHES,
    Logistic,
    make,
    make_closure,
    run,
    snapshot,
)

from lsframe import optim
from lsframe.optim import (
    SaLSA,
    SlopeTrackingAdam,
    StepSizeSchedule,
)


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
    opt.param_groups[-1]["lr"] *= 0.5  # by hand, no scheduler
    with pytest.raises(RuntimeError, match="wrote 'lr' directly.*LineSearchTrainer does"):
        run(model, opt, 1)
    # a constant schedule leaves lr as it was: refused at the first step all the same, before
    # anything moves (a tracker's step size moves only after its warmup: ~30 steps trained)
    model = Logistic()
    opt, before = make(name, model), snapshot(model)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with pytest.raises(RuntimeError, match="'initial_lr': a torch LR scheduler is attached"):
        run(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model)))
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
