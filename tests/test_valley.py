"""Valley exploration (P2): the adaptor's formula, Lamb, ALTO, AdamE, the callback, and the
cross-check against the authors' PyPI package ``e-optimizer-adaptor``."""

from __future__ import annotations

import copy
import importlib.util
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import TinyRegression, loader, trainer
from optim_problem import F_STAR, Logistic, make_closure
from test_dps import Recorder

from lsframe.callbacks import DPS, ChildTuningD, ValleyExploration
from lsframe.optim import ALSALS, ALTO, AdamE, Lamb, create
from lsframe.optim.valley import init_valley_state, valley_adapt_, valley_defaults

GRADS = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([-1.0, 4.0])]


def hand_adapted(grads, alpha, beta, kick):
    prev = torch.zeros_like(grads[0]) if kick else grads[0]
    a, out = torch.zeros_like(grads[0]), []
    for g in grads:
        a = beta * a + (1 - beta) * (g - prev)
        prev = g
        out.append(g + alpha * a)
    return out


@pytest.mark.parametrize("kick", [False, True])
def test_adapted_gradient_equals_the_formula_on_a_hand_sequence(kick):
    alpha, beta = -5.0, 0.9
    grads = [g.clone() for g in GRADS]
    prev, diffs = init_valley_state([grads[0]], alpha, beta, kick)
    adapted = [grads[0].clone()]
    for g in grads[1:]:
        valley_adapt_([g], prev, diffs, alpha, beta)
        adapted.append(g.clone())
        assert torch.equal(prev[0], GRADS[len(adapted) - 1])  # g_prev is the raw gradient
    for got, want in zip(adapted, hand_adapted(GRADS, alpha, beta, kick)):
        torch.testing.assert_close(got, want)
    if not kick:
        assert torch.equal(adapted[0], GRADS[0])  # no first-step kick


def test_alpha_bound_and_batch_size_rule():
    assert valley_defaults(4096) == (-5.0, 0.99) and valley_defaults(32) == (0.5, 0.01)
    with pytest.raises(ValueError, match=r"\|alpha\| < 1/\(1 - beta\) = 10 "):
        AdamE([torch.zeros(1, requires_grad=True)], alpha=-11.0, valley_beta=0.9)
    with pytest.raises(ValueError, match="alpha"):
        ALTO([torch.zeros(1, requires_grad=True)], alpha=5.0, valley_beta=0.1)
    with pytest.raises(ValueError, match="alpha and beta"):
        ValleyExploration(alpha=0.5)
    opt = ALTO([torch.zeros(1, requires_grad=True)], batch_size=256)
    assert (opt.param_groups[0]["valley_alpha"], opt.param_groups[0]["valley_beta"]) == (0.5, 0.01)
    with pytest.raises(ValueError, match="betas"):
        Lamb([torch.zeros(1, requires_grad=True)], betas=(1.0, 0.9))


def lamb_by_hand(x, grads, lr, b1, b2, eps, wd, clip):
    m, v, x = torch.zeros_like(x), torch.zeros_like(x), x.clone()
    for t, g in enumerate(grads, 1):
        g = g * min(1.0, clip / (float(g.norm()) + 1e-6))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * x
        x = x - lr * float(x.norm() / r.norm()) * r
    return x


