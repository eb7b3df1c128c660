"""SlopeTrackingAdam: the step alignment and the step-size rule, recomputed by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lsframe import optim
from lsframe.optim import SlopeTrackingAdam

#: the rule most hand computations below are written for (the defaults until 2026-12): the
#: minimum of the two horizons on every step, on cosines, with no cap on repeated batches
EARLIER = {
    k: v
    for k, v in optim.info("slope_tracking_adam").preset("earlier_defaults").items()
    if k != "lr"
}


def problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.3 * torch.randn(256, 1, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, x, y


def twin_of(model):
    """A second model with ``model``'s architecture and weights."""
    twin = problem()[0]
    twin.load_state_dict(model.state_dict())
    return twin


def closure_for(model, opt, x, y):
    def closure(backward: bool = True) -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss.detach()

    return closure


def batches(x, y, step: int, size: int = 32):
    start = step * size % len(x)
    return x[start : start + size], y[start : start + size]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_the_alignment_is_the_cosine_of_the_fresh_gradient_with_the_last_step_taken():
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3, alignment_measure="cosine")
    checked, last_direction = 0, None
    for step in range(12):
        before = flat(p.detach().clone() for p in model.parameters())
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        grad = flat(p.grad for p in model.parameters())
        if last_direction is not None:  # the last step moved by −η·d: d = Δ/(−η)
            expected = torch.nn.functional.cosine_similarity(grad, last_direction, dim=0)
            assert opt.search_state["alignment"] == pytest.approx(float(expected), abs=1e-5)
            assert opt.last_step["alignment"] == opt.search_state["alignment"]
            checked += 1
        after = flat(p.detach() for p in model.parameters())
        last_direction = (before - after) / opt.param_groups[0]["step_size"]
        assert (opt.search_state["alignment"] is None) == (step == 0)
    assert checked == 11


