"""DPS and ChildTuning callbacks: masks, stages, frozen entries, resume, composition."""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyRegression, loader, trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lsframe.callbacks import DPS, ChildTuningD, ClosureCallback
from lsframe.callbacks.masking import global_top_fraction_masks, top_fraction_mask
from lsframe.errors import ConfigError
from lsframe.optim import ALSALS, SGDSLS


class Recorder(ClosureCallback):
    """Clones every parameter and gradient when the gradient hook reaches it."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []
        self.params: list[dict[str, Tensor]] = []

    def on_gradients_ready(self, trainer, pl_module, optimizer) -> None:
        named = list(pl_module.model.named_parameters())
        self.grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})
        self.params.append({n: p.detach().clone() for n, p in named})


class AfterClipping(Recorder):
    """A Recorder called where ChildTuning masks: after the module's gradient clipping."""

    after_clipping = True


class Stack(nn.Module):
    """embeddings → two layers in a ModuleList → head, so the layer-stack rule applies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.embed(x))
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def run_dps(callback: pl.Callback, steps: int = 8, optimizer=None, **module_kwargs):
    before, after = Recorder(), Recorder()
    module = TinyRegression(
        optimizer=optimizer or partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
        **module_kwargs,
    )
    trainer(max_steps=steps, callbacks=[before, callback, after]).fit(module, loader(32, 4))
    return module, before, after


SELECTED = ("0.weight", "3.weight")  # the two Linear weights of helpers.mlp


def test_top_fraction_mask_keeps_exactly_the_fraction_and_breaks_ties_by_position():
    score = torch.tensor([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]])
    mask = top_fraction_mask(score, 0.5)
    assert mask.tolist() == [[False, True, True], [True, False, False]]
    assert int(top_fraction_mask(torch.zeros(10), 0.7).sum()) == 7
    assert top_fraction_mask(torch.zeros(10), 0.7)[:7].all()
    assert int(top_fraction_mask(torch.randn(7, 3), 0.3).sum()) == math.ceil(0.3 * 21)
    masks = global_top_fraction_masks(
        {"a": torch.tensor([5.0, 1.0]), "b": torch.tensor([4.0, 2.0, 3.0])}, 0.6
    )
    assert masks["a"].tolist() == [True, False] and masks["b"].tolist() == [True, False, True]


def test_dps_stages_and_masks_match_a_hand_computation():
    # 8 steps, update_ratio 0.25 -> stage length 2: stages 1 (I), 2 (II), 3 (I), 4 (II)
    callback = DPS(p=0.5, update_ratio=0.25)
    module, before, after = run_dps(callback)
    assert callback.stage_length == 2 and len(before.grads) == 8
    for step in (1, 2, 5, 6):  # stage I: gradients untouched
        for name, grad in before.grads[step - 1].items():
            assert torch.equal(after.grads[step - 1][name], grad)
    for first in (3, 7):  # stage II: scores of the two steps before, mask for both steps
        for name, grad in before.grads[first - 1].items():
            if name not in SELECTED:
                assert torch.equal(after.grads[first - 1][name], grad)  # biases are never masked
                continue
            score = before.grads[first - 3][name] ** 2 + before.grads[first - 2][name] ** 2
            mask = top_fraction_mask(score, 0.5)
            assert int(mask.sum()) == math.ceil(0.5 * score.numel())
            for step in (first, first + 1):
                raw, masked = before.grads[step - 1][name], after.grads[step - 1][name]
                assert torch.equal(masked[mask], raw[mask])
                assert (masked[~mask] == 0).all()
    assert module.trainer.callback_metrics["dps/stage"] == 4.0
    assert module.trainer.callback_metrics["dps/updated_fraction"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("mask_mode", ["frozen", "gradient"])
def test_frozen_mode_keeps_masked_weights_bit_identical(mask_mode):
    # AdamW with weight decay: momentum from stage I and decay would move masked entries
    callback = DPS(p=0.5, update_ratio=0.25, max_steps=8, mask_mode=mask_mode)
    _, _, after = run_dps(callback, steps=5)
    moved = []
    for name in SELECTED:
        masked = after.grads[2][name] == 0  # step 3 opens stage II
        start, end = after.params[2][name], after.params[4][name]  # before step 3, after step 4
        assert masked.any()
        moved.append(not torch.equal(start[masked], end[masked]))
        assert not torch.equal(start[~masked], end[~masked])  # the kept entries do train
    assert any(moved) == (mask_mode == "gradient")


def test_dps_masks_the_line_search_direction():
    # SGDSLS moves along the gradient: with it masked, trial points and the accepted step leave
    # the masked entries exactly where they were
    callback = DPS(p=0.5, update_ratio=0.25, max_steps=8)
    _, _, after = run_dps(callback, steps=5, optimizer=partial(SGDSLS, lr=1.0))
    for name in SELECTED:
        masked = after.grads[2][name] == 0
        assert torch.equal(after.params[2][name][masked], after.params[4][name][masked])
        assert not torch.equal(after.params[2][name], after.params[4][name])


def test_dps_composes_with_alsals_in_frozen_mode():
    callback = DPS(p=0.3, update_ratio=0.25, mask_mode="frozen")
    module, _, after = run_dps(callback, steps=8, optimizer=ALSALS)
    for name in SELECTED:
        masked = after.grads[2][name] == 0
        assert torch.equal(after.params[2][name][masked], after.params[4][name][masked])
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert module.trainer.optimizers[0].search_state["searches"] > 0


def test_dps_counts_optimizer_steps_under_gradient_accumulation():
    callback = DPS(p=0.5, update_ratio=0.25)  # 8 batches / 2 = 4 steps -> stage length 1
    module, before, after = run_dps(callback, steps=4, accumulate_grad_batches=2)
    assert len(before.grads) == 4 and callback.stage_length == 1
    assert module.trainer.callback_metrics["dps/stage"] == 4.0
    assert (after.grads[1]["0.weight"] == 0).sum() == 32  # step 2 masks half of 16 x 4


def _resume_run(tmp_path, stop: int | None):
    torch.manual_seed(0)
    data = loader(4, 4)  # one batch per epoch: resuming never lands mid-epoch
    make = lambda: TinyRegression(optimizer=partial(torch.optim.AdamW, lr=1e-2))  # noqa: E731
    callback = DPS(p=0.5, update_ratio=0.25, max_steps=8)
    module = make()
    if stop is None:
        trainer(max_steps=8, callbacks=[callback]).fit(module, data)
        return module, callback
    first = trainer(max_steps=stop, callbacks=[callback])
    first.fit(module, data)
    first.save_checkpoint(tmp_path / "mid.ckpt")
    resumed_callback = DPS(p=0.5, update_ratio=0.25, max_steps=8)
    resumed = make()
    trainer(max_steps=8, callbacks=[resumed_callback]).fit(
        resumed, data, ckpt_path=tmp_path / "mid.ckpt"
    )
    return resumed, resumed_callback


def test_resume_mid_stage_keeps_the_mask_and_the_trajectory(tmp_path):
    reference, _ = _resume_run(tmp_path, None)
    for stop in (3, 6):  # inside a masking stage; inside a scoring stage
        resumed, callback = _resume_run(tmp_path, stop)
        for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
            assert torch.equal(a, b), (stop, name)
    state = DPS(p=0.5, update_ratio=0.25, max_steps=8)
    state.load_state_dict(callback.state_dict())
    assert state.masks is not None and state.stage_length == 2


def test_child_tuning_d_fisher_and_global_mask_match_a_hand_computation():
    class Capture(ChildTuningD):
        def estimate_fisher(self, trainer, pl_module):
            self.fisher = super().estimate_fisher(trainer, pl_module)
            return self.fisher

    model = Stack()
    initial = copy.deepcopy(model)
    data = loader(16, 4)
    callback = Capture(reserve_p=0.3, max_grad_norm=0.5)
    recorder = AfterClipping()
    module = TinyRegression(model=model, optimizer=partial(torch.optim.SGD, lr=0.01))
    trainer(max_steps=2, callbacks=[callback, recorder]).fit(module, data)
    names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert sorted(callback.params) == sorted(names)  # only the layer stack, biases included
    expected = {n: torch.zeros_like(p) for n, p in initial.named_parameters()}
    for x, y in data:
        initial.zero_grad()
        F.mse_loss(initial(x).squeeze(-1), y).backward()
        for n, p in initial.named_parameters():
            norm = p.grad.norm()
            expected[n] += (p.grad * min(1.0, 0.5 / (norm + 1e-6))) ** 2 / len(data)
    for n in names:
        torch.testing.assert_close(callback.fisher[n], expected[n])
    total = sum(expected[n].numel() for n in names)
    assert sum(int(callback.masks[n].sum()) for n in names) == math.ceil(0.3 * total)
    threshold = min(float(expected[n][callback.masks[n]].min()) for n in names)
    assert all(float(expected[n][~callback.masks[n]].max()) <= threshold for n in names)
    for n in names:  # the training gradients are masked from the first step
        assert (recorder.grads[0][n][~callback.masks[n]] == 0).all()
    assert torch.equal(recorder.grads[0]["embed.weight"] != 0, torch.ones(8, 4, dtype=torch.bool))


def test_child_tuning_f_masks_come_from_its_own_seed_and_respect_exclude():
    def masked_grads(seed, global_noise):
        recorder = AfterClipping()
        module = TinyRegression(model=Stack(), optimizer=partial(torch.optim.SGD, lr=0.01))
        callback = ChildTuningD(variant="F", exclude=["^head"], seed=seed)
        torch.manual_seed(global_noise)  # the global random state must not matter
        trainer(max_steps=2, callbacks=[callback, recorder]).fit(module, loader(32, 4))
        assert "head.weight" not in callback.params and "embed.weight" in callback.params
        return recorder.grads

    a, b, c = masked_grads(0, 1), masked_grads(0, 2), masked_grads(1, 1)
    for step in range(2):
        assert torch.equal(a[step]["embed.weight"] == 0, b[step]["embed.weight"] == 0)
        assert (a[step]["head.weight"] != 0).all()  # excluded: never masked
    assert not torch.equal(a[0]["embed.weight"] == 0, c[0]["embed.weight"] == 0)


def test_child_tuning_f_keeps_a_random_fraction_and_rescales():
    before, after = Recorder(), AfterClipping()
    module = TinyRegression(model=Stack(), optimizer=partial(torch.optim.SGD, lr=0.01))
    callback = ChildTuningD(reserve_p=0.3, variant="F")
    trainer(max_steps=3, callbacks=[before, callback, after]).fit(module, loader(32, 4))
    kept, total = 0, 0
    for raw, masked in zip(before.grads, after.grads):
        for name, grad in raw.items():
            keep = masked[name] != 0
            torch.testing.assert_close(masked[name][keep], grad[keep] / 0.3)
            kept, total = kept + int(keep.sum()), total + keep.numel()
    assert 0.2 < kept / total < 0.4


@pytest.mark.parametrize("variant", ["D", "F"])
def test_child_tuning_masks_the_clipped_gradient_as_its_reference_optimizer_does(variant):
    # masked before the clip, F's 1/reserve_p scale was clipped away (an update 0.64x the
    # reference's at clip 0.1)
    raw, masked = Recorder(), AfterClipping()
    module = TinyRegression(
        model=Stack(), optimizer=partial(torch.optim.SGD, lr=0.1), gradient_clip_val=0.1
    )
    callback = ChildTuningD(reserve_p=0.3, variant=variant)
    trainer(max_steps=1, callbacks=[raw, callback, masked]).fit(module, loader(32, 4))
    grads = raw.grads[0]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert norm > 1.0  # the clip acts
    scale = 0.1 / (float(norm) + 1e-6)  # Lightning's norm clip
    for name, grad in grads.items():
        keep = masked.grads[0][name] != 0
        factor = 1 / 0.3 if variant == "F" and name in callback.params else 1.0
        torch.testing.assert_close(masked.grads[0][name][keep], grad[keep] * scale * factor)
        step = raw.params[0][name] - dict(module.model.named_parameters())[name].detach()
        torch.testing.assert_close(step, 0.1 * masked.grads[0][name])


def test_bad_arguments_and_misuse_are_clear_errors():
    with pytest.raises(ValueError, match="p must be in"):
        DPS(p=1.0)
    with pytest.raises(ValueError, match="update_ratio"):
        DPS(update_ratio=0.0)
    with pytest.raises(ValueError, match="mask_mode"):
        DPS(mask_mode="soft")
    with pytest.raises(ValueError, match="variant"):
        ChildTuningD(variant="G")
    with pytest.raises(ConfigError, match=r"int\(8 · 0.05\) = 0 optimizer steps") as error:
        run_dps(DPS(update_ratio=0.05), steps=8)  # the run's length, known once the data loads
    assert error.value.argument == "update_ratio"
    with pytest.raises(ConfigError, match=r"int\(10 · 0.05\) = 0 .*\(10: its max_steps\)"):
        DPS(update_ratio=0.05, max_steps=10)
    with pytest.raises(ValueError, match="selected no parameter"):
        run_dps(DPS(include=["weight"], exclude=["weight"]))
    # a pattern matching no parameter is a typo, refused even beside one that matches
    with pytest.raises(ConfigError, match="exclude pattern 'wieght' matches no trainable") as error:
        run_dps(DPS(include=["weight"], exclude=["wieght"]))
    assert error.value.where == "DPS.exclude" and "close: 'weight'" in str(error.value)
    # one that matches only parameters DPS does not select (it masks weight matrices) was
    # accepted and removed nothing
    with pytest.raises(
        ConfigError, match="exclude pattern 'bias' matches none of the par"
    ) as error:
        run_dps(DPS(exclude=["bias"]))
    assert error.value.argument == "exclude"
    with pytest.raises(ValueError, match="no layer stack"):
        run_dps(ChildTuningD())  # helpers.mlp is an nn.Sequential, no ModuleList
    # helpers.mlp's two Linear weights hold 4·16 + 16·1 = 80 entries: 0.01 keeps 0.8 a step
    with pytest.raises(ValueError, match=r"keeps 0\.8 of the 80 .* at least 1/80"):
        run_dps(ChildTuningD(reserve_p=0.01, variant="F", include=[r"weight$"]))

    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="ClosureModule"):
        trainer(max_steps=1, callbacks=[DPS()]).fit(Plain(), loader(8, 4))


def test_dps_with_alsals_from_the_cli_on_the_real_encoder(minilm, shared_data, tmp_path):
    from test_families import smoke

    piece = tmp_path / "dps.yaml"
    piece.write_text(
        "trainer:\n  callbacks:\n    - class_path: lsframe.callbacks.DPS\n"
        "      init_args: {update_ratio: 0.34, mask_mode: frozen}\n"
    )
    logged = smoke(
        "glue/minilm.yaml",
        tmp_path,
        "--config",
        str(piece),
        "--model.init_args.optimizer",
        "lsframe.optim.ALSALS",
        "--data.data_dir",
        str(shared_data / "glue"),
        "--data.task_name",
        "rte",
        "--data.train_limit",
        "48",
        "--data.max_length",
        "32",
        "--data.val_limit",
        "16",
    )
    assert logged["dps/stage"] == [1.0, 2.0, 3.0]
    assert logged["dps/updated_fraction"][0] == 1.0
    assert logged["dps/updated_fraction"][1] == pytest.approx(0.7, abs=1e-3)
    assert all(math.isfinite(x) for x in logged["train/loss"])


def test_a_new_fit_starts_its_own_stages_and_mask():
    # the same callback objects on two fits, as the sequential runner uses them
    dps, child = DPS(p=0.5, update_ratio=0.25), ChildTuningD()
    module = TinyRegression(model=Stack(), optimizer=partial(torch.optim.SGD, lr=0.01))
    trainer(max_steps=8, callbacks=[dps, child]).fit(module, loader(32, 4))
    assert dps.stage_length == 2
    first_mask = {n: m.clone() for n, m in child.masks.items()}
    other_task = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16)), batch_size=4)
    trainer(max_steps=4, callbacks=[dps, child]).fit(module, other_task)
    assert dps.stage_length == 1  # int(4 * 0.25), not the first fit's 2
    assert module.trainer.callback_metrics["dps/stage"] == 4.0
    assert any(not torch.equal(first_mask[n], child.masks[n]) for n in first_mask)


def test_two_masking_callbacks_together_are_warned_about_once():
    callbacks = [DPS(p=0.5, update_ratio=0.5), ChildTuningD(reserve_p=0.5, variant="F")]
    with pytest.warns(UserWarning, match="DPS and ChildTuningD all mask the gradients") as caught:
        trainer(max_steps=2, callbacks=callbacks).fit(TinyRegression(), loader())
    assert sum("mask the gradients" in str(w.message) for w in caught) == 1


class StepSizes(pl.Callback):
    """The step size each optimizer step of group 0 took."""

    def __init__(self) -> None:
        self.sizes: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.sizes.append(float(pl_module.optimizers().optimizer.param_groups[0]["step_size"]))


def test_child_tuning_f_under_a_line_search_keeps_the_step_sizes_it_finds_without_a_mask():
    # scaled by 1/reserve_p, the masked gradient told SaLSA a slope 1/reserve_p times the loss's:
    # with reserve_p 0.3 below its c 0.5 no small step passed, and η fell to ~1e-8
    from lsframe.optim import SaLSA

    def step_sizes(callbacks):
        torch.manual_seed(0)
        module = TinyRegression(model=Stack(), optimizer=SaLSA)
        log = StepSizes()
        trainer(max_steps=6, callbacks=[*callbacks, log]).fit(module, loader(48, 8))
        return log.sizes

    plain = step_sizes([])
    masked = step_sizes([ChildTuningD(reserve_p=0.3, variant="F")])
    assert min(masked) > 0.1 * min(plain), (plain, masked)
