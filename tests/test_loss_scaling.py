"""fp16 with a line search: lsframe's FP16MixedPrecision plugin scales the loss inside the closure.

On CPU with torch.autocast("cpu", dtype=float16) (Linear and LayerNorm run in fp16 there), so
no GPU is needed; overflows are injected with a gradient hook on the model's output.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import ProbeOptimizer, TinyRegression, loader, mlp, trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lsframe import optim
from lsframe.callbacks import ClosureCallback
from lsframe.config_checks import check_config
from lsframe.errors import ConfigError
from lsframe.modules.policy import check_precision
from lsframe.precision import DynamicLossScaler, FP16MixedPrecision

PLUGIN = "lsframe.precision.FP16MixedPrecision"


def test_cpu_autocast_runs_linear_and_layernorm_in_float16():
    # what the other tests rely on: fp16 autocast on CPU works in this torch
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    with torch.autocast("cpu", dtype=torch.float16):
        hidden = model[0](torch.randn(2, 4))
        out = model[1](hidden)
    assert hidden.dtype == torch.float16
    assert torch.isfinite(out).all()


class Overflowing:
    """Mixin: ``compute_loss`` records how each forward ran, and at the global steps in
    ``overflow_at`` makes the backward's gradient infinite (an fp16 overflow)."""

    def setup_recording(self, overflow_at=()) -> None:
        self.overflow_at = set(overflow_at)
        self.forwards: list[dict] = []

    def compute_loss(self, batch):
        x, y = batch
        out = self.model(x).squeeze(-1)
        grad = torch.is_grad_enabled()
        self.forwards.append(
            {"autocast": torch.is_autocast_enabled("cpu"), "dtype": out.dtype, "grad": grad}
        )
        if grad and self.trainer.global_step in self.overflow_at:
            out.register_hook(lambda g: torch.full_like(g, math.inf))
        return F.mse_loss(out.float(), y)


class Fp16Regression(Overflowing, TinyRegression):
    def __init__(self, overflow_at=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.setup_recording(overflow_at)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.compute_loss(batch))


def fp16_registry_module(name: str, overflow_at=()) -> Fp16Regression:
    """What ``helpers.registry_module(name)`` builds, as an Fp16Regression."""
    record = optim.info(name)
    lr = {} if record.test_lr is None else {"lr": record.test_lr}
    return Fp16Regression(
        overflow_at=overflow_at,
        optimizer=partial(optim.create, name, **lr),
        param_grouping="parts" if record.param_grouping == "parts" else "single",
    )


