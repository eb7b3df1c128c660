"""SlopeTrackingAdam(fused=True): the compiled one-pass kernels take the eager rule's steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from lsframe.optim import SlopeTrackingAdam


def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.3 * torch.randn(128, 1, generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, x, y


def tracker(model, fused: bool, measure: str = "slope") -> SlopeTrackingAdam:
    groups = [
        {"params": model[0].parameters(), "lr_multiplier": 0.5},
        {"params": model[2].parameters()},
    ]
    return SlopeTrackingAdam(
        groups, lr=1e-3, weight_decay=0.01, fused=fused, alignment_measure=measure
    )


def step(model, opt, x, y, poison: bool = False) -> None:
    def closure(backward: bool = True) -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if poison:
            model[2].weight.grad[0, 3] = float("inf")
        return loss.detach()

    opt.step(closure)


def batch(x, y, i: int):
    return x[i % 4 * 32 : (i % 4 + 1) * 32], y[i % 4 * 32 : (i % 4 + 1) * 32]


@pytest.mark.parametrize("measure", ["slope", "cosine"])
def test_fused_kernels_take_the_eager_steps_to_rounding_and_reject_a_non_finite_gradient(measure):
    eager_model, x, y = problem()
    fused_model = copy.deepcopy(eager_model)
    eager, fused = tracker(eager_model, False, measure), tracker(fused_model, True, measure)
    for i in range(12):
        poison = i == 6  # an inf gradient entry: the step is rejected, nothing moves
        before = [p.detach().clone() for p in fused_model.parameters()]
        for model, opt in ((eager_model, eager), (fused_model, fused)):
            step(model, opt, *batch(x, y, i), poison=poison)
        if poison:
            assert fused.last_step["rejected"] and eager.last_step["rejected"]
            assert all(torch.equal(a, b) for a, b in zip(fused_model.parameters(), before))
            continue
        a, b = eager.search_state["alignment"], fused.search_state["alignment"]
        # to float32 rounding of the sums: 1e-5 of the slope's scale (a cosine's is 1)
        assert (a is None) == (b is None) == (i == 0) and (
            a is None or abs(a - b) < 1e-5 * max(1, abs(a))
        )
        sizes = [
            (g["step_size"], h["step_size"]) for g, h in zip(eager.param_groups, fused.param_groups)
        ]
        assert all(abs(a - b) <= 1e-5 * a for a, b in sizes)
        for a, b in zip(eager_model.parameters(), fused_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused.search_state["rejected_steps"] == 1


def test_a_fused_tracker_resumes_exactly_and_one_graph_serves_every_step():
    model, x, y = problem()
    opt = tracker(model, True)
    for i in range(4):
        step(model, opt, *batch(x, y, i))
    resumed_model = copy.deepcopy(model)
    resumed = tracker(resumed_model, True)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    counters.clear()
    for i in range(4, 10):  # new step sizes and bias corrections each step
        step(model, opt, *batch(x, y, i))
        step(resumed_model, resumed, *batch(x, y, i))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    assert resumed.param_groups[0]["step_size"] == opt.param_groups[0]["step_size"]
    assert counters["frames"]["total"] == 0, dict(counters["frames"])  # nothing compiled anew


def strided_problem():
    """A non-dense parameter (a column slice: its gradient is contiguous, it is not), a dense
    one, and a group whose parameter never gets a gradient."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(4, 6, generator=gen)[:, :3])
    bias = torch.nn.Parameter(torch.zeros(3))
    unused = torch.nn.Parameter(torch.ones(5))
    return weight, bias, unused


def test_fused_kernels_take_strided_parameters_and_groups_without_gradients_in_a_plain_loop():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 4, generator=gen), torch.randn(32, 3, generator=gen)
    runs = []
    for fused in (False, True):
        weight, bias, unused = strided_problem()
        groups = [{"params": [weight, bias]}, {"params": [unused], "weight_decay": 0.1}]
        opt = SlopeTrackingAdam(groups, lr=1e-2, fused=fused, burn_in=False)  # η moves by step 8
        for i in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(x[i % 4 * 8 :][:8] @ weight + bias, y[:8])
            loss.backward()
            if i == 5:  # a NaN gradient: rejected, weights and Adam's moments untouched
                weight.grad[1, 2] = float("nan")
                saved = {k: v.clone() for k, v in opt.state[weight].items() if k != "moment_steps"}
                count = opt.state[weight]["moment_steps"]
            opt.step()
            if i == 5:
                assert opt.last_step["rejected"]
                assert all(torch.equal(opt.state[weight][k], v) for k, v in saved.items())
                assert opt.state[weight]["moment_steps"] == count == 5
        assert unused.grad is None and torch.equal(unused, torch.ones(5))
        runs.append((weight.detach(), bias.detach(), opt.param_groups[0]["step_size"]))
    (w0, b0, eta0), (w1, b1, eta1) = runs
    torch.testing.assert_close(w1, w0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b0, rtol=1e-5, atol=1e-6)
    assert abs(eta1 - eta0) <= 1e-5 * eta0 and eta0 != 1e-2
