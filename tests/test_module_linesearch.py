"""The line-search family inside the Lightning loop: steps, logging, hooks, schedules, precision."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import TinyRegression, loader, trainer

from lsframe import optim
from lsframe.callbacks import ClosureCallback
from lsframe.optim import PLASLS, SaLSA, WarmupCosineLR


class Recorder(ClosureCallback):
    def __init__(self) -> None:
        self.hook_steps: list[int] = []
        self.logged: list[dict[str, float]] = []

    def on_gradients_ready(self, trainer, pl_module, optimizer):
        self.hook_steps.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.logged[-1]["searched_step_size"] = trainer.optimizers[0].param_groups[0]["step_size"]


@pytest.mark.parametrize("name", optim.line_searches())
def test_line_search_in_the_loop_steps_once_and_hooks_once_per_step(name):
    grouping = "parts" if optim.info(name).param_grouping == "parts" else "decay"
    module = TinyRegression(optimizer=lambda p, n=name: optim.create(n, p), param_grouping=grouping)
    recorder = Recorder()
    t = trainer(max_steps=6, callbacks=[recorder])
    t.fit(module, train_dataloaders=loader(64, 4))
    assert t.global_step == 6
    assert recorder.hook_steps == list(range(6))
    evals = [r["train/closure_evals"] for r in recorder.logged]
    if optim.info(name).forward_trials:  # one backward evaluation plus at least one trial
        assert all(e >= 2 for e in evals)
    else:  # a step-size tracker: the backward evaluation only
        assert evals == [1.0] * 6
    opt = t.optimizers[0]
    assert opt.state["line_search"]["forwards"] == sum(evals) - len(evals)
    last = recorder.logged[-1]
    for i, group in enumerate(opt.param_groups):
        assert last[f"step_size/{group.get('name', i)}"] == pytest.approx(group["lr"])


def test_a_yaml_scheduler_on_a_line_search_drives_the_multiplier_not_the_search():
    module = TinyRegression(
        optimizer=lambda p: SaLSA(p),
        lr_scheduler=lambda o: WarmupCosineLR(o, warmup_ratio=0.5),
    )
    recorder = Recorder()
    t = trainer(max_steps=4, callbacks=[recorder])
    t.fit(module, train_dataloaders=loader(64, 4))
    group = t.optimizers[0].param_groups[0]
    # total 4 steps, warmup 2: multipliers 0.5, 1.0, 1.0, 0.5 (cosine), then 0 after the run
    used = [r["step_size/all"] / r["searched_step_size"] for r in recorder.logged]
    assert used == pytest.approx([0.5, 1.0, 1.0, 0.5])
    assert group["lr_multiplier"] == pytest.approx(0.0, abs=1e-12)
    assert group["step_size"] > 0


def test_plasls_with_part_grouping_gets_named_parts():
    module = TinyRegression(optimizer=lambda p: PLASLS(p), param_grouping="parts")
    t = trainer(max_steps=2)
    t.fit(module, train_dataloaders=loader())
    # helpers.mlp, an nn.Sequential: its first Linear is a layer, its last the head
    assert [g["part"] for g in t.optimizers[0].param_groups] == ["layers_0", "head"]


def test_bf16_mixed_runs_the_closure_with_trials():
    module = TinyRegression(optimizer=lambda p: optim.create("adamsls", p))
    t = trainer(max_steps=3, precision="bf16-mixed")
    t.fit(module, train_dataloaders=loader())
    assert t.global_step == 3
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    # the search compared full-precision losses (autocast off for x and the trials)
    assert "reference_loss" in t.optimizers[0].last_step


@pytest.mark.parametrize(
    ("precision", "native", "warns"),
    [("bf16-mixed", False, True), ("bf16-mixed", True, False), ("32-true", False, False)],
)
def test_bf16_on_a_cpu_that_would_emulate_it_warns_at_fit(monkeypatch, precision, native, warns):
    import lsframe.precision

    monkeypatch.setattr(lsframe.precision, "native_cpu_bf16", lambda: native)
    module = TinyRegression(optimizer=lambda p: optim.create("salsa", p))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=1, precision=precision).fit(module, train_dataloaders=loader())
    mine = [str(w.message) for w in caught if "no native bf16" in str(w.message)]
    if warns:
        assert len(mine) == 1
        assert mine[0].startswith("trainer.precision: 'bf16-mixed': this CPU has no native bf16")
    else:
        assert mine == []
