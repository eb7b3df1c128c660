"""DPS-Mix: the stage I mix in the forward, one mask per step, plain layers outside stage I,
exact resume, line searches, composition, YAML."""

from __future__ import annotations

import copy
import math
from functools import partial

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_dps import Recorder
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lsframe.callbacks import EWC, ChildTuningD, ClosureCallback, DPSMix, ValleyExploration
from lsframe.data.resumable import ResumableDataLoader
from lsframe.errors import ConfigError
from lsframe.modules import ClosureModule
from lsframe.optim import ALSALS, SGDSLS

P = 0.3
QUERY = "bert.encoder.layer.0.attention.self.query"


def tiny_bert(dropout: float = 0.1, seed: int = 0) -> nn.Module:
    return helpers.tiny_bert(seed, vocab=32, hidden=8, layers=2, dropout=dropout)


class TinyBert(ClosureModule):
    def __init__(self, model: nn.Module | None = None, **kwargs) -> None:
        kwargs.setdefault("param_grouping", "single")
        kwargs.setdefault("optimizer", partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.01))
        super().__init__(model=model if model is not None else tiny_bert(), **kwargs)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**batch).loss


def bert_data(n: int = 32, batch_size: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 32, (n, 8), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    rows = [
        {"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y}
        for i, y in zip(ids, labels)
    ]
    return DataLoader(rows, batch_size=batch_size, shuffle=False)


def reference_mix(weight: Tensor, target: Tensor, columns: Tensor, p: float) -> Tensor:
    """The Mixout formula as the authors write it: ((1 − m)·W₀ + m·W − p·W₀) / (1 − p)."""
    m = columns.to(weight.dtype).expand_as(weight)
    return ((1 - m) * target + m * weight - p * target) / (1 - p)


class Probe(ClosureCallback):
    """Records every training forward of ``names``: step, input, output, weight, mask, and
    whether the layer was reparametrised; and, in the gradient hook, the state_dict keys."""

    def __init__(self, mix: DPSMix, names: tuple[str, ...]) -> None:
        self.mix, self.names = mix, names
        self.forwards: list[dict] = []
        self.keys: list[set[str]] = []
        self.installed: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer = trainer
        modules = dict(pl_module.model.named_modules())
        for name in self.names:
            modules[name].register_forward_hook(partial(self._record, name))

    def _record(self, name, module, args, output) -> None:
        if not module.training or not self.trainer.training:
            return
        self.forwards.append(
            {
                "name": name,
                "step": self.trainer.global_step + 1,
                "input": args[0].detach().clone(),
                "output": output.detach().clone(),
                "weight": module.weight.detach().clone(),
                "bias": module.bias.detach().clone(),
                "mask": self.mix.column_masks.get(f"{name}.weight", torch.ones(0)).clone(),
                "mixed": self.mix.installed,
            }
        )

    def on_gradients_ready(self, trainer, pl_module, optimizer) -> None:
        self.keys.append(set(pl_module.model.state_dict()))
        self.installed.append(self.mix.installed)


def fit(callbacks, steps: int, model: nn.Module | None = None, data=None, **module_kwargs):
    module = TinyBert(model=model, **module_kwargs)
    run = trainer(max_steps=steps, callbacks=callbacks)
    run.fit(module, data or bert_data())
    return module, run


def plain(model: nn.Module) -> bool:
    return not any("forward" in vars(m) for m in model.modules())


def test_stage_one_forward_is_the_hand_computed_mix_and_stage_two_is_plain():
    # 8 steps, update_ratio 0.25: stages of 2 steps, I (1-2), II (3-4), I (5-6), II (7-8)
    model = tiny_bert()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    mix = DPSMix(p=P, update_ratio=0.25)
    probe, raw = Probe(mix, (QUERY, "classifier")), Recorder()
    module, run = fit([raw, mix, probe], 8, model=model)
    assert mix.stage_length == 2 and len(probe.installed) == 8
    assert probe.installed == [True, True, False, False, True, True, False, False]
    assert all(k == keys for k in probe.keys)  # checkpoints see the plain parameter names
    masks = set()
    for record in probe.forwards:
        x, w, b = record["input"], record["weight"], record["bias"]
        if math.ceil(record["step"] / 2) % 2 == 1:
            target = pretrained[f"{record['name']}.weight"]
            assert record["mixed"] and record["mask"].shape == (w.shape[1],)
            want = F.linear(x, reference_mix(w, target, record["mask"], P), b)
            torch.testing.assert_close(record["output"], want)
            masks.add(tuple(record["mask"].tolist()))
        else:
            assert not record["mixed"]
            assert torch.equal(record["output"], F.linear(x, w, b))
    assert len(masks) > 2  # a new mask each stage I step
    for step in (1, 2, 5, 6):  # a dropped column is the pretrained one: no gradient
        grad = raw.grads[step - 1][f"{QUERY}.weight"]
        mask = [r["mask"] for r in probe.forwards if r["step"] == step and r["name"] == QUERY][0]
        assert (grad[:, ~mask] == 0).all() and (grad[:, mask] != 0).any()
    assert plain(module.model) and set(module.model.state_dict()) == keys
    assert run.callback_metrics["dps_mix/stage"] == 4.0


def test_every_evaluation_of_a_step_sees_the_same_mask_under_a_line_search():
    model = tiny_bert()
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    mix = DPSMix(p=P, update_ratio=0.25, mask_mode="frozen")
    probe = Probe(mix, (QUERY,))
    module, run = fit(
        [mix, probe], 8, model=model, optimizer=partial(SGDSLS, lr=1.0), accumulate_grad_batches=2
    )
    assert run.optimizers[0].search_state["searches"] > 0
    by_step: dict[int, list[dict]] = {}
    for record in probe.forwards:
        by_step.setdefault(record["step"], []).append(record)
    stage_one = [s for s in by_step if math.ceil(s / 2) % 2 == 1]
    assert stage_one == [1, 2, 5, 6]
    # two micro-batches per evaluation, and the search's trial points besides
    assert max(len(by_step[s]) for s in stage_one) > 2
    for step in stage_one:
        first = by_step[step][0]["mask"]
        for record in by_step[step]:
            assert torch.equal(record["mask"], first)
            # each trial evaluation mixes its own trial weights with the step's mask
            want = reference_mix(record["weight"], pretrained[f"{QUERY}.weight"], first, P)
            torch.testing.assert_close(
                record["output"], F.linear(record["input"], want, record["bias"])
            )
    assert not torch.equal(by_step[1][0]["mask"], by_step[2][0]["mask"])
    assert all(torch.isfinite(p).all() for p in module.parameters()) and plain(module.model)


@pytest.mark.parametrize("count_decay_from", [None, 1])
def test_stage_two_keeps_the_top_mean_squared_gradients_over_kept_steps(count_decay_from):
    mix = DPSMix(p=0.5, update_ratio=0.5, count_decay_from=count_decay_from)  # stages of 2
    before, after = Recorder(), Recorder()
    columns: list[dict[str, Tensor]] = []

    class Masks(ClosureCallback):
        def on_gradients_ready(self, trainer, pl_module, optimizer) -> None:
            columns.append({n: m.clone() for n, m in mix.column_masks.items()})

    fit([before, mix, Masks(), after], 4)
    for name in mix.params:
        score = before.grads[0][name] ** 2 + before.grads[1][name] ** 2
        counts = columns[0][name].float() + columns[1][name].float()
        mean = score / counts.clamp(min=1)
        if count_decay_from is not None:
            mean = mean * torch.exp(-counts / 2)
        mask = mix.masks[name]  # the stage II mask: exactly the top half of the mean
        assert int(mask.sum()) == math.ceil(0.5 * mask.numel())
        dropped = float(mean[~mask].max())
        assert float(mean[mask].min()) >= dropped * (1 - 1e-5)  # (summation order aside)
        for step in (3, 4):
            raw, masked = before.grads[step - 1][name], after.grads[step - 1][name]
            assert torch.equal(masked[mask], raw[mask]) and (masked[~mask] == 0).all()


def test_reference_gradient_is_the_exact_one_times_one_minus_p():
    grads, mixes = {}, {}
    for mode in ("exact", "reference"):
        after, mixes[mode] = Recorder(), DPSMix(p=P, update_ratio=0.5, mix_gradient=mode)
        fit([mixes[mode], after], 2)
        grads[mode] = after.grads[0]  # step 1, stage I, from the same parameters
    selected = set(mixes["exact"].params)
    assert QUERY + ".weight" in selected and len(selected) == 14
    for name, grad in grads["exact"].items():
        factor = 1 - P if name in selected else 1.0
        torch.testing.assert_close(grads["reference"][name], grad * factor)


STEPS, EVERY = 14, 1  # 4 batches per epoch; stages of 3 steps: I 1-3, II 4-6, I 7-9, ...


class Crash(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def resumable_data() -> ResumableDataLoader:
    rows = bert_data(16, 16).dataset
    return ResumableDataLoader(rows, batch_size=4, shuffle=True, seed=3)


@pytest.mark.parametrize("crash", [2, 5, 8])  # in stage I, in stage II, in the next stage I
def test_resume_mid_stage_is_bit_identical(crash, tmp_path):
    make = lambda: DPSMix(p=P, update_ratio=0.25, max_steps=12)  # noqa: E731
    fit = partial(trainer, max_steps=STEPS, deterministic=True)
    reference, reference_mix = TinyBert(), make()
    fit(callbacks=[reference_mix]).fit(reference, resumable_data())

    killed, checkpoints = (
        TinyBert(),
        ModelCheckpoint(tmp_path, every_n_train_steps=EVERY, save_last=True),
    )
    with pytest.raises(RuntimeError, match="killed"):
        fit(callbacks=[make(), checkpoints, Crash(crash)], enable_checkpointing=True).fit(
            killed, resumable_data()
        )
    assert plain(killed.model)  # the failed fit left plain layers behind
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    TinyBert().load_state_dict(state["state_dict"])  # strict: a plain model's keys
    torch.manual_seed(1234)  # a fresh process: whatever state the generators are in
    resumed, resumed_mix = TinyBert(), make()
    fit(callbacks=[resumed_mix]).fit(resumed, resumable_data(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.trainer.global_step == STEPS
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    want, got = reference_mix.state_dict(), resumed_mix.state_dict()
    assert want["scores"] is not None and want["counts"] is not None  # step 14: in a stage I
    for key in ("scores", "counts", "pretrained"):
        for name, tensor in want[key].items():
            assert torch.equal(tensor, got[key][name]), (key, name)


def test_dps_mix_composes_with_the_other_methods_in_one_run(tmp_path):
    from transformers import BertForSequenceClassification

    module = TinyBert(optimizer=ALSALS)
    ewc = EWC(ewc_lambda=10.0, fisher_batches=2)
    trainer(max_steps=2, callbacks=[ewc]).fit(module, bert_data())  # task A: the anchor
    keys = set(module.model.state_dict())
    mix = DPSMix(p=P, update_ratio=0.25)
    child = ChildTuningD(variant="F", reserve_p=0.5)
    run = trainer(max_steps=8, callbacks=[ValleyExploration(0.5, 0.3), mix, child, ewc])
    run.fit(module, bert_data(seed=1))
    assert run.optimizers[0].search_state["searches"] > 0
    assert run.callback_metrics["dps_mix/stage"] == 4.0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert plain(module.model) and set(module.model.state_dict()) == keys
    module.export_pretrained(tmp_path / "export")
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    batch = next(iter(bert_data()))
    with torch.no_grad():
        want = module.model.eval()(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, want)


def test_a_new_fit_mixes_toward_its_own_start():
    mix = DPSMix(p=P, update_ratio=0.25)
    module, _ = fit([mix], 4)
    start = {n: p.detach().clone() for n, p in mix.params.items()}
    trainer(max_steps=4, callbacks=[mix]).fit(module, bert_data(seed=1))
    assert all(torch.equal(mix.pretrained[n], start[n]) for n in start)


def test_bad_arguments_and_selections_are_clear_errors():
    with pytest.raises(ValueError, match="p must be in"):
        DPSMix(p=1.0)
    with pytest.raises(ConfigError, match="mix_gradient"):
        DPSMix(mix_gradient="scaled")
    with pytest.raises(ConfigError, match="count_decay_from"):
        DPSMix(count_decay_from=0)
    with pytest.raises(ConfigError, match="nn.Linear weights.*LayerNorm"):
        fit([DPSMix(include=["LayerNorm.weight"])], 2)
    model = tiny_bert()
    layer = dict(model.named_modules())[QUERY]
    layer.forward = copy.copy(layer.forward)  # as accelerate's hooks do
    with pytest.raises(ConfigError, match="already has its forward replaced"):
        fit([DPSMix()], 2, model=model)

    class MyMix(DPSMix):  # its refusal names it, and is placed at its item, not DPSMix's
        pass

    with pytest.raises(ConfigError, match="^MyMix: ") as refused:
        fit([MyMix()], 2, model=model)
    from lsframe.config_nodes import at_callback

    items = [{"class_path": "lsframe.callbacks.DPSMix"}, {"class_path": "mine.MyMix"}]
    assert at_callback(refused.value, items).where == "trainer.callbacks[1].init_args.exclude"


def test_dps_mix_from_yaml_with_a_line_search_on_the_real_encoder(minilm, shared_data, tmp_path):
    from test_families import smoke

    piece = tmp_path / "dps_mix.yaml"
    piece.write_text(
        "trainer:\n  callbacks:\n    - class_path: lsframe.callbacks.DPSMix\n"
        "      init_args: {update_ratio: 0.34}\n"
        "    - class_path: lsframe.callbacks.ValleyExploration\n"
        "      init_args: {alpha: 0.5, beta: 0.3}\n"
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
    assert logged["dps_mix/stage"] == [1.0, 2.0, 3.0]
    assert 0.5 < logged["dps_mix/updated_fraction"][0] < 0.9  # kept columns, p = 0.3
    assert logged["dps_mix/updated_fraction"][1] == pytest.approx(0.7, abs=1e-3)
    assert all(math.isfinite(x) for x in logged["train/loss"])
