"""PLASLS's part merging (``merge_below``, issue 18, item 3): a part whose step size falls below
the threshold joins the part with the next-smallest step size; merged parts move and are searched
together, and a resume across a merge is exact. The option's table tests (exact resume, NaN
safety, the rule recomputed from fresh losses) are in ``test_rule_options``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from optim_problem import snapshot

from lsframe.optim import PLASLS
from lsframe.optim.plasls import MERGED_KEYS


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)]
    return torch.nn.Sequential(
        layers[0], torch.nn.Tanh(), layers[1], torch.nn.Tanh(), layers[2], torch.nn.Linear(6, 1)
    )


DATA = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
TARGET = torch.randn(32, generator=torch.Generator().manual_seed(2))


def part_groups(model, **per_part) -> list[dict]:
    """One part per Linear layer; ``per_part[key]`` is a list of values, one per part."""
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return [
        {
            "params": list(layer.parameters()),
            "part": f"p{i}",
            **{key: values[i] for key, values in per_part.items()},
        }
        for i, layer in enumerate(linears)
    ]


def mlp_step(model, opt, moved: set[int] | None = None) -> None:
    """One step on the fixed batch; ``moved`` collects the groups a trial moved from ``x``."""
    start = snapshot(model)

    def closure(backward: bool = True):
        with torch.set_grad_enabled(backward):
            loss = F.mse_loss(model(DATA).squeeze(-1), TARGET)
        if backward:
            opt.zero_grad()
            loss.backward()
        elif moved is not None:
            now = list(model.parameters())
            for i, group in enumerate(opt.param_groups):
                for j, p in enumerate(now):
                    if any(p is q for q in group["params"]) and not torch.equal(p, start[j]):
                        moved.add(i)
        return loss.detach()

    opt.step(closure)


LRS = [0.01, 0.1, 1e-14, 0.05]  # part 2 starts far below 1e-12; part 0 has the next-smallest η


def test_a_part_below_merge_below_joins_the_part_with_the_next_smallest_step_size():
    merging_model, plain_model = mlp(), mlp()
    options = dict(lr=LRS, c=[0.1, 0.1, 0.3, 0.1], gamma=[2.0, 2.0, 3.0, 2.0])
    merging = PLASLS(part_groups(merging_model, **options), joint_steps=0, merge_below=1e-12)
    plain = PLASLS(part_groups(plain_model, **options), joint_steps=0)
    mlp_step(merging_model, merging)
    mlp_step(plain_model, plain)
    sizes = [g["step_size"] for g in plain.param_groups]
    host = min((i for i in range(4) if i != 2), key=lambda i: sizes[i])
    assert host == 0  # the setup: by step size, not the adjacent parts 1 or 3
    assert plain.part_of() == [0, 1, 2, 3]  # off by default, however small a step size
    assert merging.part_of() == [0, 1, 0, 3]
    assert merging.parts() == [[0, 2], [1], [3]]
    merged = [g["step_size"] for g in merging.param_groups]
    assert merged[0] == merged[2] == (sizes[0] + sizes[2]) / 2
    assert merged[1] == sizes[1] and merged[3] == sizes[3]
    # the merge happens after the step: the step itself is the plain one
    assert all(
        torch.equal(a, b) for a, b in zip(merging_model.parameters(), plain_model.parameters())
    )
    # the joining part takes its neighbour's rule, so one rule drives the merged part
    assert merging.param_groups[2]["c"] == 0.1 and merging.param_groups[2]["gamma"] == 2.0
    assert [g["lr"] for g in merging.param_groups] == merged  # where the next search starts
    # what the step used is what it reports, not the mean the merged parts' search starts from
    assert merging.last_step["step_sizes"] == sizes
    from lsframe.integrations.hf import step_size_logs  # Trainer's logs read the same

    logs = step_size_logs(merging)
    assert [logs[f"step_size/{i}"] for i in range(4)] == sizes
    # and Trainer's learning_rate, which its scheduler reads from the merged lr
    assert logs["learning_rate"] == sizes[0] * merging.param_groups[0]["lr_multiplier"]


def test_merged_parts_move_with_one_step_size_and_are_searched_together():
    model = mlp()
    opt = PLASLS(part_groups(model, lr=LRS), joint_steps=0, merge_below=1e-12)
    mlp_step(model, opt)
    parts = opt.parts()
    assert parts == [[0, 2], [1], [3]]
    searched_together = 0
    for t in range(1, 10):
        moved: set[int] = set()
        mlp_step(model, opt, moved)
        assert moved == set(parts[t % len(parts)])  # the cycle runs over the merged parts
        searched_together += moved == {0, 2}
        sizes = [g["step_size"] for g in opt.param_groups]
        assert sizes[0] == sizes[2]
    assert searched_together == 3
    assert opt.parts() == parts


def force_tiny_step_size(opt, index: int) -> None:
    group = opt.param_groups[index]
    group["step_size"] = 1e-14
    group["lr"] = group["step_size"] * group["lr_multiplier"]


@pytest.mark.parametrize("save_after_merge", [True, False], ids=["after", "before"])
def test_resume_across_a_merge_is_exact(save_after_merge):
    model = mlp()
    opt = PLASLS(part_groups(model), joint_steps=2, merge_below=1e-12)
    for _ in range(4):
        mlp_step(model, opt)
    force_tiny_step_size(opt, 1)
    if save_after_merge:
        mlp_step(model, opt)
        assert len(opt.parts()) == 3
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(7):
        mlp_step(model, opt)
    resumed = mlp()
    resumed.load_state_dict(saved_model)
    opt2 = PLASLS(part_groups(resumed), joint_steps=2, merge_below=1e-12)
    opt2.load_state_dict(saved)
    for _ in range(7):
        mlp_step(resumed, opt2)
    assert len(opt2.parts()) == 3
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    assert opt.state["line_search"] == opt2.state["line_search"]
    assert opt.param_groups[1]["params"][0] is model[2].weight  # the groups are left as they are
    keys = ("step_size", "lr", *MERGED_KEYS)
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert [g1[k] for k in keys] == [g2[k] for k in keys]


def test_the_merged_parts_smoothed_averages_go_on_once_one_part_is_left():
    # the last merge made every step search all groups, and the averages restarted from zeros
    model = mlp()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    halves = [linears[:2], linears[2:]]
    groups = [
        {"params": [p for layer in half for p in layer.parameters()], "part": f"p{i}"}
        for i, half in enumerate(halves)
    ]
    opt = PLASLS(groups, smooth=True, beta_s=0.9, joint_steps=0, merge_below=1e-12)
    for _ in range(2):  # part 0's search, then part 1's
        mlp_step(model, opt)
    force_tiny_step_size(opt, 0)
    mlp_step(model, opt)  # part 0 searches, then joins part 1
    assert opt.parts() == [[1, 0]]
    averages = opt.state["line_search"]["smoothing"]
    before = dict(averages["1"])
    for _ in range(2):
        mlp_step(model, opt)
    assert averages["joint"] == {"decrease": 0.0, "slope": 0.0}  # never searched jointly
    after = averages["1"]
    assert after != before and after["slope"] >= 0.9**2 * before["slope"] > 0
