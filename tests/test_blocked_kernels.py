"""The eager one-pass kernels on CPU: the cache-blocked ones take the foreach kernels' steps bit
for bit (same moments, same parameters; the alignment's sums differ only by float32 rounding);
torch's fused AdamW kernel, which takes the contiguous tensors' Adam steps, agrees with them to
float rounding."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lsframe.optim import SlopeTrackingAdam, _blocked, adam_moments, slope_tracking_adam


def problem(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 10, generator=gen)
    y = x @ torch.randn(10, 1, generator=gen) + 0.3 * torch.randn(96, 1, generator=gen)
    torch.manual_seed(0)
    # 10·13 = 130 weights: eight blocks of 16 (64 bytes of float32) and a short one
    model = torch.nn.Sequential(torch.nn.Linear(10, 13), torch.nn.Tanh(), torch.nn.Linear(13, 1))
    strided = torch.nn.Parameter(torch.randn(13, 2, generator=gen)[:, :1])  # not flat: whole
    return model.to(dtype), strided.data.to(dtype), x.to(dtype), y.to(dtype)


def eager_kernels(
    monkeypatch, blocked: bool, torch_fused: bool = False, batched: bool = True
) -> None:
    monkeypatch.setattr(_blocked, "BLOCK_BYTES", {"cpu": 64} if blocked else {})
    fused_on = frozenset({"cpu"}) if torch_fused else frozenset()
    monkeypatch.setattr(adam_moments, "TORCH_FUSED_ADAM_ON", fused_on)
    if not batched:  # the loop over the tensors, as for strided rows or sharded tensors
        monkeypatch.setattr(slope_tracking_adam, "batched_on", lambda grads: False)


def run(
    monkeypatch,
    blocked: bool,
    measure: str,
    dtype: torch.dtype,
    torch_fused: bool = False,
    batched: bool = True,
):
    eager_kernels(monkeypatch, blocked, torch_fused, batched)
    model, strided, x, y = problem(dtype)
    strided = torch.nn.Parameter(strided)
    groups = [
        {"params": model[0].parameters(), "lr_multiplier": 0.5},
        {"params": [*model[2].parameters(), strided], "weight_decay": 0.0},
    ]
    opt = SlopeTrackingAdam(groups, lr=3e-3, weight_decay=0.01, alignment_measure=measure)
    trace = []
    for i in range(10):
        first = opt.param_groups[0]  # an anneal's last step: multiplier 0, the moments move
        first["lr_multiplier"] = 0.0 if i == 7 else 0.5
        first["lr"] = first["step_size"] * first["lr_multiplier"]
        opt.zero_grad()
        rows = slice(i % 3 * 32, (i % 3 + 1) * 32)
        out = model(x[rows]) + (x[rows, :1] * strided.sum())
        loss = torch.nn.functional.mse_loss(out.float(), y[rows].float())
        loss.backward()
        if i == 4:  # an inf entry: the step is rejected, nothing moves
            model[0].weight.grad[3, 5] = float("inf")
        opt.step()
        tensors = [t.detach().clone() for t in (*model.parameters(), strided)]
        params = [*model.parameters(), strided]
        moments = [opt.state[p][key].clone() for p in params for key in ("exp_avg", "exp_avg_sq")]
        trace.append((tensors, moments, opt.search_state["alignment"], opt.last_step["rejected"]))
    return trace, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("measure", ["slope", "cosine"])
def test_blocked_kernels_take_the_foreach_steps_bit_for_bit(monkeypatch, measure, dtype):
    foreach, foreach_opt = run(monkeypatch, False, measure, dtype)
    blocked, blocked_opt = run(monkeypatch, True, measure, dtype)
    # off CPU's blocked kernels, float32 sums are batched across the tensors; bf16 ones looped
    assert foreach_opt._kernels == ("batched" if dtype == torch.float32 else None)
    assert blocked_opt._kernels == "blocked"
    for i, (ours, theirs) in enumerate(zip(blocked, foreach)):
        assert ours[3] == theirs[3] == (i == 4)
        assert all(torch.equal(a, b) for a, b in zip(ours[0], theirs[0])), i
        assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1])), i
        a, b = ours[2], theirs[2]
        assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-5 * max(abs(b), 1e-12))
    assert blocked[-1][2] is not None  # the rule ran, and moved the weights off their start
    assert not torch.equal(blocked[-1][0][0], problem(dtype)[0][0].weight)
    sizes = [g["step_size"] for g in blocked_opt.param_groups]
    assert sizes == pytest.approx([g["step_size"] for g in foreach_opt.param_groups], rel=1e-5)


@pytest.mark.parametrize("measure", ["slope", "cosine"])
def test_sums_batched_across_tensors_take_the_loops_steps_to_rounding(monkeypatch, measure):
    looped, looped_opt = run(monkeypatch, False, measure, torch.float32, batched=False)
    monkeypatch.undo()
    batched, batched_opt = run(monkeypatch, False, measure, torch.float32)
    assert looped_opt._kernels is None and batched_opt._kernels == "batched"
    for i, (ours, theirs) in enumerate(zip(batched, looped)):
        assert ours[3] == theirs[3] == (i == 4)  # the inf entry rejects the step in both
        for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        a, b = ours[2], theirs[2]
        assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-5 * max(abs(b), 1e-12))
    assert batched[-1][2] is not None
    sizes = [g["step_size"] for g in batched_opt.param_groups]
    assert sizes == pytest.approx([g["step_size"] for g in looped_opt.param_groups], rel=1e-5)


def test_batched_sums_match_a_direct_computation_piece_by_piece(monkeypatch):
    from lsframe.optim import _alignment
    from lsframe.optim.rules import ActiveGroup

    gen = torch.Generator().manual_seed(5)
    params = [
        torch.nn.Parameter(torch.randn(*shape, generator=gen))
        for shape in [(7, 3), (5,), (0,), (4, 4)]
    ]
    group = {"params": params, "betas": (0.9, 0.999), "eps": 1e-3}
    state = {}
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
        state[p] = {
            "exp_avg": torch.randn(p.shape, generator=gen),
            "exp_avg_sq": torch.rand(p.shape, generator=gen),
        }
    active = ActiveGroup(group, params, [p.grad for p in params])
    monkeypatch.setitem(_alignment.QUOTIENT_BYTES, "cpu", 64)  # pieces of about 8 floats
    (sums,) = _alignment.batched_direction_sums(state, [(active, 3)])
    root = (1 - 0.999**3) ** 0.5
    g = torch.cat([p.grad.reshape(-1) for p in params]).double()
    m = torch.cat([state[p]["exp_avg"].reshape(-1) for p in params]).double()
    v = torch.cat([state[p]["exp_avg_sq"].reshape(-1) for p in params]).double()
    d = m / (v.sqrt() + 1e-3 * root)
    assert sums == pytest.approx([float(g @ d), float(g @ g), float(d @ d)], rel=1e-5)
    params[0].grad[1, 2] = float("nan")
    (sums,) = _alignment.batched_direction_sums(state, [(active, 3)])
    assert not math.isfinite(sums[1])


@pytest.mark.parametrize("measure", ["slope", "cosine"])
def test_torch_fused_adam_steps_agree_with_the_foreach_steps_to_rounding(monkeypatch, measure):
    assert adam_moments._torch_fused_runs("cpu")  # probed once, before the spy goes in
    calls = []
    kernel = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(a) or kernel(*a, **k))
    foreach, foreach_opt = run(monkeypatch, False, measure, torch.float32)
    assert not calls
    fused, fused_opt = run(monkeypatch, True, measure, torch.float32, torch_fused=True)
    assert fused_opt._kernels == "blocked" and calls
    # two groups, nine accepted steps; the strided parameter is not contiguous: it takes the
    # blocked kernel, and each call holds its group's two contiguous tensors
    assert len(calls) == 18 and all(len(params) == 2 for params, *_ in calls)
    model, strided, *_ = problem(torch.float32)
    start = [*model.parameters(), strided]
    for i, (ours, theirs) in enumerate(zip(fused, foreach)):
        assert ours[3] == theirs[3] == (i == 4)
        if i == 0:  # the same moments from the same gradient
            assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))
        # the parameters within rounding of their own size (an ulp of x is ~2e-5 of the
        # movement here; a step without its weight decay would be ~1e-2 off)
        for a, b, x0 in zip(ours[0], theirs[0], start):
            assert (a - b).abs().max() <= 1e-3 * (b - x0).abs().max(), i
        for a, b in zip(ours[1], theirs[1]):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), i
    assert not torch.equal(fused[-1][0][0], start[0])
    sizes = [g["step_size"] for g in fused_opt.param_groups]
    assert sizes == pytest.approx([g["step_size"] for g in foreach_opt.param_groups], rel=1e-4)


def test_blocks_cover_every_element_once_and_leave_strided_tensors_whole(monkeypatch):
    monkeypatch.setattr(_blocked, "BLOCK_BYTES", {"cpu": 64})
    flat = torch.arange(50.0)
    pieces = [b for (b,) in _blocked.blocks(flat)]
    assert [p.numel() for p in pieces] == [16, 16, 16, 2]
    assert torch.equal(torch.cat(pieces), flat) and all(p._base is flat for p in pieces)
    matrix = torch.zeros(4, 4)
    assert list(_blocked.blocks(matrix, matrix)) == [(matrix, matrix)]
    assert _blocked.blocked_on([flat]) and not _blocked.blocked_on([])
    monkeypatch.setattr(_blocked, "BLOCK_BYTES", {})
    assert not _blocked.blocked_on([flat])


def test_direction_sums_match_a_direct_computation_and_a_non_finite_entry_shows_in_the_square():
    gen = torch.Generator().manual_seed(3)
    g, m = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    v = torch.rand(300, generator=gen)
    d = m / (v.sqrt() + 1e-3)
    sums = _blocked.direction_sums(g, m, v, 1e-3)
    torch.testing.assert_close(sums, torch.stack([g @ d, g @ g, d @ d]), rtol=1e-6, atol=0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        g[7] = bad
        assert not torch.isfinite(_blocked.direction_sums(g, m, v, 1e-3)[1])
    empty = torch.empty(0)
    assert torch.equal(_blocked.direction_sums(empty, empty, empty, 1e-3), torch.zeros(3))


@pytest.mark.parametrize("kernels", ["blocked", "batched"])
def test_a_finite_gradient_whose_square_overflows_still_steps(monkeypatch, kernels):
    monkeypatch.setattr(_blocked, "BLOCK_BYTES", {"cpu": 64} if kernels == "blocked" else {})
    weight = torch.nn.Parameter(torch.zeros(40))
    opt = SlopeTrackingAdam([weight], lr=1e-3)
    weight.grad = torch.full((40,), 1e20)  # finite, but ‖g‖² overflows float32
    opt.step()
    assert opt._kernels == kernels
    assert not opt.last_step["rejected"] and torch.all(weight < 0)
    weight.grad = torch.full((40,), 1.0)
    weight.grad[5] = float("nan")
    before = weight.detach().clone()
    opt.step()
    assert opt.last_step["rejected"] and torch.equal(weight, before)


@pytest.mark.parametrize("torch_fused", [False, True])
def test_a_blocked_tracker_resumes_exactly(monkeypatch, torch_fused):
    eager_kernels(monkeypatch, True, torch_fused)
    model, _, x, y = problem(torch.float32)
    opt = SlopeTrackingAdam(model.parameters(), lr=3e-3)

    def step(net, o, i):
        o.zero_grad()
        torch.nn.functional.mse_loss(net(x[i % 3 * 32 :][:32]), y[i % 3 * 32 :][:32]).backward()
        o.step()

    for i in range(4):
        step(model, opt, i)
    resumed_model = copy.deepcopy(model)
    resumed = SlopeTrackingAdam(resumed_model.parameters())
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for i in range(4, 9):
        step(model, opt, i)
        step(resumed_model, resumed, i)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))
    assert resumed.param_groups[0]["step_size"] == opt.param_groups[0]["step_size"]


def salsa_run(monkeypatch, blocked: bool, torch_fused: bool = False):
    from lsframe.optim import SaLSA

    eager_kernels(monkeypatch, blocked, torch_fused)
    model, _, x, y = problem(torch.float32)
    opt = SaLSA(model.parameters(), lr=1e-2, weight_decay=0.01)
    params, searched = [], []
    for i in range(150):
        rows = slice(i % 3 * 32, (i % 3 + 1) * 32)

        def closure(backward: bool = True, rows: slice = rows):
            with torch.set_grad_enabled(backward):
                loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss.detach()

        opt.step(closure)
        params.append([p.detach().clone() for p in model.parameters()])
        searched.append(opt.last_step["searched"])
    return params, searched


def test_salsas_steps_without_search_take_the_foreach_steps_bit_for_bit(monkeypatch):
    foreach, searched = salsa_run(monkeypatch, False)
    blocked, searched_blocked = salsa_run(monkeypatch, True)
    assert searched == searched_blocked and any(searched) and not all(searched)
    for i, (ours, theirs) in enumerate(zip(blocked, foreach)):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), i


def test_salsas_steps_without_search_take_torch_fused_adam_steps_to_rounding(monkeypatch):
    foreach, searched = salsa_run(monkeypatch, False)
    fused, searched_fused = salsa_run(monkeypatch, True, torch_fused=True)
    assert searched_fused[:50] == searched[:50] and not all(searched_fused)
    for ours, theirs in zip(fused[:50], foreach[:50]):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_torch_build_without_the_fused_kernel_takes_the_blocked_steps(monkeypatch):
    foreach, _ = run(monkeypatch, False, "slope", torch.float32)

    def missing(*args, **kwargs):
        raise NotImplementedError("no CPU kernel in this build")

    monkeypatch.setattr(torch, "_fused_adamw_", missing)
    adam_moments._torch_fused_runs.cache_clear()
    try:
        blocked, _ = run(monkeypatch, True, "slope", torch.float32, torch_fused=True)
        assert not adam_moments._torch_fused_runs("cpu")
    finally:
        adam_moments._torch_fused_runs.cache_clear()
    for ours, theirs in zip(blocked, foreach):
        assert all(torch.equal(a, b) for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]))
