"""Param groups and saved state of lsframe's optimizers: one step size serves every group of a
line search, a refused group changes nothing, every hyperparameter travels in the groups, and
the state dict is one torch.distributed.checkpoint can map to parameter names."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from optim_problem import NAMES, Logistic, make, make_closure, run

from lsframe import optim
from lsframe.optim import PLASLS, Lamb, SaLSA, SlopeTrackingAdam


def two_groups(model: Logistic, lrs: tuple[float, float]) -> list[dict]:
    weight, bias = model.linear.weight, model.linear.bias
    return [
        {"params": [weight], "part": "w", "lr": lrs[0]},
        {"params": [bias], "part": "b", "lr": lrs[1]},
    ]


@pytest.mark.parametrize("name", NAMES)
def test_a_group_with_its_own_lr_is_refused_and_the_message_gives_its_lr_multiplier(name):
    # one search (one tracked η) sets every group's step size: a second lr would be dropped
    cls = optim.info(name).cls
    message = r"param group 1 sets lr=0.0001 but group 0 starts at 0.01.*lr_multiplier=0.01\b"
    with pytest.raises(ValueError, match=message):
        cls(two_groups(Logistic(), (1e-2, 1e-4)))
    model = Logistic()
    opt = cls(two_groups(model, (1e-2, 1e-2)))
    opt.param_groups[1]["lr_multiplier"] = 0.01  # what the message advises
    opt._write_lr()
    run(model, opt, 2)
    assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["step_size"] * 0.01)


@pytest.mark.parametrize("name", NAMES)
def test_a_constructor_group_taking_the_default_lr_beside_group_0s_own_is_refused(name):
    # torch gives such a group the default lr; a line search would have given it group 0's
    cls = optim.info(name).cls
    model = Logistic()
    groups = [{"params": [model.linear.weight], "lr": 1e-2}, {"params": [model.linear.bias]}]
    default = inspect.signature(cls).parameters["lr"].default
    if default == 1e-2:
        groups[0]["lr"] = 2e-2
    start = groups[0]["lr"]
    message = rf"param group 1 takes the default lr={default!r} but group 0 starts at {start!r}"
    with pytest.raises(ValueError, match=message + ".*give lr to the optimizer"):
        cls(groups)
    opt = cls([{"params": [model.linear.weight]}, {"params": [model.linear.bias]}], lr=start)
    assert [g["lr"] for g in opt.param_groups] == [start, start]
    late = torch.nn.Parameter(torch.zeros(1))
    opt.add_param_group({"params": [late]})  # added later without lr: joins group 0's step size
    run(model, opt, 1)
    assert opt.param_groups[2]["lr"] == opt.param_groups[0]["lr"]


def test_plasls_parts_that_search_apart_from_the_start_keep_their_own_lr():
    model = Logistic()
    opt = PLASLS(two_groups(model, (1e-2, 1e-4)), joint_steps=0)
    assert [g["initial_step_size"] for g in opt.param_groups] == [1e-2, 1e-4]
    run(model, opt, 2)  # one search per part
    assert opt.param_groups[1]["step_size"] < 1e-3 < opt.param_groups[0]["step_size"]


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_param_group_leaves_the_optimizer_as_it_was_and_it_steps_on(name):
    model = Logistic()
    opt = make(name, model)
    before = len(opt.param_groups)
    extra = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="lr must be a positive"):
        opt.add_param_group({"params": [extra], "lr": -1.0})
    assert len(opt.param_groups) == before
    run(model, opt, 2)
    opt.add_param_group({"params": [extra]})  # the same parameter, now accepted
    assert len(opt.param_groups) == before + 1


def test_salsa_starts_its_search_from_the_groups_lr():
    model, reference = Logistic(), Logistic()
    opt = SaLSA([{"params": model.parameters(), "lr": 1e-3}])
    from_argument = SaLSA(reference.parameters(), lr=1e-3)
    assert opt.state["line_search"]["searched_step_size"] == 1e-3
    run(model, opt, 1)
    run(reference, from_argument, 1)
    assert opt.param_groups[0]["step_size"] == from_argument.param_groups[0]["step_size"]
    assert opt.last_step["trials"] == from_argument.last_step["trials"]


def test_max_change_is_refused_with_the_value_given_and_its_rule():
    with pytest.raises(ValueError, match=r"^max_change must be in \(1, inf\), got 1.0$"):
        SlopeTrackingAdam(Logistic().parameters(), max_change=1.0)


def test_lamb_clips_by_the_max_grad_norm_its_groups_carry_so_a_state_dict_brings_it_back():
    models = [Logistic() for _ in range(3)]
    tight = Lamb(models[0].parameters(), lr=1e-2, max_grad_norm=1e-3)
    loaded = Lamb(models[1].parameters(), lr=1e-2)  # the constructor's 1.0 ...
    loaded.load_state_dict(tight.state_dict())  # ... replaced by the saved 1e-3
    loose = Lamb(models[2].parameters(), lr=1e-2)
    assert tight.defaults["max_grad_norm"] == loaded.param_groups[0]["max_grad_norm"] == 1e-3
    for model, opt in zip(models, (tight, loaded, loose)):
        for _ in range(3):
            opt.step(make_closure(model, opt))
    assert torch.equal(models[0].linear.weight, models[1].linear.weight)
    assert not torch.allclose(models[0].linear.weight, models[2].linear.weight)


def test_lamb_refuses_groups_with_different_max_grad_norm_one_clip_uses_one_value():
    model = Logistic()
    groups = [
        {"params": [model.linear.weight], "max_grad_norm": 0.5},
        {"params": [model.linear.bias]},
    ]
    opt = Lamb(groups)
    with pytest.raises(ValueError, match="different max_grad_norm"):
        opt.step(make_closure(model, opt))


def test_an_optimizer_name_that_is_not_a_string_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown optimizer None; registered optimizers: adam"):
        optim.create(None, Logistic().parameters())


def test_a_group_without_its_own_lr_joins_the_step_size_of_a_run_resumed_from_another_start():
    model, twin = Logistic(), Logistic()
    saved = SaLSA([{"params": [model.linear.weight], "lr": 1e-3}])
    run(model, saved, 2)
    resumed = SaLSA([{"params": [twin.linear.weight]}])  # lr 1.0 from the constructor
    resumed.load_state_dict(saved.state_dict())
    resumed.add_param_group({"params": [twin.linear.bias]})  # accepted: no lr of its own
    with pytest.raises(ValueError, match="param group 1 sets lr=1.0 but group 0 starts at 0.001"):
        saved.add_param_group({"params": [model.linear.bias], "lr": 1.0})


@pytest.mark.parametrize("name", NAMES)
def test_another_optimizers_state_is_refused_with_one_line_instead_of_a_key_error(name):
    model = Logistic()
    adamw = torch.optim.AdamW(model.parameters())
    adamw.step(make_closure(model, adamw))
    opt = make(name, Logistic())
    state = adamw.state_dict()
    state["param_groups"] = state["param_groups"] * len(opt.param_groups)  # the groups' count
    with pytest.raises(ValueError, match="another optimizer saved it: resume with the optimizer"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("name", NAMES)
def test_another_line_search_s_state_is_refused_naming_the_optimizer_that_saved_it(name):
    # every line search saves a step size: SGDSLS's η 0.73 loaded into SlopeTrackingAdam took
    # Adam steps of that size with both optimizers' hyperparameters mixed in the groups
    other = next(n for n in NAMES if optim.info(n).cls is not optim.info(name).cls)
    model = Logistic()
    saver = make(other, model)
    saver.step(make_closure(model, saver))
    opt = make(name, Logistic())
    state = saver.state_dict()
    state["param_groups"] = [state["param_groups"][0]] * len(opt.param_groups)
    saved_by = type(saver).__name__
    with pytest.raises(ValueError, match=f"was saved by {saved_by}, .*: resume with {saved_by}"):
        opt.load_state_dict(state)


def test_a_subclass_loads_its_base_class_s_state_and_not_the_reverse():
    class Tuned(SaLSA):
        pass

    model = Logistic()
    base = SaLSA(model.parameters())
    base.step(make_closure(model, base))
    Tuned(Logistic().parameters()).load_state_dict(base.state_dict())
    with pytest.raises(ValueError, match="saved by Tuned"):
        SaLSA(Logistic().parameters()).load_state_dict(Tuned(model.parameters()).state_dict())


def key_paths(values: dict, prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for key, value in values.items():
        paths.add((*prefix, key))
        if isinstance(value, dict):
            paths |= key_paths(value, (*prefix, key))
    return paths


VARIANTS = [
    (name, preset, extra)
    for name in NAMES
    for preset in ["paper", *optim.info(name).presets]
    for extra in ([{}, {"smooth": True}] if name in ("adamsls", "plasls") else [{}])
]


@pytest.mark.parametrize(("name", "preset", "extra"), VARIANTS)
def test_a_fresh_search_state_names_every_key_a_run_writes_with_the_same_container(
    name, preset, extra
):
    # a template from a fresh optimizer (torch.distributed.checkpoint) loads only its own keys,
    # and its full-state load merges the saved state into the fresh one leaf by leaf
    model = Logistic()
    opt = make(name, model, preset=preset, **extra)
    fresh = copy.deepcopy(opt.search_state)
    fresh_moments = {i: set(v) for i, v in opt.state_dict()["state"].items()}
    run(model, opt, 40)
    assert key_paths(opt.search_state) == key_paths(fresh)
    for key, value in opt.search_state.items():
        if isinstance(value, (dict, list)):
            assert type(fresh[key]) is type(value), key
    assert {i: set(v) for i, v in opt.state_dict()["state"].items()} == fresh_moments


def test_plasls_names_the_keys_of_merges_and_of_a_part_added_after_construction():
    # merges write part_of; a part added by add_param_group gets its averages then, so that a
    # fresh optimizer built the same way names them too
    model = Logistic()
    opt = PLASLS(
        [{"params": [model.linear.weight], "part": "w"}], smooth=True, joint_steps=0, lr=1.0
    )
    opt.add_param_group({"params": [model.linear.bias], "part": "b", "merge_below": 1e9})
    fresh = copy.deepcopy(opt.search_state)
    run(model, opt, 10)
    assert opt.search_state["part_of"] != fresh["part_of"]  # the parts merged
    assert key_paths(opt.search_state) == key_paths(fresh)


@pytest.mark.parametrize("name", [n for n in NAMES if optim.info(n).cls.ADAM_MOMENTS])
def test_a_state_dict_before_the_model_changes_dtype_changes_no_step(name):
    # the zero moments a fresh optimizer's state dict creates follow the parameters' dtype
    from lsframe.optim import make_closure as lsframe_closure

    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x.sum(-1, keepdim=True)

    def trajectory(early_state_dict: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Linear(10, 1)
        opt = optim.create(name, model.parameters())
        if early_state_dict:
            opt.state_dict()
        model.double()
        loss = lambda m, batch: torch.nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
        for _ in range(5):
            opt.step(lsframe_closure(model, (x, y), opt, loss_fn=loss))
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trajectory(False), trajectory(True)))


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in NAMES
        if optim.info(n).cls.ADAM_MOMENTS and optim.info(n).param_grouping != "parts"
    ],
)
def test_a_stepped_optimizer_keeps_no_moments_for_a_parameter_without_gradients(name):
    model = Logistic()
    model.unused = torch.nn.Parameter(torch.zeros(1000))
    opt = make(name, model)
    run(model, opt, 3)
    opt.state_dict()
    assert model.unused not in opt.state


def test_a_state_without_the_search_state_is_refused_instead_of_restarting_the_search():
    model = Logistic()
    opt = SaLSA(model.parameters())
    run(model, opt, 3)
    state = copy.deepcopy(opt.state_dict())
    del state["param_groups"][0]["line_search"]
    with pytest.raises(ValueError, match="has no search state"):
        SaLSA(Logistic().parameters()).load_state_dict(state)


@pytest.mark.parametrize("name", NAMES)
def test_the_search_state_is_one_dict_in_state_and_in_group_0_after_a_load_and_a_copy(name):
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 3)
    loaded = make(name, Logistic())
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    for each in (opt, loaded, copy.deepcopy(opt)):
        assert each.param_groups[0]["line_search"] is each.state["line_search"]
    assert loaded.state["line_search"] == opt.state["line_search"]
    assert "line_search" not in opt.state_dict()["state"]
    assert "line_search: {" not in repr(opt) and "step_size" in repr(opt)
    assert opt.param_groups[0]["line_search"] is opt.state["line_search"]  # after the repr


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_saved_with_the_search_state_under_state_still_resumes(name):
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 5)
    old = copy.deepcopy(opt.state_dict())  # as lsframe saved it until 2026-12-05
    old["state"]["line_search"] = old["param_groups"][0].pop("line_search")
    opt2 = make(name, Logistic())
    opt2.load_state_dict(old)
    assert opt2.state["line_search"] == opt.state["line_search"]
    assert opt2.state["line_search"] is not old["state"]["line_search"]  # not the caller's
    assert opt2.param_groups[0]["line_search"] is opt2.state["line_search"]


def test_a_group_given_the_same_lr_joins_after_the_run_length_lowered_the_start():
    model = Logistic()
    opt = SlopeTrackingAdam([{"params": [model.linear.weight], "lr": 1e-4}])
    opt.set_run_length(1000)  # starts at 1e-4 · √(375/1000)
    assert opt.param_groups[0]["step_size"] < 1e-4
    opt.add_param_group({"params": [model.linear.bias], "lr": 1e-4})
    run(model, opt, 2)
    assert opt.param_groups[1]["step_size"] == opt.param_groups[0]["step_size"]


def _another_value(value: object) -> object | None:
    """A value of the same kind that differs (None: no such value to try)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.1
    if isinstance(value, tuple) and all(isinstance(v, float) for v in value):
        return tuple(v * 0.99 for v in value)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_a_group_differing_in_what_one_search_reads_once_is_refused_when_it_is_added(name):
    # the constructor took such a group and the first step refused it; every hyperparameter a
    # group may not set on its own is declared, so a step never refuses what was accepted
    refused = []
    for key, value in make(name, Logistic()).defaults.items():
        other = _another_value(value)
        if key in ("lr", "params") or other is None:
            continue
        model = Logistic()
        groups = [
            {"params": [model.linear.weight], "part": "w"},
            {"params": [model.linear.bias], "part": "b", key: other},
        ]
        try:
            opt = optim.create(name, groups)
        except ValueError as error:
            if "have different" in str(error):
                refused.append(key)
            continue  # a value out of range: nothing to learn here
        run(model, opt, 3)  # no "have different" at a step
    assert refused, "no hyperparameter refused"
    if optim.info(name).forward_trials:
        assert "max_backtracks" in refused


@pytest.mark.parametrize(
    "key, other", [("gamma", 100.0), ("reset_option", 2), ("n_batches_per_epoch", 1)]
)
def test_adamsls_refuses_a_group_with_its_own_reset_rule_its_one_search_starts_from_one(key, other):
    # the search started from group 0's reset step size; the other group's value looked in effect
    model = Logistic()
    groups = [{"params": [model.linear.weight]}, {"params": [model.linear.bias], key: other}]
    with pytest.raises(ValueError, match=f"have different {key} "):
        optim.create("adamsls", groups)
    parts = [{**group, "part": f"p{i}"} for i, group in enumerate(groups)]
    optim.create("plasls", parts, joint_steps=0)  # each part searches alone: its own rule