def test_lamb_trust_ratio_update_matches_a_hand_computation():
    x0 = torch.tensor([0.5, -1.0, 2.0])
    grads = [torch.tensor([3.0, 0.1, -0.2]), torch.tensor([-0.5, 0.4, 0.3])]
    p = x0.clone().requires_grad_()
    opt = Lamb([p], lr=0.1, weight_decay=0.01)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        assert torch.equal(p.grad, g)  # the clip acts on an internal copy
    want = lamb_by_hand(x0, grads, 0.1, 0.9, 0.999, 1e-6, 0.01, clip=1.0)
    torch.testing.assert_close(p.detach(), want)
    # a no-decay group takes plain (clipped) Adam steps; a zero tensor gets trust ratio 1
    q, z = torch.tensor([1.0, 1.0], requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = Lamb([{"params": [q], "weight_decay": 0.0}, {"params": [z]}], lr=0.1)
    q.grad, z.grad = torch.tensor([0.3, -0.4]), torch.tensor([0.3, -0.4])
    opt.step()
    adam_step = 0.1 * torch.tensor([0.3, -0.4]) / (torch.tensor([0.3, 0.4]) + 1e-6)
    torch.testing.assert_close(q.detach(), torch.ones(2) - adam_step)
    torch.testing.assert_close(z.detach(), -adam_step)


def test_alto_is_lamb_on_the_adapted_clipped_gradient():
    x0 = torch.tensor([0.5, -1.0])
    p = x0.clone().requires_grad_()
    opt = ALTO([p], lr=0.05, alpha=-5.0, valley_beta=0.9, max_grad_norm=2.0)
    grads = [g * 1.0 for g in GRADS]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    clipped = [g * min(1.0, 2.0 / (float(g.norm()) + 1e-6)) for g in grads]
    adapted = hand_adapted(clipped, -5.0, 0.9, kick=False)
    want = lamb_by_hand(x0, adapted, 0.05, 0.9, 0.99, 1e-6, 1e-4, clip=float("inf"))
    torch.testing.assert_close(p.detach(), want)
    assert len(opt.state[p]) == 5  # step, m, v, g_prev, a


@pytest.mark.parametrize("name", ["lamb", "alto", "adame"])
def test_converges_on_the_convex_problem(name):
    model = Logistic()
    opt = create(name, model.parameters(), lr=0.05)
    closure = make_closure(model, opt)
    for _ in range(400):
        opt.step(closure)
    assert float(model.loss()) - F_STAR < 5e-3


@pytest.mark.parametrize("name", ["lamb", "alto", "adame"])
def test_state_dict_round_trip_resumes_the_exact_trajectory(name):
    def run(model, opt, steps, start):
        for step in range(start, start + steps):
            index = torch.arange(step * 32 % 256, step * 32 % 256 + 32)
            opt.step(make_closure(model, opt, index))

    model = Logistic()
    opt = create(name, model.parameters(), lr=0.05)
    run(model, opt, 5, 0)
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, 5, 5)
    resumed = Logistic()
    resumed.load_state_dict(saved[0])
    opt2 = create(name, resumed.parameters(), lr=0.05)
    opt2.load_state_dict(saved[1])
    run(resumed, opt2, 5, 5)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_adame_adapts_the_closure_gradient_and_leaves_the_raw_one():
    p = torch.tensor([1.0, -1.0], requires_grad=True)
    opt = AdamE([p], lr=0.1, alpha=0.5, valley_beta=0.5)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        raw = 2 * p.detach().clone()
        opt.step(closure)
        assert torch.equal(p.grad, raw)
    assert len(calls) == 3


needs_reference = pytest.mark.skipif(
    importlib.util.find_spec("E") is None, reason="e-optimizer-adaptor is not installed"
)


def gradient_sequence(steps=6):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(3, 4, generator=gen), torch.randn(4, generator=gen)] for _ in range(steps)]


def drive(opt, params, sequence):
    for grads in sequence:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()


@needs_reference
def test_adame_matches_the_authors_e_adaptor_on_adamw():
    from E import E

    init = [torch.randn(3, 4), torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in init]
    theirs = [t.clone().requires_grad_() for t in init]
    kwargs = dict(lr=1e-2, weight_decay=0.01)
    adam_e = AdamE(ours, alpha=-5.0, valley_beta=0.99, first_step_kick=True, **kwargs)
    reference = E(torch.optim.AdamW(theirs, **kwargs), alpha=-5.0, beta=0.99)
    sequence = gradient_sequence()
    drive(adam_e, ours, sequence)
    drive(reference, theirs, sequence)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # lsframe's default (no first-step kick) differs, and only through the first step
    plain = [t.clone().requires_grad_() for t in init]
    drive(AdamE(plain, alpha=-5.0, valley_beta=0.99, **kwargs), plain, sequence)
    assert not torch.allclose(plain[0], ours[0])


