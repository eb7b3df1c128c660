"""Adam's moments in the line searches count their updates per parameter, as torch's Adam does:
a parameter that joins late (a group added mid-run, a layer unfrozen by ``requires_grad``)
starts its bias corrections at 1 instead of at the optimizer's count."""

from __future__ import annotations

import math

import pytest
import torch

from lsframe.optim import SlopeTrackingAdam, _blocked
from lsframe.optim.adam_moments import MOMENT_STEPS, adam_directions, cohorts
from lsframe.optim.rules import ActiveGroup


def group(params, grads, **extra):
    return ActiveGroup(
        {"betas": (0.9, 0.999), "eps": 1e-8, "lr_multiplier": 1.0, **extra}, params, grads
    )


def test_each_parameter_takes_the_bias_corrections_of_its_own_count():
    gen = torch.Generator().manual_seed(0)
    early, late = torch.zeros(5), torch.zeros(3)
    state: dict = {early: {}, late: {}}
    grads = [torch.randn(5, generator=gen) for _ in range(4)]
    for step in (1, 2, 3):  # only ``early`` has gradients
        adam_directions(state, [group([early], [grads[step - 1]])], step)
    late_grad = torch.randn(3, generator=gen)
    adam = adam_directions(state, [group([early, late], [grads[3], late_grad])], 4)
    assert state[early][MOMENT_STEPS] == 4 and state[late][MOMENT_STEPS] == 1
    update = adam.update()
    d_late = update.scale * update.num[0][1] / update.den[0][1]
    # first update of ``late``: m̂ = g, v̂ = g², so m̂ / (√v̂ + ε) = g / (|g| + ε)
    torch.testing.assert_close(d_late, late_grad / (late_grad.abs() + 1e-8))
    m, v = state[early]["exp_avg"], state[early]["exp_avg_sq"]
    expected = (m / (1 - 0.9**4)) / ((v / (1 - 0.999**4)).sqrt() + 1e-8)
    torch.testing.assert_close(update.scale * update.num[0][0] / update.den[0][0], expected)
    # the trial direction P ⊙ g of AdamSLS and SaLSA: each its own √v̂
    trial = adam.preconditioned_gradient([group([early, late], [grads[3], late_grad])])
    torch.testing.assert_close(
        trial.num[0][1] / trial.den[0][1], late_grad / (late_grad.abs() + 1e-8)
    )


def test_a_state_saved_without_counts_takes_the_optimizers_count_as_before():
    p = torch.zeros(4)
    state = {p: {"exp_avg": torch.full((4,), 0.1), "exp_avg_sq": torch.full((4,), 0.01)}}
    adam = adam_directions(state, [group([p], [torch.ones(4)])], 7)
    assert state[p][MOMENT_STEPS] == 7
    assert adam.update_denominators[0][0] is adam.denominators[0][0]  # no correction to fold
    assert adam.bias_correction1 == pytest.approx(1 - 0.9**7)


def test_cohorts_split_a_group_only_where_counts_differ():
    a, b, c = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    state = {a: {MOMENT_STEPS: 5}, b: {MOMENT_STEPS: 5}, c: {}}
    whole = group([a, b], [a, b])
    assert cohorts(state, [whole], 5) == [(whole, 5)]
    pairs = cohorts(state, [group([a, c, b], [a, c, b])], 5)
    assert [(len(g.params), count) for g, count in pairs] == [(1, 0), (2, 5)]
    assert pairs[0][0].params[0] is c and state[c][MOMENT_STEPS] == 0  # moments created


def adam_reference_first_step(grad: torch.Tensor, lr: float) -> torch.Tensor:
    x = torch.nn.Parameter(torch.zeros_like(grad))
    x.grad = grad.clone()
    torch.optim.Adam([x], lr=lr, foreach=False).step()
    return x.detach()


@pytest.mark.parametrize("kernels", ["foreach", "blocked", "fused"])
@pytest.mark.parametrize("joins", ["add_param_group", "requires_grad"])
def test_a_late_parameter_of_the_tracker_takes_adams_first_step(monkeypatch, kernels, joins):
    monkeypatch.setattr(_blocked, "BLOCK_BYTES", {} if kernels == "foreach" else {"cpu": 64})
    gen = torch.Generator().manual_seed(1)
    early = torch.nn.Parameter(torch.randn(40, generator=gen))
    late = torch.nn.Parameter(torch.zeros(24))
    fused = kernels == "fused"
    if joins == "add_param_group":
        opt = SlopeTrackingAdam([early], lr=1e-3, fused=fused)
    else:
        late.requires_grad_(False)
        opt = SlopeTrackingAdam([early, late], lr=1e-3, fused=fused)
    for _ in range(6):
        opt.zero_grad()
        early.grad = torch.randn(40, generator=gen)
        opt.step()
    if joins == "add_param_group":
        opt.add_param_group({"params": [late]})
    else:
        late.requires_grad_(True)
    grad = torch.randn(24, generator=gen)
    opt.zero_grad()
    early.grad, late.grad = torch.randn(40, generator=gen), grad.clone()
    opt.step()
    eta = opt.param_groups[-1]["step_size"]
    assert opt.state[late][MOMENT_STEPS] == 1 and opt.state[early][MOMENT_STEPS] == 7
    # the optimizer's count (7) would have made this step 1.9x Adam's (bc1 ≈ 0.52, bc2 ≈ 0.007)
    torch.testing.assert_close(late.detach(), adam_reference_first_step(grad, eta))
    assert math.isclose(late.detach().abs().max().item(), eta, rel_tol=1e-4)
    # the next step's slope along this step: each parameter's direction with its own count
    new = {early: torch.randn(40, generator=gen), late: torch.randn(24, generator=gen)}
    expected = 0.0
    for p, g in new.items():
        t, st = opt.state[p][MOMENT_STEPS], opt.state[p]
        d = (st["exp_avg"] / (1 - 0.9**t)) / ((st["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8)
        expected += float(g @ d)
    opt.zero_grad()
    early.grad, late.grad = new[early], new[late]
    opt.step()
    assert opt.search_state["alignment"] == pytest.approx(expected, rel=1e-5)


def test_groups_with_their_own_beta1_each_take_their_own_bias_correction():
    a, b = torch.zeros(3), torch.zeros(3)
    state: dict = {a: {}, b: {}}
    gen = torch.Generator().manual_seed(2)
    for step in (1, 2):
        grads = [torch.randn(3, generator=gen), torch.randn(3, generator=gen)]
        groups = [group([a], grads[:1]), group([b], grads[1:], betas=(0.5, 0.999))]
        adam = adam_directions(state, groups, step)
    update = adam.update()
    for i, (p, beta1) in enumerate(((a, 0.9), (b, 0.5))):
        m, v = state[p]["exp_avg"], state[p]["exp_avg_sq"]
        expected = (m / (1 - beta1**2)) / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
        torch.testing.assert_close(update.scale * update.num[i][0] / update.den[i][0], expected)