class Metrics(pl.Callback):
    """The logged metrics after every step, and snapshots around the steps in ``watch``."""

    def __init__(self, watch=()) -> None:
        self.watch = set(watch)
        self.logged: list[dict[str, float]] = []
        self.before: dict[int, tuple] = {}
        self.after: dict[int, tuple] = {}

    def _snapshot(self, trainer, module):
        params = [p.detach().clone() for p in module.model.parameters()]
        return params, copy.deepcopy(trainer.optimizers[0].state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.watch:
            self.before[trainer.global_step] = self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        step = trainer.global_step - 1
        if step in self.watch:
            self.after[step] = self._snapshot(trainer, pl_module)


def same(a, b) -> bool:
    """Equal nested state (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def fit_fp16(module, steps, plugin=None, callbacks=(), n=64, batch_size=8, **kwargs):
    plugin = plugin if plugin is not None else FP16MixedPrecision(init_scale=256.0)
    t = trainer(max_steps=steps, plugins=[plugin], callbacks=list(callbacks), **kwargs)
    t.fit(module, train_dataloaders=loader(n, batch_size))
    return t, plugin


# ------------------------------------------------------------------------------ training
def test_a_line_search_lowers_the_loss_in_fp16_with_layernorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 1))
    module = Fp16Regression(model=model, optimizer=lambda p: optim.create("sgdsls", p))
    metrics = Metrics()
    t, plugin = fit_fp16(module, 24, plugin=FP16MixedPrecision(), callbacks=[metrics])
    assert t.global_step == 24
    losses = [m["train/loss"] for m in metrics.logged]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    # the backward evaluations in fp16; the search's losses (x and trials) at full precision
    backward = [f for f in module.forwards if f["grad"]]
    assert all(f["autocast"] and f["dtype"] == torch.float16 for f in backward)
    searched = [f for f in module.forwards if not f["grad"]]
    assert searched and all(not f["autocast"] and f["dtype"] == torch.float32 for f in searched)
    # the default scale 2**16 overflows on this model's first steps: skipped, scale lowered
    overflows = plugin.scaler.overflow_steps
    assert plugin.scaler.scale == 2.0**16 * 0.5**overflows
    assert t.optimizers[0].state["line_search"]["step"] == 24 - overflows
    assert metrics.logged[-1]["train/overflow_steps"] == overflows
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_the_optimizer_hooks_and_trials_see_the_unscaled_loss_and_gradients():
    def run(plugins):
        seen = []

        class Hook(ClosureCallback):
            def on_gradients_ready(self, trainer, pl_module, optimizer):
                seen.append([p.grad.clone() for p in pl_module.model.parameters()])

        module = Fp16Regression(
            model=mlp(), optimizer=lambda p: ProbeOptimizer(p, lr=0.05, trials=2)
        )
        t = trainer(max_steps=1, plugins=plugins, callbacks=[Hook()])
        t.fit(module, train_dataloaders=loader(32, 8))
        return t.optimizers[0].records[0], seen[0], module

    reference, _, _ = run([])
    record, hook_grads, module = run([FP16MixedPrecision(init_scale=1024.0)])
    assert record["loss"] == pytest.approx(reference["loss"], rel=1e-2)
    # trials: the same fp16 forward at the same point, unscaled, without a graph
    assert record["trial_losses"] == [record["loss"]] * 2
    assert record["trial_requires_grad"] == [False, False]
    assert [f["grad"] for f in module.forwards] == [True, False, False]
    for got, want, hooked in zip(record["grads"], reference["grads"], hook_grads):
        assert torch.allclose(got, want, rtol=2e-2, atol=1e-3)
        assert torch.equal(got, hooked)


def test_validation_runs_in_fp16_autocast():
    module = Fp16Regression()
    t = trainer(plugins=[FP16MixedPrecision()])
    (scores,) = t.validate(module, dataloaders=loader(16, 8), verbose=False)
    assert math.isfinite(scores["val/loss"])
    assert [(f["autocast"], f["dtype"]) for f in module.forwards] == [(True, torch.float16)] * 2


def test_clipping_bounds_the_unscaled_gradient_norm():
    module = Fp16Regression(
        model=mlp(), optimizer=lambda p: ProbeOptimizer(p, trials=0), gradient_clip_val=0.01
    )
    t, _ = fit_fp16(module, 2)
    for record in t.optimizers[0].records:
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in record["grads"]]))
        assert norm.item() == pytest.approx(0.01, rel=1e-4)


# ---------------------------------------------------------------------------- overflows
@pytest.mark.parametrize("name", optim.names())
def test_an_overflow_skips_the_step_and_halves_the_scale_for_every_optimizer(name):
    module = fp16_registry_module(name, overflow_at={1})
    metrics = Metrics(watch={1})
    t, plugin = fit_fp16(module, 3, callbacks=[metrics])
    assert t.global_step == 3
    (params, state), (params_after, state_after) = metrics.before[1], metrics.after[1]
    assert all(torch.equal(a, b) for a, b in zip(params, params_after))
    assert same(state, state_after)
    assert [m["train/loss_scale"] for m in metrics.logged] == [256.0, 128.0, 128.0]
    assert [m["train/overflow_steps"] for m in metrics.logged] == [0.0, 1.0, 1.0]
    assert plugin.scaler.growth_tracker == 1
    # the steps around it do move the parameters
    assert not all(torch.equal(a, b) for a, b in zip(params, module.model.parameters()))


def test_an_overflow_is_skipped_even_when_nonfinite_losses_raise():
    module = Fp16Regression(overflow_at={0}, nonfinite_loss="raise")
    t, plugin = fit_fp16(module, 2)
    assert t.global_step == 2 and plugin.scaler.overflow_steps == 1
    assert module._skipped_steps == 0  # nonfinite_loss counts non-finite losses, not overflows


# ------------------------------------------------------------------------------ the scale
def test_the_scale_grows_after_the_growth_interval_and_an_overflow_restarts_the_count():
    module = Fp16Regression(overflow_at={4})
    plugin = FP16MixedPrecision(init_scale=64.0, growth_interval=2)
    metrics = Metrics()
    fit_fp16(module, 7, plugin=plugin, callbacks=[metrics])
    scales = [m["train/loss_scale"] for m in metrics.logged]
    # good, good (grow), good, good (grow), overflow (halve), good, good (grow)
    assert scales == [64.0, 128.0, 128.0, 256.0, 128.0, 128.0, 256.0]


def test_the_scale_rule_matches_torch_grad_scaler():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=0.0)
    kwargs = dict(init_scale=8.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=3)
    ours, torchs = DynamicLossScaler(**kwargs), torch.amp.GradScaler("cpu", **kwargs)
    for overflow in [False, False, False, True, False, False, True, False, False, False, False]:
        torchs.scale(torch.ones(()))  # torch's scaler creates its scale here
        for scaler in (ours, torchs):
            param.grad = torch.full((3,), math.inf if overflow else 1.0)
            scaler.unscale_(opt)
        ours.update(overflow)
        torchs.update()
        assert ours.scale == torchs.get_scale()
        assert ours.growth_tracker == torchs.state_dict()["_growth_tracker"]


def test_unscale_divides_the_gradients_in_place():
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([512.0, -1024.0])
    grad = param.grad
    DynamicLossScaler(init_scale=512.0).unscale_(torch.optim.SGD([param], lr=0.1))
    assert param.grad is grad and param.grad.tolist() == [1.0, -2.0]


# ----------------------------------------------------------------------------- checkpoint
def test_resume_restores_the_scale_and_the_growth_count(tmp_path):
    first = FP16MixedPrecision(init_scale=64.0, growth_interval=3)
    t, _ = fit_fp16(Fp16Regression(overflow_at={0}), 3, plugin=first)
    path = tmp_path / "fp16.ckpt"
    t.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["FP16MixedPrecision"]
    assert saved == {"scale": 32.0, "growth_tracker": 2, "overflow_steps": 1}

    resumed = FP16MixedPrecision(init_scale=64.0, growth_interval=3)
    seen = {}

    class AtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(resumed.scaler.state_dict())

    t = trainer(max_steps=4, plugins=[resumed], callbacks=[AtStart()])
    t.fit(Fp16Regression(), train_dataloaders=loader(64, 8), ckpt_path=path)
    assert seen == saved
    assert resumed.scaler.scale == 64.0  # the restored count reached the interval: grown


# ------------------------------------------------------------------------------ refusals
def test_16_mixed_without_the_plugin_is_refused_naming_the_plugin():
    with pytest.raises(ConfigError, match=f"trainer.plugins: \\[{PLUGIN}\\]") as error:
        check_precision("16-mixed")
    assert error.value.where == "trainer.precision"
    module = TinyRegression()
    t = trainer(max_steps=1, plugins=[MixedPrecision("16-mixed", device="cpu")])
    with pytest.raises(ValueError, match=PLUGIN):
        t.fit(module, train_dataloaders=loader())


def test_the_config_check_accepts_the_plugin_and_refuses_it_with_a_precision():
    plugin = {"class_path": PLUGIN, "init_args": {"growth_interval": 10}}
    check_config({"trainer": {"precision": None, "plugins": [plugin]}})
    with pytest.raises(ConfigError, match="set trainer.precision: null") as error:
        check_config({"trainer": {"precision": "32-true", "plugins": [plugin]}})
    assert error.value.where == "trainer.precision"
    with pytest.raises(ConfigError, match="16-mixed"):
        check_config({"trainer": {"precision": "16-mixed", "plugins": []}})


def test_the_config_check_names_a_bad_plugin_argument():
    plugin = {"class_path": PLUGIN, "init_args": {"backoff_factor": 2.0}}
    with pytest.raises(ConfigError, match="backoff_factor must be in") as error:
        check_config({"trainer": {"plugins": [plugin]}})
    assert error.value.where == "trainer.plugins[0].init_args.backoff_factor"


def test_a_module_that_does_not_unscale_is_refused_before_any_update():
    class Automatic(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.model(x).squeeze(-1), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Automatic()
    before = [p.detach().clone() for p in module.parameters()]
    t = trainer(max_steps=1, plugins=[FP16MixedPrecision()])
    with pytest.raises(RuntimeError, match="ClosureModule"):
        t.fit(module, train_dataloaders=loader())
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize(
    ("precision", "dtype", "eps", "refused"),
    [
        ("16-true", None, None, True),  # SlopeTrackingAdam's default eps 1e-8
        ("32-true", "float16", 1e-8, True),  # the weights load in float16
        ("16-true", None, 1e-4, False),
        ("bf16-true", None, None, False),  # 1e-8 is a bfloat16 number
        ("32-true", None, None, False),
    ],
)
def test_an_eps_that_rounds_to_0_in_the_parameters_dtype_is_refused_at_its_key_before_loading(
    precision, dtype, eps, refused
):
    optimizer = {"class_path": "lsframe.optim.SlopeTrackingAdam", "init_args": {}}
    if eps is not None:
        optimizer["init_args"]["eps"] = eps
    model = {
        "class_path": "lsframe.modules.SequenceClassificationModule",
        "init_args": {"num_labels": 2, "optimizer": optimizer, "dtype": dtype},
    }
    config = {"trainer": {"precision": precision}, "model": model}
    if not refused:
        check_config(config)
        return
    with pytest.raises(ConfigError, match="eps=1e-08 rounds to 0 in torch.float16") as error:
        check_config(config)
    assert error.value.where == "model.init_args.optimizer.init_args.eps"