@pytest.mark.parametrize("fused", [False, True])
def test_the_slope_measure_is_the_fresh_gradients_inner_product_with_the_last_step(fused):
    if fused:
        pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3, alignment_measure="slope", fused=fused)
    checked, last_direction, alignments = 0, None, []
    for step in range(8):
        before = flat(p.detach().clone() for p in model.parameters())
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        grad = flat(p.grad for p in model.parameters())
        if last_direction is not None:
            expected = float(grad @ last_direction)
            assert opt.search_state["alignment"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
            checked += 1
            alignments.append(opt.search_state["alignment"])
        after = flat(p.detach() for p in model.parameters())
        last_direction = (before - after) / opt.param_groups[0]["step_size"]
    assert checked == 7
    assert max(abs(a) for a in alignments) > 1.0  # a slope, not a cosine in [−1, 1]


def test_the_slope_is_the_scaled_inner_product_and_none_where_the_cosine_is_none():
    from lsframe.optim._alignment import cosine, projected_slope

    sums = [[2.0, 4.0, 1.0], [-1.0, 1.0, 9.0]]  # per group ⟨g, d'⟩, ‖g‖², ‖d'‖²
    assert projected_slope(sums, [0.5, 2.0]) == pytest.approx(2.0 * 0.5 - 1.0 * 2.0)
    for empty in ([[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]], [[float("nan"), 1.0, 1.0]]):
        assert projected_slope(empty, [1.0]) is None and cosine(empty, [1.0]) is None


def test_on_slopes_the_step_size_follows_the_same_documented_rule():
    torch.manual_seed(0)
    model, x, y = problem()
    betas = (0.5, 0.8, 0.9)
    opt = SlopeTrackingAdam(
        model.parameters(),
        lr=1e-4,
        max_change=1.5,
        alignment_betas=betas,
        alignment_measure="slope",
        combine_horizons="min",
        burn_in=False,
    )
    alignments, etas = alignments_and_step_sizes(opt, model, x, y)
    assert etas == pytest.approx(reference_step_sizes(alignments, 1e-4, 1.5, betas, False))
    # from the same start the cosine's rule takes other steps: the slopes weigh steps unequally
    torch.manual_seed(0)
    twin = problem()[0]
    cosine = SlopeTrackingAdam(
        twin.parameters(), lr=1e-4, max_change=1.5, alignment_betas=betas, **EARLIER
    )
    assert alignments_and_step_sizes(cosine, twin, x, y)[1] != pytest.approx(etas)


@pytest.mark.parametrize("stride", [4, 16])
def test_a_strided_alignment_reads_every_kth_row_of_the_large_matrices_moving_each_step(stride):
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(
        model.parameters(), lr=1e-3, alignment_stride=stride, alignment_measure="cosine"
    )
    last_steps, checked = None, 0
    for step in range(10):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        if last_steps is not None:  # by hand: rows step mod k, k::k, … of the 16 × 8 weight
            sums = torch.zeros(3, dtype=torch.float64)
            for p, d in zip(model.parameters(), last_steps):
                g = p.grad.double()
                if p.dim() == 2 and p.shape[0] >= stride:
                    g, d = g[step % stride :: stride], d[step % stride :: stride]
                    weight = p.shape[0] / g.shape[0]
                else:
                    weight = 1.0
                sums += weight * torch.stack([(g * d).sum(), (g * g).sum(), (d * d).sum()])
            expected = float(sums[0] / (sums[1] * sums[2]).sqrt())
            assert opt.search_state["alignment"] == pytest.approx(expected, abs=1e-5)
            checked += 1
        last_steps = [(b - a.detach()).double() for b, a in zip(before, model.parameters())]
    assert checked == 9
    with pytest.raises(ValueError, match="alignment_stride"):
        SlopeTrackingAdam(model.parameters(), alignment_stride=0)


def test_a_strided_tracker_resumes_exactly_mid_rotation_and_skips_a_nan_gradient():
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3, alignment_stride=4)
    for step in range(7):  # 7 steps: the rows read next are not the rotation's first
        opt.step(closure_for(model, opt, *batches(x, y, step)))
    saved = twin_of(model), copy.deepcopy(opt.state_dict())  # state_dict() holds references
    resumed = SlopeTrackingAdam(saved[0].parameters(), lr=1e-3, alignment_stride=4)
    resumed.load_state_dict(saved[1])
    for step in range(7, 14):
        for m, o in ((model, opt), (saved[0], resumed)):
            o.step(closure_for(m, o, *batches(x, y, step)))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved[0].parameters()))
    assert opt.search_state == resumed.search_state
    before = [p.detach().clone() for p in model.parameters()]
    base = closure_for(model, opt, *batches(x, y, 14))

    def nan_closure(backward: bool = True):
        loss = base(backward)
        model[0].weight.grad[5, 3] = float("nan")  # row 5: not among the rows read this step
        return loss

    opt.step(nan_closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.search_state["rejected_steps"] == 1


def reference_step_sizes(
    alignments,
    eta0,
    max_change,
    betas,
    gain_decay=True,
    fresh=None,
    combine="min",
    cap=False,
    ceiling=math.inf,
    burn_in=0,
):
    """The rule of the docstring, written out independently (``fresh``: how many alignments
    come from the first pass over the data; from there on, η may not grow; ``burn_in``: before
    that many alignments η may not grow; ``combine``: the
    horizons' exponent, z_slow where both agree in sign, else 0 for "agree", else the min;
    for "significant" the min where |z_slow| ≥ 2·√((1−β)(1+βⁿ)/((1+β)(1−βⁿ))), else 0;
    ``cap``: after the first pass η may grow, but not above the first pass's largest η;
    ``ceiling``: η never above it)."""
    fast, slow, square = betas
    means, second = [0.0, 0.0], 0.0
    changes, last_sign, etas, eta = 0, 0, [], eta0
    peak = eta0
    for n, a in enumerate(alignments, start=1):
        means = [beta * m + (1 - beta) * a for beta, m in zip((fast, slow), means)]
        second = square * second + (1 - square) * a * a
        s_hat = second / (1 - square**n)
        z = [
            max(-1.0, min(1.0, m / (1 - beta**n) / math.sqrt(s_hat)))
            for beta, m in zip((fast, slow), means)
        ]
        sign = (z[1] > 0) - (z[1] < 0)
        if gain_decay and sign and last_sign and sign != last_sign:
            changes += 1
        last_sign = sign or last_sign
        if combine == "significant":
            se = math.sqrt((1 - slow) * (1 + slow**n) / ((1 + slow) * (1 - slow**n)))
            exponent = min(z) if abs(z[1]) >= 2 * se else 0.0
        elif combine != "min" and z[0] * z[1] > 0:
            exponent = z[1]
        else:
            exponent = 0.0 if combine == "agree" else min(z)
        change = max_change ** (exponent / math.sqrt(1 + changes))
        if n < burn_in:
            change = min(change, 1.0)
        if fresh is None or n <= fresh:
            eta *= change
            peak = max(peak, eta)
        elif cap:
            eta = min(eta * change, max(peak, eta))
        else:
            eta *= min(change, 1.0)
        eta = min(eta, ceiling)
        etas.append(eta)
    return etas


def alignments_and_step_sizes(opt, model, x, y, steps: int = 40):
    """Train ``steps`` steps; the alignment and step size of each step that had an alignment."""
    alignments, etas = [], []
    for step in range(steps):
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        if opt.search_state["alignment"] is not None:
            alignments.append(opt.search_state["alignment"])
            etas.append(opt.param_groups[0]["step_size"])
    return alignments, etas


@pytest.mark.parametrize(
    "betas, gain_decay",
    [((0.6, 0.6, 0.9), True), ((0.6, 0.6, 0.9), False), ((0.5, 0.8, 0.9), True)],
)
def test_the_step_size_follows_the_documented_rule_from_the_alignments(betas, gain_decay):
    torch.manual_seed(0)
    model, x, y = problem()
    opt = SlopeTrackingAdam(
        model.parameters(),
        lr=1e-4,
        max_change=1.5,
        alignment_betas=betas,
        gain_decay=gain_decay,
        **EARLIER,
    )
    alignments, etas = alignments_and_step_sizes(opt, model, x, y)
    expected = reference_step_sizes(alignments, 1e-4, 1.5, betas, gain_decay)
    assert etas == pytest.approx(expected, rel=1e-9)
    # it went up and came down again within the run, and never by more than ×1.5 per step
    assert max(etas) > 1e-4 * 1.5**3 and etas[-1] < max(etas)
    ratios = [b / a for a, b in zip([1e-4, *etas], etas)]
    assert all(1 / 1.5 - 1e-12 <= r <= 1.5 + 1e-12 for r in ratios)
    assert (opt.search_state["sign_changes"] >= 1) == gain_decay


def test_each_step_is_adams_update_at_the_tracked_step_size():
    torch.manual_seed(0)
    model, x, y = problem()
    twin = twin_of(model)
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3)
    adam = torch.optim.Adam(twin.parameters(), lr=1e-3)
    for step in range(20):
        xb, yb = batches(x, y, step)
        opt.step(closure_for(model, opt, xb, yb))
        adam.param_groups[0]["lr"] = opt.param_groups[0]["step_size"]  # the η this step used
        adam.step(closure_for(twin, adam, xb, yb))
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_it_never_calls_the_forward_only_closure_and_starts_at_a_harmless_step():
    model, x, y = problem()
    opt = optim.create("slope_tracking_adam", model.parameters())
    calls = []

    def forward():
        calls.append(1)
        return torch.tensor(0.0)

    before = flat(p.detach().clone() for p in model.parameters())
    opt.step(closure_for(model, opt, x, y), forward=forward)
    moved = (flat(p.detach() for p in model.parameters()) - before).abs().max()
    assert not calls and opt.last_step["trials"] == 0
    # Adam's first step is ±η per coordinate (up to float32 rounding of x ± η, |x| < 1)
    assert float(moved) <= opt.defaults["lr"] + 2 * torch.finfo(torch.float32).eps


