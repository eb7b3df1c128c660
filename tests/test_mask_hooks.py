"""When the gradient-mask callbacks act within a step: frozen entries are written back as the
optimizer's step returns, before any batch-end hook, and an optimizer that runs the backward
closure several times in one step (torch's LBFGS) has each gradient masked but the step scored
and its masks chosen once."""

from __future__ import annotations

import warnings
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyRegression, loader, trainer
from torch import Tensor

from lsframe.callbacks import DPS, ChildTuningD, ClosureCallback
from lsframe.callbacks.masking import top_fraction_mask

SELECTED = ("0.weight", "3.weight")  # the two Linear weights of helpers.mlp


class BatchEndProbe(pl.Callback):
    """The parameters as a callback placed before the mask sees them at each batch end."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.seen.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


class Gradients(ClosureCallback):
    """Every call's gradients of the selected weights, with the step it belongs to."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Tensor]]] = []

    def on_gradients_ready(self, trainer, pl_module, optimizer) -> None:
        named = dict(pl_module.model.named_parameters())
        self.calls.append((trainer.global_step + 1, {n: named[n].grad.clone() for n in SELECTED}))


def test_frozen_entries_are_back_before_a_callback_listed_first_sees_the_step():
    # they were written back at DPS's own batch end: a callback before it (an EMA of the
    # weights, Lightning's WeightAveraging) saw them moved by weight decay, up to 1.6e-2
    probe, dps = BatchEndProbe(), DPS(p=0.5, update_ratio=0.25, max_steps=8, mask_mode="frozen")
    module = TinyRegression(optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.5))
    trainer(max_steps=4, callbacks=[probe, dps]).fit(module, loader(32, 4))
    assert dps.masks is not None  # steps 3 and 4: stage II
    for name in SELECTED:
        masked = ~dps.masks[name]
        after_step_2, after_step_4 = probe.seen[1][name], probe.seen[3][name]
        assert masked.any() and torch.equal(after_step_2[masked], after_step_4[masked])
        assert not torch.equal(after_step_2[~masked], after_step_4[~masked])


def test_a_closure_run_several_times_a_step_is_masked_each_time_and_scored_once():
    # each call of LBFGS's closure added its g² and, at a stage's first step, reset the scores:
    # stage II found none and stopped the fit ("reached stage 2 ... without scores")
    before, after = Gradients(), Gradients()
    dps = DPS(p=0.5, update_ratio=0.25, max_steps=8)
    lbfgs = partial(torch.optim.LBFGS, lr=0.1, max_iter=3)
    module = TinyRegression(optimizer=lbfgs)
    trainer(max_steps=4, callbacks=[before, dps, after]).fit(module, loader(32, 4))
    steps = [step for step, _ in before.calls]
    assert steps.count(3) > 1  # the closure ran again within step 3
    first_call = {step: grads for step, grads in reversed(before.calls)}
    for name in SELECTED:
        score = first_call[1][name] ** 2 + first_call[2][name] ** 2
        mask = top_fraction_mask(score, 0.5)
        assert torch.equal(mask, dps.masks[name])
        for step, grads in after.calls:
            if step in (3, 4):  # every call of stage II masked
                assert (grads[name][~mask] == 0).all() and grads[name][mask].any()


def test_settings_under_which_no_mask_ever_acts_are_warned_about():
    # a sweep's edges ran to the end as plain fine-tuning reported under the method's name
    with pytest.warns(UserWarning, match=r"DPS\(p=0\) masks nothing"):
        DPS(p=0.0)
    with pytest.warns(UserWarning, match=r"ChildTuningD\(reserve_p=1\) keeps every gradient"):
        ChildTuningD(reserve_p=1.0)
    module = TinyRegression(optimizer=partial(torch.optim.AdamW, lr=1e-2))
    with pytest.warns(UserWarning, match="stages of 4 optimizer steps in a run of 4: its masking"):
        trainer(max_steps=4, callbacks=[DPS(update_ratio=1.0)]).fit(module, loader(32, 4))
    with warnings.catch_warnings(record=True) as caught:  # a masking stage within the run
        warnings.simplefilter("always")
        callback = DPS(p=0.5, update_ratio=0.5)
        module = TinyRegression(optimizer=partial(torch.optim.AdamW, lr=1e-2))
        trainer(max_steps=4, callbacks=[callback]).fit(module, loader(32, 4))
    assert not [w for w in caught if "DPS" in str(w.message)]
