"""The closure-callback protocol: ClosureCallback hooks, who drives them, and what is refused."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyRegression, loader, trainer
from torch import nn

from lsframe import optim
from lsframe.callbacks import ClosureCallback, ClosureHooks
from lsframe.optim import SaLSA

WEIGHT = 0.05


def penalty(model: nn.Module) -> torch.Tensor:
    return WEIGHT * sum(p.square().sum() for p in model.parameters())


class Penalised(ClosureCallback):
    """A user's callback: an L2 term in every evaluation, and a record of the gradient hook."""

    def __init__(self) -> None:
        self.loss_calls = 0
        self.gradient_calls: list[tuple[pl.Trainer, pl.LightningModule, object, int]] = []

    def closure_loss(self, trainer, pl_module):
        self.loss_calls += 1
        return penalty(pl_module.model)

    def on_gradients_ready(self, trainer, pl_module, optimizer):
        self.gradient_calls.append((trainer, pl_module, optimizer, trainer.global_step))


class Audited(SaLSA):
    """SaLSA that recomputes, at every evaluation it makes, the task loss plus the penalty."""

    def __init__(self, params, module: TinyRegression) -> None:
        super().__init__(params)
        self.module = module
        self.audits: list[tuple[float, float]] = []

    def _audited(self, evaluate):
        def run(*args, **kwargs):
            loss = evaluate(*args, **kwargs)
            x, y = self.module.batch
            with torch.no_grad():
                model = self.module.model
                expected = F.mse_loss(model(x).squeeze(-1), y) + penalty(model)
            self.audits.append((float(loss), float(expected)))
            return loss

        return run

    def step(self, closure=None, forward=None):
        return super().step(self._audited(closure), self._audited(forward))


class BatchKeeping(TinyRegression):
    def compute_loss(self, batch):
        self.batch = batch
        return super().compute_loss(batch)


def test_a_closure_callback_gets_both_hooks_under_a_line_search_and_its_term_in_every_evaluation():
    module = BatchKeeping()
    module.optimizer_factory = lambda params: Audited(params, module)
    callback = Penalised()
    t = trainer(max_steps=6, callbacks=[callback])
    t.fit(module, train_dataloaders=loader(64, 4))
    opt = t.optimizers[0]
    assert optim.info_for(opt).forward_trials  # a subclass of SaLSA keeps SaLSA's record
    assert [step for *_, step in callback.gradient_calls] == list(range(6))
    for got_trainer, got_module, got_optimizer, _ in callback.gradient_calls:
        assert got_trainer is t and got_module is module and got_optimizer is opt
    assert len(opt.audits) > 6  # the backward evaluations and the line search's trials
    assert callback.loss_calls == len(opt.audits)
    for loss, expected in opt.audits:
        assert loss == pytest.approx(expected, rel=1e-5)


class OwnHook(TinyRegression):
    """Overrides the module's gradient hook without calling super()."""

    def __init__(self, events: list[tuple[str, int]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.events = events

    def on_gradients_ready(self, optimizer):
        self.events.append(("module", self.trainer.global_step))


class Listening(ClosureCallback):
    def __init__(self, events: list[tuple[str, int]]) -> None:
        self.events = events

    def on_gradients_ready(self, trainer, pl_module, optimizer):
        self.events.append(("callback", trainer.global_step))


def test_a_module_hook_overridden_without_super_still_has_the_callbacks_called_after_it():
    events: list[tuple[str, int]] = []
    module = OwnHook(events, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    trainer(max_steps=3, callbacks=[Listening(events)]).fit(module, loader())
    assert events == [(who, step) for step in range(3) for who in ("module", "callback")]


class LegacyLoss(pl.Callback):
    def closure_loss(self, trainer, pl_module):
        return None


class LegacyGradients(pl.Callback):
    def on_gradients_ready(self, trainer, pl_module, optimizer):
        pass


@pytest.mark.parametrize("legacy", [LegacyLoss, LegacyGradients])
def test_a_plain_callback_with_a_closure_hook_method_is_refused_by_name(legacy):
    module = TinyRegression()
    with pytest.raises(
        TypeError, match=rf"{legacy.__name__} .*lsframe\.callbacks\.ClosureCallback"
    ):
        trainer(max_steps=1, callbacks=[legacy()]).fit(module, loader())
    assert module.trainer.global_step == 0


class Automatic(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return F.mse_loss(self.layer(batch[0]).squeeze(-1), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_closure_callback_on_an_automatic_optimization_module_is_refused_at_setup():
    module = Automatic()
    assert not isinstance(module, ClosureHooks) and isinstance(TinyRegression(), ClosureHooks)
    with pytest.raises(TypeError, match="ClosureCallback needs an lsframe ClosureModule"):
        trainer(max_steps=1, callbacks=[ClosureCallback()]).fit(module, loader())
    assert module.steps == 0
