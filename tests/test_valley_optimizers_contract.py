"""Lamb, ALTO and AdamE keep the contract of lsframe's line searches (review R, F1, F3, F9):
every param group's hyperparameters are checked as the constructor's arguments are, a state
dict saved by another optimizer is refused with one line, and a wrong type in a constructor
argument is refused naming the argument."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lsframe.errors import ConfigError, DataError
from lsframe.optim import ALTO, AdamE, Lamb, SaLSA

CLASSES = [Lamb, ALTO, AdamE]
GEN = torch.Generator().manual_seed(0)
X, Y = torch.randn(16, 4, generator=GEN), torch.randn(16, 2, generator=GEN)
AFRESH = "or start this optimizer afresh (load the model's weights only)"


def model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def run(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        opt.step()


def refusal(error_type: type[Exception], build) -> str:
    with pytest.raises(error_type) as refused:
        build()
    return str(refused.value)


# ------------------------------------------------------------------------ F1: group values
BAD_GROUP_VALUES = [
    ({"lr": -0.05}, "lr must be >= 0, got -0.05"),
    ({"lr": "0.01"}, "lr must be a number, got '0.01'"),
    ({"betas": (2.0, 2.0)}, "betas[0] must be in [0, 1), got 2.0"),
    ({"eps": -1.0}, "eps must be >= 0, got -1.0"),
    ({"weight_decay": -5.0}, "weight_decay must be >= 0, got -5.0"),
]
VALLEY_GROUP_VALUES = [
    ({"valley_alpha": "0.5"}, "valley_alpha must be a number, got '0.5'"),
    (
        {"valley_alpha": -11.0, "valley_beta": 0.9},
        "valley_alpha must satisfy |alpha| < 1/(1 - beta) = 10 for beta=0.9, got -11.0 (the "
        "paper's stability condition)",
    ),
    ({"valley_beta": 1.0}, "valley_beta must be in [0, 1), got 1.0"),
    ({"first_step_kick": 1}, "first_step_kick must be True or False, got 1"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("values", "line"), BAD_GROUP_VALUES, ids=lambda v: str(v)[:30])
def test_a_bad_hyperparameter_in_a_param_group_is_refused_by_lamb_alto_and_adame(cls, values, line):
    net = model()
    got = refusal(ConfigError, lambda: cls([{"params": net.parameters(), **values}]))
    assert got == f"{cls.__name__}: param group 0: {line}"


@pytest.mark.parametrize("cls", [ALTO, AdamE], ids=lambda c: c.__name__)
@pytest.mark.parametrize(("values", "line"), VALLEY_GROUP_VALUES, ids=lambda v: str(v)[:30])
def test_a_bad_adaptor_value_in_a_param_group_is_refused_by_alto_and_adame(cls, values, line):
    net = model()
    got = refusal(ConfigError, lambda: cls([{"params": net.parameters(), **values}]))
    assert got == f"{cls.__name__}: param group 0: {line}"
    opt = cls([{"params": [net.weight]}])
    added = {"params": [net.bias], "name": "head", **values}
    got = refusal(ConfigError, lambda: opt.add_param_group(added))
    assert got == f"{cls.__name__}: param group 1 ('head'): {line}"
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_group_added_later_with_a_negative_lr_is_refused_and_leaves_the_optimizer_as_it_was(
    cls,
):
    net = model()
    opt = cls([{"params": [net.weight]}], lr=0.01)
    bad = {"params": [net.bias], "name": "head", "lr": -0.05}
    got = refusal(ConfigError, lambda: opt.add_param_group(bad))
    assert got == f"{cls.__name__}: param group 1 ('head'): lr must be >= 0, got -0.05"
    assert len(opt.param_groups) == 1
    # lr 0 joins (Lightning's BaseFinetuning adds groups at lr 0 during a warmup from 0)
    opt.add_param_group({"params": [net.bias], "name": "head", "lr": 0.0})
    run(net, opt, 2)
    assert opt.param_groups[1]["lr"] == 0.0


# ----------------------------------------------------------------- F3: another's state dict
def saved_state(cls: type[torch.optim.Optimizer], steps: int = 2) -> dict:
    net = model()
    opt = cls(net.parameters())
    if steps:
        run(net, opt, steps)
    return copy.deepcopy(opt.state_dict())


PAIRS = [(cls, saver) for cls in CLASSES for saver in (*CLASSES, SaLSA) if saver is not cls]


@pytest.mark.parametrize(("cls", "saver"), PAIRS, ids=lambda c: c.__name__)
def test_a_state_saved_by_another_lsframe_optimizer_is_refused_by_lamb_alto_and_adame(cls, saver):
    state = saved_state(saver, steps=0 if saver is SaLSA else 2)  # SaLSA steps on a closure
    opt = cls(model().parameters())
    settings = lambda: {k: v for k, v in opt.param_groups[0].items() if k != "params"}  # noqa: E731
    before = settings()
    name, by = cls.__name__, saver.__name__
    assert refusal(DataError, lambda: opt.load_state_dict(state)) == (
        f"{name}: the optimizer state to load was saved by {by}, whose hyperparameters and "
        f"state are not {name}'s: resume with {by}, {AFRESH}"
    )
    assert settings() == before and not opt.state  # nothing was loaded


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_state_saved_by_torch_adamw_is_refused_by_lamb_alto_and_adame(cls):
    # AdamE is AdamW on the adapted gradient, but an AdamW run has no α, β1 nor adaptor
    # state: loading it would switch optimizer mid-run without a word
    state = saved_state(torch.optim.AdamW)
    opt = cls(model().parameters())
    keys = set(state["param_groups"][0]) - {"params"}
    missing = sorted(set(opt.REQUIRED_GROUP_KEYS) - keys)
    extra = sorted(keys - set(opt.defaults))
    found = [f"has no {', '.join(missing)}"]
    found += [f"has {', '.join(extra)}, which {cls.__name__} does not use"] if extra else []
    assert refusal(DataError, lambda: opt.load_state_dict(state)) == (
        f"{cls.__name__}: the optimizer state to load {' and '.join(found)}, so another "
        f"optimizer saved it: resume with the optimizer it was saved with, {AFRESH}"
    )
    if cls is AdamE:
        assert found == ["has no valley_alpha, valley_beta"]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_an_unstamped_state_of_another_of_the_three_is_refused_naming_the_keys_that_differ(cls):
    other = {Lamb: ALTO, ALTO: Lamb, AdamE: ALTO}[cls]  # ALTO's keys are a superset of Lamb's
    state = saved_state(other)
    del state["param_groups"][0]["saved_by"]  # as saved before the stamp
    got = refusal(DataError, lambda: cls(model().parameters()).load_state_dict(state))
    expected = {
        Lamb: "has first_step_kick, valley_alpha, valley_beta, which Lamb does not use",
        ALTO: "has no valley_alpha, valley_beta",
        AdamE: "has always_adapt, bias_correction, max_grad_norm, trust_clip, which AdamE does "
        "not use",
    }[cls]
    assert got == (
        f"{cls.__name__}: the optimizer state to load {expected}, so another optimizer saved "
        f"it: resume with the optimizer it was saved with, {AFRESH}"
    )


def named_groups(net: torch.nn.Linear) -> list[dict]:
    """Named groups, as lsframe's no-decay split builds them."""
    return [
        {"params": [net.weight], "name": "decay"},
        {"params": [net.bias], "name": "no_decay", "weight_decay": 0.0},
    ]


