"""What every lsframe optimizer checks in a state dict it loads, and what its state-dict hooks
see (lsframe/optim/_saved_state.py, _search_groups.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lsframe import optim
from lsframe.errors import DataError
from lsframe.optim.closure import ClosureContractError

OURS = [name for name in optim.names() if name not in ("adam", "adamw", "sgd")]
ADAM_LIKE = [name for name in OURS if name != "sgdsls"]  # they keep per-parameter moments
X, Y = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.randn(16, 2)


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def groups(model, order=(0, 2), named=False) -> list[dict]:
    """One group per Linear layer, in ``order``; the first decays, the second does not."""
    found = []
    for decay, layer in zip((0.1, 0.0), order):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(f"{layer}.")]
        found.append({"params": params if named else [p for _, p in params], "weight_decay": decay})
    return found


def build(name: str, param_groups: list[dict]):
    if optim.info(name).param_grouping == "parts":
        param_groups = [{**group, "part": f"p{i}"} for i, group in enumerate(param_groups)]
    return optim.create(name, param_groups)


def steps(model, opt, n: int = 2) -> None:
    def closure(backward=True):
        with torch.set_grad_enabled(backward):
            loss = F.mse_loss(model(X), Y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss.detach()

    for _ in range(n):
        opt.step(closure)


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
@pytest.mark.parametrize("name", OURS)
def test_a_state_saved_for_param_groups_in_another_order_is_refused_naming_the_parameter(
    name, named
):
    # torch matched by position: a size error at the first step, or SGDSLS's groups swapped
    # their settings without a word
    if not named and name not in ADAM_LIKE:
        pytest.skip("no per-parameter state: only the saved names can tell")
    model = mlp()
    saved = build(name, groups(model, named=named))
    steps(model, saved)
    other = build(name, groups(model, order=(2, 0), named=named))
    with pytest.raises(DataError, match="was saved for other parameters: parameter 0 of param"):
        other.load_state_dict(saved.state_dict())
    same = build(name, groups(model, named=named))
    same.load_state_dict(saved.state_dict())  # the same order loads


@pytest.mark.parametrize("name", optim.line_searches())
def test_state_dict_hooks_see_the_layout_state_dict_returns_and_load_takes(name):
    # the search state sat under state["line_search"] while the hooks ran, so torch's
    # name-keying hooks failed on a key that is not a parameter's index
    model = mlp()
    names = [n for n, _ in model.named_parameters()]

    def keyed(opt):
        opt.register_state_dict_post_hook(
            lambda o, sd: {**sd, "state": {names[k]: v for k, v in sd["state"].items()}}
        )
        opt.register_load_state_dict_pre_hook(
            lambda o, sd: {**sd, "state": {names.index(k): v for k, v in sd["state"].items()}}
        )
        return opt

    opt = keyed(build(name, groups(model)))
    steps(model, opt)
    saved = copy.deepcopy(opt.state_dict())  # torch's holds the live tensors
    assert set(saved["state"]) <= set(names) and "line_search" in saved["param_groups"][0]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    steps(model, opt)
    after = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(weights)
    resumed = keyed(build(name, groups(model)))
    resumed.load_state_dict(saved)
    assert resumed.search_state == build_state(saved)
    steps(model, resumed)
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters()))


def build_state(saved: dict) -> dict:
    return saved["param_groups"][0]["line_search"]


@pytest.mark.parametrize("name", [n for n in optim.line_searches() if optim.info(n).forward_trials])
def test_a_closure_that_back_propagates_in_its_trials_gets_the_contracts_error(name):
    model = mlp()
    opt = build(name, groups(model))

    def closure(backward=True):  # takes the flag, then ignores it
        opt.zero_grad()
        loss = F.mse_loss(model(X), Y)
        loss.backward()
        return loss.detach()

    with pytest.raises(ClosureContractError, match=r"closure\(backward=False\) needed gradients"):
        opt.step(closure)


@pytest.mark.parametrize("name", OURS)
def test_a_bad_value_in_a_param_group_is_refused_naming_the_group(name):
    model = mlp()
    bad = groups(model)
    bad[1]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match=r": param group 1: weight_decay must be >= 0, got -1.0"):
        build(name, bad)


@pytest.mark.parametrize("name", OURS)
def test_a_state_saved_under_a_wrappers_parameter_names_loads_unwrapped(name):
    # torch.compile names them _orig_mod.<name>: the names matched as strings were refused
    model = mlp()
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model
    wrapped = [
        {"params": [(n, p) for n, p in wrapper.named_parameters() if f".{layer}." in n]}
        for layer in (0, 2)
    ]
    saved = build(name, wrapped)
    steps(model, saved)
    build(name, groups(model, named=True)).load_state_dict(saved.state_dict())


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(4)


class NestedNorms(torch.nn.Module):
    """``norm`` at the top and ``layers.0.norm``: the top one's name is the tail of the other's,
    and their moments have one shape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([Block()])
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(torch.tanh(self.layers[0].norm(x)))[:, :2]


@pytest.mark.parametrize("name", ADAM_LIKE)
def test_a_state_of_groups_whose_names_differ_by_a_prefix_of_one_name_only_is_refused(name):
    # norm.weight is layers.0.norm.weight under a prefix, but a wrapper prefixes every name:
    # the groups in the reverse order took each other's moments
    model = NestedNorms()
    parts = [
        {"params": [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]}
        for prefix in ("layers.0.", "norm.")
    ]
    saved = build(name, parts)
    steps(model, saved)
    with pytest.raises(DataError, match="saved for other parameters"):
        build(name, parts[::-1]).load_state_dict(saved.state_dict())


@pytest.mark.parametrize("name", optim.line_searches())
def test_load_post_hooks_see_the_loaded_search_state_and_a_missing_counter_is_backfilled(name):
    model = mlp()
    opt = build(name, groups(model))
    steps(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    del saved["param_groups"][0]["line_search"]["rejected_steps"]  # an older lsframe's
    seen = []
    resumed = build(name, groups(model))
    resumed.register_load_state_dict_post_hook(lambda o: seen.append(dict(o.search_state)))
    resumed.load_state_dict(saved)
    assert seen[0]["step"] == 2 and resumed.search_state["rejected_steps"] == 0
    steps(model, resumed)