def test_a_learning_rate_multiplier_scales_the_direction_the_alignment_uses():
    torch.manual_seed(0)
    model, x, y = problem()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    groups = [{"params": first, "lr_multiplier": 0.25}, {"params": second}]
    opt = SlopeTrackingAdam(groups, lr=1e-3, alignment_measure="cosine")
    last = None
    for step in range(3):
        before = flat(p.detach().clone() for p in model.parameters())
        opt.step(closure_for(model, opt, *batches(x, y, step)))
        if last is not None:
            grad = flat(p.grad for p in model.parameters())
            expected = torch.nn.functional.cosine_similarity(grad, last, dim=0)
            assert opt.search_state["alignment"] == pytest.approx(float(expected), abs=1e-5)
        last = (before - flat(p.detach() for p in model.parameters())) / opt.param_groups[0][
            "step_size"
        ]


def test_without_a_closure_it_steps_on_the_callers_gradients_like_a_torch_optimizer():
    torch.manual_seed(0)
    model, x, y = problem()
    twin = twin_of(model)
    opt = SlopeTrackingAdam(model.parameters(), lr=1e-3, burn_in=False)  # η moves from step 2
    ref = SlopeTrackingAdam(twin.parameters(), lr=1e-3, burn_in=False)
    for step in range(10):
        xb, yb = batches(x, y, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        assert opt.step() is None
        # a torch-style closure (no ``backward`` argument) is taken as well
        ref.step(lambda xb=xb, yb=yb: closure_for(twin, ref, xb, yb)())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert opt.param_groups[0]["step_size"] == ref.param_groups[0]["step_size"] != 1e-3
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # a non-finite gradient is a rejected step, as with a closure
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert opt.search_state["rejected_steps"] == 1