@needs_reference
def test_alto_matches_the_authors_alto():
    from ALTO import ALTO as ReferenceALTO

    init = [torch.randn(3, 4), torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in init]
    theirs = [t.clone().requires_grad_() for t in init]
    alto = ALTO(ours, lr=1e-2, alpha=-5.0, valley_beta=0.99, first_step_kick=True)
    reference = ReferenceALTO(
        theirs, lr=1e-2, betas=(0.99, 0.9, 0.99), alp=-5.0, eps=1e-6, weight_decay=1e-4
    )
    sequence = [[5 * g for g in grads] for grads in gradient_sequence()]  # the clip is active
    drive(alto, ours, sequence)
    drive(reference, theirs, sequence)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def run_callback(callbacks, steps=4, optimizer=None, **kwargs):
    module = TinyRegression(optimizer=optimizer or partial(torch.optim.SGD, lr=0.05), **kwargs)
    trainer(max_steps=steps, callbacks=callbacks).fit(module, loader(32, 4))
    return module


def test_callback_feeds_the_optimizer_the_adapted_gradient_and_restores_the_raw_one():
    before, after = Recorder(), Recorder()
    callback = ValleyExploration(alpha=0.5, beta=0.3)
    run_callback([before, callback, after])
    for name in before.grads[0]:
        raw = [g[name] for g in before.grads]
        for got, want in zip([g[name] for g in after.grads], hand_adapted(raw, 0.5, 0.3, False)):
            torch.testing.assert_close(got, want)
        assert torch.equal(callback.prev[name], raw[-1])


def test_callback_state_resumes_the_exact_trajectory(tmp_path):
    data = loader(4, 4)  # one batch per epoch
    make = lambda: TinyRegression(optimizer=partial(torch.optim.AdamW, lr=1e-2))  # noqa: E731
    reference = make()
    trainer(max_steps=6, callbacks=[ValleyExploration(0.5, 0.3)]).fit(reference, data)
    first = make()
    stop = trainer(max_steps=3, callbacks=[ValleyExploration(0.5, 0.3)])
    stop.fit(first, data)
    stop.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = make()
    trainer(max_steps=6, callbacks=[ValleyExploration(0.5, 0.3)]).fit(
        resumed, data, ckpt_path=tmp_path / "mid.ckpt"
    )
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_callback_composes_with_alsals_and_dps():
    before, after = Recorder(), Recorder()
    valley, dps = ValleyExploration(), DPS(p=0.5, update_ratio=0.25, max_steps=8)
    module = run_callback([before, valley, dps, after], steps=8, optimizer=ALSALS)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert module.trainer.optimizers[0].search_state["searches"] > 0
    # batch 4 < 1,024: the rule picks alpha 0.5, beta 0.01
    assert (valley.alpha, valley.beta) == (0.5, 0.01)
    # step 4 is in stage II: adapted first, then masked, so masked entries stay exactly zero
    raw, final = before.grads[3]["0.weight"], after.grads[3]["0.weight"]
    masked = final == 0
    assert 0 < int(masked.sum()) < masked.numel() and not torch.equal(final[~masked], raw[~masked])


def test_adapting_after_a_mask_warns_unless_the_mask_acts_after_clipping():
    with pytest.warns(UserWarning, match="List it first"):
        run_callback([DPS(p=0.5, update_ratio=0.25, max_steps=8), ValleyExploration()], steps=1)
    with warnings.catch_warnings():  # ChildTuning masks after clipping: after the adaptor
        warnings.filterwarnings("error", message=".*List it first.*")
        run_callback([ChildTuningD(variant="F"), ValleyExploration()], steps=1)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_alto_fashion_mnist_config_smoke(tmp_path):
    from test_families import smoke

    logged = smoke(
        "images/resnet18_fashion_mnist_alto.yaml",
        tmp_path,
        "--data.batch_size",
        "32",
        "--data.eval_batch_size",
        "64",
    )
    assert len(logged["train/loss"]) == 3 and "val/acc" in logged