def resumes_bit_for_bit(cls: type[torch.optim.Optimizer], edit) -> torch.optim.Optimizer:
    """Run 3 steps, save, ``edit`` the saved state, load it into a fresh optimizer on a copy of
    the weights, and check that 3 more steps of both give the same weights."""
    net, twin = model(), model()
    opt = cls(named_groups(net), lr=0.01)
    run(net, opt, 3)
    state = copy.deepcopy(opt.state_dict())
    edit(state)
    twin.load_state_dict(net.state_dict())
    resumed = cls(named_groups(twin), lr=0.01)
    resumed.load_state_dict(state)
    run(net, opt, 3)
    run(twin, resumed, 3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
    return resumed


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_state_dict_names_the_class_that_saved_it_and_that_class_resumes_it_bit_for_bit(cls):
    def stamped(state: dict) -> None:
        assert state["param_groups"][0]["saved_by"] == cls.__name__
        assert all("saved_by" not in group for group in state["param_groups"][1:])

    resumed = resumes_bit_for_bit(cls, stamped)
    assert all("saved_by" not in group for group in resumed.param_groups)  # not a setting


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_state_saved_by_the_same_class_before_the_stamp_still_resumes_bit_for_bit(cls):
    def as_saved_before(state: dict) -> None:
        state["param_groups"][0].pop("saved_by", None)
        for group in state["param_groups"]:
            group["initial_lr"] = 0.01  # a torch LR scheduler was attached when it was saved
            group.pop("max_grad_norm", None)  # keys older states lack: the defaults stand in
            group.pop("first_step_kick", None)

    resumes_bit_for_bit(cls, as_saved_before)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_subclass_that_adds_no_keys_loads_its_base_class_s_stamped_state(cls):
    tuned = type("Tuned", (cls,), {})
    state = saved_state(cls)
    tuned(model().parameters()).load_state_dict(state)
    back = copy.deepcopy(tuned(model().parameters()).state_dict())
    got = refusal(DataError, lambda: cls(model().parameters()).load_state_dict(back))
    assert got.startswith(f"{cls.__name__}: the optimizer state to load was saved by Tuned, ")


# ------------------------------------------------------------------- F9: argument types
@pytest.mark.parametrize(
    ("cls", "kwargs", "line"),
    [
        (AdamE, {"lr": True}, "lr must be a number, got True"),
        (AdamE, {"lr": "1e-3"}, "lr must be a number, got '1e-3'"),
        (AdamE, {"weight_decay": "0.1"}, "weight_decay must be a number, got '0.1'"),
        (AdamE, {"betas": (0.9,)}, "betas must be a list of 2 numbers (beta1, beta2), got (0.9,)"),
        (AdamE, {"alpha": "0.5"}, "alpha must be a number, got '0.5'"),
        (ALTO, {"alpha": "0.5"}, "alpha must be a number, got '0.5'"),
        (ALTO, {"valley_beta": "0.5"}, "valley_beta must be a number, got '0.5'"),
        (AdamE, {"batch_size": "32"}, "batch_size must be an integer >= 1 or None, got '32'"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v)[:24],
)
def test_a_wrong_type_in_adame_or_alto_s_arguments_is_refused_naming_the_argument(
    cls, kwargs, line
):
    assert refusal(ConfigError, lambda: cls(model().parameters(), **kwargs)) == line


def test_a_bad_beta_of_the_valley_callback_is_placed_at_its_own_argument():
    from lsframe.callbacks import ValleyExploration

    with pytest.raises(ConfigError) as refused:
        ValleyExploration(alpha=0.5, beta=1.5)
    assert refused.value.argument == "beta"  # it was "valley beta (β1)", no such key
