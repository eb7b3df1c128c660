"""The closure contract of ClosureModule and the loop around it."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import ProbeOptimizer, TinyRegression, loader, mlp, regression_data, trainer
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lsframe.callbacks import ClosureCallback
from lsframe.errors import NonFiniteParametersError
from lsframe.optim import WarmupCosineLR


def probe(**kwargs):
    return lambda params: ProbeOptimizer(params, **kwargs)


def fit(module, steps=None, n=32, batch_size=4, callbacks=(), **trainer_kwargs):
    t = trainer(
        max_steps=steps if steps is not None else -1,
        max_epochs=1 if steps is None else -1,
        callbacks=list(callbacks),
        **trainer_kwargs,
    )
    t.fit(module, train_dataloaders=loader(n, batch_size))
    return t


def test_forward_only_evaluations_keep_no_graph_and_leave_gradients():
    module = TinyRegression(optimizer=probe(trials=2))
    fit(module, steps=3)
    opt = module.trainer.optimizers[0]
    assert len(opt.records) == 3
    for record in opt.records:
        assert record["trial_requires_grad"] == [False, False]
        for before, after in zip(record["grads"], record["grads_after_trials"]):
            assert torch.equal(before, after)


def test_every_evaluation_of_a_step_sees_the_same_dropout_mask():
    module = TinyRegression(model=mlp(dropout=0.5), optimizer=probe(trials=3))
    fit(module, steps=4)
    records = module.trainer.optimizers[0].records
    for record in records:
        # the parameters do not move between the evaluations, so only dropout could differ
        assert record["trial_losses"] == pytest.approx([record["loss"]] * 3, rel=1e-6, abs=1e-7)
    # and the masks do change from one step to the next
    assert len({round(r["loss"], 6) for r in records}) == len(records)


def test_dropout_differs_between_evaluations_without_the_fixed_state():
    # guard for the test above: with dropout the same forward twice in a row differs
    model = mlp(dropout=0.5).train()
    x = regression_data(8).tensors[0]
    assert not torch.equal(model(x), model(x))


class QuadraticPenalty(ClosureCallback):
    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.calls = 0

    def closure_loss(self, trainer, pl_module):
        self.calls += 1
        return self.weight * sum((p**2).sum() for p in pl_module.model.parameters())


def test_callback_loss_terms_are_in_every_evaluation_and_gradient():
    penalty = QuadraticPenalty(0.5)
    module = TinyRegression(optimizer=probe(trials=2))
    reference = TinyRegression()
    reference.model.load_state_dict(module.model.state_dict())
    fit(module, steps=1, callbacks=[penalty])
    record = module.trainer.optimizers[0].records[0]
    assert penalty.calls == 3  # one backward evaluation and two trials
    x, y = next(iter(loader()))
    reference.model.zero_grad()
    base = reference.compute_loss((x, y))
    total = base + 0.5 * sum((p**2).sum() for p in reference.model.parameters())
    total.backward()
    assert record["loss"] == pytest.approx(total.item(), rel=1e-6)
    assert record["trial_losses"] == pytest.approx([total.item()] * 2, rel=1e-6)
    expected = [p.grad for p in reference.model.parameters()]
    for got, want in zip(record["grads"], expected):
        torch.testing.assert_close(got, want)


class GradientHookSpy(ClosureCallback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, list[torch.Tensor]]] = []

    def on_gradients_ready(self, trainer, pl_module, optimizer):
        self.seen.append(
            (trainer.global_step, [p.grad.clone() for p in pl_module.model.parameters()])
        )


def test_gradient_hook_fires_once_per_step_after_all_micro_batches():
    spy = GradientHookSpy()
    module = TinyRegression(optimizer=probe(trials=3), accumulate_grad_batches=2)
    reference = TinyRegression()
    reference.model.load_state_dict(module.model.state_dict())
    fit(module, steps=1, callbacks=[spy])
    assert [step for step, _ in spy.seen] == [0]
    batches = iter(loader())
    reference.model.zero_grad()
    for _ in range(2):
        (reference.compute_loss(next(batches)) / 2).backward()
    for got, ref in zip(spy.seen[0][1], reference.model.parameters()):
        torch.testing.assert_close(got, ref.grad)


def test_gradient_hook_transform_is_what_the_optimizer_sees():
    class ZeroFirstLayer(ClosureCallback):
        def on_gradients_ready(self, trainer, pl_module, optimizer):
            pl_module.model[0].weight.grad.zero_()

    module = TinyRegression(optimizer=probe(trials=0))
    before = module.model[0].weight.detach().clone()
    fit(module, steps=2, callbacks=[ZeroFirstLayer()])
    assert torch.equal(module.model[0].weight, before)


def test_adamw_through_the_closure_path_matches_a_plain_pytorch_loop():
    make = lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # noqa: E731
    module = TinyRegression(optimizer=make, param_grouping="single")
    plain = mlp()
    plain.load_state_dict(module.model.state_dict())
    fit(module, steps=None, n=32, batch_size=4)
    opt = make(plain.parameters())
    for x, y in loader(32, 4):
        opt.zero_grad()
        torch.nn.functional.mse_loss(plain(x).squeeze(-1), y).backward()
        opt.step()
    for got, want in zip(module.model.parameters(), plain.parameters()):
        assert torch.equal(got, want)


def test_accumulation_matches_a_plain_loop_on_the_mean_of_micro_batches():
    make = lambda params: torch.optim.SGD(params, lr=0.05)  # noqa: E731
    module = TinyRegression(optimizer=make, accumulate_grad_batches=4, param_grouping="single")
    plain = mlp()
    plain.load_state_dict(module.model.state_dict())
    t = fit(module, steps=None, n=32, batch_size=4)
    assert t.global_step == 2
    opt = make(plain.parameters())
    x, y = regression_data(32).tensors
    for chunk in range(2):
        opt.zero_grad()
        for mb in range(4):
            sl = slice(chunk * 16 + mb * 4, chunk * 16 + mb * 4 + 4)
            (torch.nn.functional.mse_loss(plain(x[sl]).squeeze(-1), y[sl]) / 4).backward()
        opt.step()
    for got, want in zip(module.model.parameters(), plain.parameters()):
        torch.testing.assert_close(got, want)


def test_global_step_advances_once_per_optimizer_step_and_max_steps_holds():
    module = TinyRegression(optimizer=probe(trials=4), accumulate_grad_batches=2)
    t = fit(module, steps=3, n=64)
    assert t.global_step == 3
    assert len(t.optimizers[0].records) == 3


def test_partial_accumulation_at_epoch_end_still_steps():
    module = TinyRegression(optimizer=probe(trials=0), accumulate_grad_batches=3)
    t = fit(module, steps=None, n=32, batch_size=4)  # 8 micro-batches: 3 + 3 + 2
    assert t.global_step == 3


def test_frozen_parameters_never_reach_the_optimizer_and_stay_put():
    module = TinyRegression(optimizer=lambda p: torch.optim.AdamW(p, lr=0.1))
    module.model[0].weight.requires_grad_(False)
    frozen = module.model[0].weight.detach().clone()
    moving = module.model[2 + 1].weight.detach().clone()
    fit(module, steps=3)
    in_optimizer = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(module.model[0].weight) not in in_optimizer
    assert torch.equal(module.model[0].weight, frozen)
    assert not torch.equal(module.model[3].weight, moving)


def test_no_decay_groups_split_by_dimension():
    module = TinyRegression(param_grouping="decay")
    groups = {g["name"]: g for g in module.param_groups()}
    assert [p.ndim for p in groups["decay"]["params"]] == [2, 2]
    assert [p.ndim for p in groups["no_decay"]["params"]] == [1, 1]
    assert groups["no_decay"]["weight_decay"] == 0.0


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees():
    module = TinyRegression(optimizer=probe(trials=0), gradient_clip_val=0.01)
    fit(module, steps=2)
    for record in module.trainer.optimizers[0].records:
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in record["grads"]]))
        assert norm.item() == pytest.approx(0.01, rel=1e-4)


def test_16_mixed_is_refused_with_an_explanation():
    module = TinyRegression()
    # Lightning refuses 16-mixed on CPU by itself, so ask for the plugin on a CPU-capable path
    t = trainer(max_steps=1, precision="16-mixed") if torch.cuda.is_available() else None
    if t is None:
        from lightning.pytorch.plugins.precision import MixedPrecision

        t = trainer(max_steps=1, plugins=[MixedPrecision("16-mixed", device="cpu")])
    with pytest.raises(ValueError, match="GradScaler"):
        t.fit(module, train_dataloaders=loader())


class NaNAt(ClosureCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def closure_loss(self, trainer, pl_module):
        return torch.tensor(float("nan")) if trainer.global_step == self.step else None


@pytest.mark.parametrize("scheduled", [False, True], ids=["no scheduler", "scheduler"])
def test_a_validation_interval_past_the_epoch_stops_the_fit_before_the_first_step(scheduled):
    # with a scheduler, the run length loaded the train loader first and lsframe caught
    # Lightning's error there; its later load no longer checked, and the fit never validated
    module = TinyRegression(optimizer=probe(), lr_scheduler=WarmupCosineLR if scheduled else None)
    t = trainer(max_epochs=2, val_check_interval=50, check_val_every_n_epoch=1)
    with pytest.raises(ValueError, match=r"`val_check_interval` \(50\) must be less than"):
        t.fit(module, loader(32, 4), loader(8, 4))
    assert t.global_step == 0


def test_nonfinite_loss_raises_naming_the_step_and_changes_nothing():
    module = TinyRegression(optimizer=lambda p: torch.optim.AdamW(p, lr=0.1))
    t = trainer(max_steps=5, callbacks=[NaNAt(2)])
    snapshot = {}

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshot["params"] = [p.detach().clone() for p in pl_module.model.parameters()]

    t.callbacks.append(Snapshot())
    with pytest.raises(FloatingPointError, match="global step 2"):
        t.fit(module, train_dataloaders=loader())
    for got, want in zip(module.model.parameters(), snapshot["params"]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_parameters_an_overflowing_update_made_non_finite_stop_the_fit_by_name(mode):
    # SGD at 1e38 on the MLP: the first update overflows the weights, every later loss is NaN;
    # "skip" would skip every later step, and "raise" blamed the loss and suggested "skip"
    module = TinyRegression(optimizer=lambda p: torch.optim.SGD(p, lr=1e38), nonfinite_loss=mode)
    t = trainer(max_steps=5)
    with pytest.raises(NonFiniteParametersError, match="non-finite parameters at global step [12]"):
        t.fit(module, train_dataloaders=loader())
    assert module._skipped_steps == 0


def test_float16_parameters_with_an_eps_that_rounds_to_0_are_named_as_the_cause():
    module = TinyRegression(model=mlp().half(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    x, y = regression_data().tensors
    data = DataLoader(TensorDataset(x.half(), y.half()), batch_size=4)
    with pytest.raises(NonFiniteParametersError) as caught:
        trainer(max_steps=3).fit(module, train_dataloaders=data)
    assert caught.value.where == "model.init_args.optimizer.init_args.eps"
    assert "float16, where eps=1e-08 rounds to 0" in caught.value.message


def test_nonfinite_loss_skip_mode_skips_the_step():
    module = TinyRegression(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), nonfinite_loss="skip")
    t = trainer(max_steps=3, callbacks=[NaNAt(1)])
    t.fit(module, train_dataloaders=loader())
    assert t.global_step == 3
    assert module._skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "l3"}, "gradient_clip_algorithm"),
        ({"nonfinite_loss": "ignore"}, "nonfinite_loss"),
    ],
)
def test_bad_module_arguments_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        TinyRegression(**kwargs)


def test_batchnorm_statistics_move_once_per_step_whatever_the_trials():
    def bn_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )

    module = TinyRegression(bn_model(), optimizer=lambda p: ProbeOptimizer(p, lr=0.0, trials=5))
    trainer(max_steps=3).fit(module, loader(12, 4))
    # lr 0: the parameters never move, so plain forwards over the same 3 batches give the
    # statistics of exactly one update per step
    reference = bn_model().train()
    with torch.no_grad():
        for x, _ in loader(12, 4):
            reference(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(module.model[1], name), getattr(reference[1], name))


@pytest.mark.parametrize("optimizer", ["adamw", "salsa"])
def test_a_nan_gradient_with_a_finite_loss_never_reaches_the_parameters(optimizer):
    from lsframe.optim import create

    def poison_step_3(module):
        calls = {"n": 0}

        def hook(grad):
            calls["n"] += 1
            return torch.full_like(grad, float("nan")) if calls["n"] == 3 else grad

        module.model[0].weight.register_hook(hook)

    skipping = TinyRegression(optimizer=lambda p: create(optimizer, p), nonfinite_loss="skip")
    poison_step_3(skipping)
    with warnings.catch_warnings(record=True) as caught:  # the skip is no closure's mistake
        warnings.simplefilter("always")
        trainer(max_steps=5).fit(skipping, loader(32, 4))
    assert not [w for w in caught if "no parameter has a gradient" in str(w.message)]
    assert all(torch.isfinite(p).all() for p in skipping.parameters())
    assert skipping._skipped_steps == 1
    raising = TinyRegression(optimizer=lambda p: create(optimizer, p))
    poison_step_3(raising)
    with pytest.raises(FloatingPointError, match="non-finite gradient .* at global step 2"):
        trainer(max_steps=5).fit(raising, loader(32, 4))
    assert all(torch.isfinite(p).all() for p in raising.parameters())


@pytest.mark.parametrize("search", [False, True], ids=["adamw", "line_search"])
def test_a_scheduler_that_steps_on_a_metric_is_refused_before_the_first_step(search):
    from lsframe.errors import ConfigError
    from lsframe.optim import SaLSA

    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    make = SaLSA if search else (lambda p: torch.optim.AdamW(p, lr=0.1))
    module = TinyRegression(optimizer=make, lr_scheduler=plateau)
    t = trainer(max_steps=3)
    with pytest.raises(ConfigError, match="ReduceLROnPlateau steps on a monitored metric"):
        t.fit(module, loader(32, 4))
    assert t.global_step == 0


def test_unlimited_epochs_without_max_steps_are_named_as_such_when_a_schedule_needs_the_length():
    from lsframe.modules.optimizer_setup import RunLengthUnknown

    module = TinyRegression(optimizer=probe(), lr_scheduler=WarmupCosineLR)
    t = trainer(max_epochs=-1)  # a finite loader: it is the run that has no end
    with pytest.raises(RunLengthUnknown, match=r"^trainer.max_epochs -1 \(no limit\) needs"):
        t.fit(module, loader(32, 4))
    assert t.global_step == 0


def test_a_subclass_training_step_that_takes_no_step_is_refused_after_the_first_batch():
    # returning the loss (automatic optimization's way) trained nothing, and the fit "finished"
    from lsframe.errors import ConfigError

    class ReturnsTheLoss(TinyRegression):
        def training_step(self, batch, batch_idx):
            return self.compute_loss(batch) + 1e-3 * sum(
                p.square().sum() for p in self.parameters()
            )

    class StepsItself(TinyRegression):
        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(self.compute_loss(batch))
            optimizer.step()

    module = ReturnsTheLoss(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ConfigError, match="by overriding compute_loss") as error:
        trainer(max_epochs=2).fit(module, loader(16, 4))
    assert error.value.where == "ReturnsTheLoss.training_step" and module.trainer.global_step == 0
    stepping = StepsItself(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer(max_epochs=1).fit(stepping, loader(16, 4))
    assert stepping.trainer.global_step == 4

    class SkipsFirst(TinyRegression):  # None skips a batch, as in Lightning: not refused
        def training_step(self, batch, batch_idx):
            return None if batch_idx == 0 else super().training_step(batch, batch_idx)

    skipping = SkipsFirst(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer(max_epochs=1).fit(skipping, loader(16, 4))
    assert skipping.trainer.global_step == 3


def test_two_optimizers_are_refused_before_the_first_step_by_name():
    # configure_optimizers returning a list reached the step as a list: an AttributeError on
    # 'warn_without_gradients' at the first batch
    from lsframe.errors import ConfigError

    class TwoOptimizers(TinyRegression):
        def configure_optimizers(self):
            layers = [m for m in self.model if isinstance(m, torch.nn.Linear)]
            return [torch.optim.SGD(layer.parameters(), lr=0.1) for layer in layers[:2]]

    module = TwoOptimizers(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ConfigError, match="returned 2: give the parts param groups") as error:
        trainer(max_epochs=1).fit(module, loader(16, 4))
    assert error.value.where == "configure_optimizers" and module.trainer.global_step == 0
