"""The line searches' hyperparameters: defaults, backfilled state dicts, presets, groups that
disagree, and the finiteness check every step relies on."""

from __future__ import annotations

import copy
import inspect
import re

import pytest
import torch
from optim_problem import (
    NAMES,
    TRACKERS,
    Logistic,
    make,
    run,
)

from lsframe import optim
from lsframe.optim import (
    PLASLS,
    AdamSLS,
    SaLSA,
)


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_is_in_defaults_and_a_state_dict_lacking_one_is_backfilled(name):
    model = Logistic()
    opt = make(name, model)
    signature = inspect.signature(type(opt).__init__).parameters
    assert set(signature) - {"self", "params"} <= set(opt.defaults)
    run(model, opt, 3)
    saved = copy.deepcopy(opt.state_dict())
    key = "max_change" if type(opt) in TRACKERS else "c"  # a rule constant of each
    searches = type(opt) not in TRACKERS
    for group in saved["param_groups"]:
        del group[key]
        if searches:
            del group["max_backtracks"]
    resumed = make(name, model)
    resumed.load_state_dict(saved)
    assert all(g[key] == opt.defaults[key] for g in resumed.param_groups)
    if searches:
        assert all(g["max_backtracks"] == 100 for g in resumed.param_groups)
    run(model, resumed, 2, start=3)


def test_a_step_size_tracker_has_no_backtracking_bound_and_drops_the_one_it_once_saved():
    model = Logistic()
    tracker = optim.SlopeTrackingAdam(model.parameters())
    assert "max_backtracks" not in tracker.defaults
    assert "max_backtracks" in optim.SaLSA(model.parameters()).defaults
    run(model, tracker, 3)
    saved = copy.deepcopy(tracker.state_dict())
    for group in saved["param_groups"]:
        group["max_backtracks"] = 100  # as every tracker saved it before 2026-12-06
    resumed = optim.SlopeTrackingAdam(model.parameters())
    resumed.load_state_dict(saved)
    assert all("max_backtracks" not in g for g in resumed.param_groups)
    assert resumed.param_groups[0]["step_size"] == tracker.param_groups[0]["step_size"]


def test_a_salsa_state_dict_from_before_the_flat_family_resumes():
    model = Logistic()
    opt = SaLSA(model.parameters())
    run(model, opt, 5)
    old = copy.deepcopy(opt.state_dict())
    search = old["state"]["line_search"] = old["param_groups"][0].pop("line_search")  # then
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
    with pytest.raises(ValueError, match="different c"):  # when built, not at the first step
        AdamSLS(groups)
    model = Logistic()
    parts = [
        {"params": [model.linear.weight], "part": "w", "c": 0.2},
        {"params": [model.linear.bias], "part": "b", "c": 0.3},
    ]
    with pytest.raises(ValueError, match=r"different c \(0.2, 0.3\).*with joint_steps=0 each"):
        PLASLS([dict(part) for part in parts])  # a joint phase first
    opt = PLASLS(parts, joint_steps=0)
    run(model, opt, 4)
    assert opt.state["line_search"]["searches"] == 4


def test_an_unregistered_line_search_subclass_gets_a_line_search_record_and_old_register_works():
    class Mine(optim.LineSearchOptimizer):
        def __init__(self, params, lr: float = 1.0) -> None:
            super().__init__(params, {"lr": lr})

        def _line_search_step(self, loss, forward, groups) -> None:  # never stepped here
            raise AssertionError

    record = optim.info_for(Mine)
    assert record.searches and record.forward_trials and record.reduces_over_parameters
    try:
        assert optim.register("mine", Mine) == optim.info("mine")
        assert optim.info("mine").searches
    finally:
        optim._registry.REGISTRY.pop("mine", None)


def test_a_line_search_without_its_step_and_a_record_contradicting_its_class_are_refused():
    class NoStep(optim.LineSearchOptimizer):
        def __init__(self, params, lr: float = 1.0) -> None:
            super().__init__(params, {"lr": lr})

    with pytest.raises(TypeError, match="NoStep .*does not define _line_search_step"):
        NoStep(Logistic().parameters())
    with pytest.raises(TypeError, match="does not define _line_search_step"):
        optim.register(optim.OptimizerInfo("nostep", NoStep, searches=True, forward_trials=True))
    bad = {
        "forward_trials=False but SGDSLS.forward_trials is True": {"searches": True},
        "searches=False but SGDSLS is a LineSearchOptimizer": {"forward_trials": True},
        "param_grouping must be 'any' or 'parts', got 'partz'": {
            "searches": True,
            "forward_trials": True,
            "param_grouping": "partz",
        },
    }
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            optim.register(optim.OptimizerInfo("mysls", optim.SGDSLS, **fields))
    with pytest.raises(ValueError, match="forward_trials=True but Adam.step takes no 'forward'"):
        optim.register(optim.OptimizerInfo("myadam", torch.optim.Adam, forward_trials=True))
    with pytest.raises(TypeError, match="cls must be a torch Optimizer"):
        optim.register(optim.OptimizerInfo("mydict", dict))
    assert not {"nostep", "mysls", "myadam", "mydict"} & set(optim.names())


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
    with pytest.raises(ValueError, match="presets: paper, package$"):
        optim.create("salsa", Logistic().parameters(), preset="robust")


def make_groups(name):
    model = Logistic()
    if optim.info(name).param_grouping == "parts":
        return [{"params": [p], "part": f"p{i}"} for i, p in enumerate(model.parameters())]
    return model.parameters()


@pytest.mark.parametrize("foreach_norm_first", [False, True])  # True: the GPU route
def test_all_finite_finds_nan_and_both_infinities_and_no_overflow_in_any_dtype(
    monkeypatch, foreach_norm_first
):
    from lsframe.optim import _functional, all_finite

    if foreach_norm_first:
        monkeypatch.setattr(_functional, "BATCHED_ON", frozenset({"cpu"}))

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
    assert all_finite(
        [torch.full((3,), 1e30), torch.ones(2)]
    )  # float32 ‖·‖² overflows: still finite
