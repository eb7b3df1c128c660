"""EWC: the penalty and its gradient, the Fisher, online decay, resume, line-search trials."""

from __future__ import annotations

import copy
import importlib.util
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyRegression, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lsframe.callbacks import EWC
from lsframe.errors import ConfigError
from lsframe.optim import SaLSA


def shifted_loader(shift: float, n: int = 16) -> DataLoader:
    gen = torch.Generator().manual_seed(int(shift * 10) + 1)
    x = torch.randn(n, 4, generator=gen)
    y = x @ torch.tensor([shift, 1.0, -1.0, 0.5])
    return DataLoader(TensorDataset(x, y), batch_size=4)


def sgd(**kwargs):
    return TinyRegression(optimizer=partial(torch.optim.SGD, lr=0.05), **kwargs)


def hand_fisher(model, data):
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in data:
        model.zero_grad()
        F.mse_loss(model(x).squeeze(-1), y).backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad**2 / len(data)
    return fisher


def test_fisher_is_the_mean_squared_batch_gradient_and_the_anchor_the_final_weights():
    ewc = EWC(ewc_lambda=10.0)
    module = sgd()
    data = shifted_loader(2.0)
    trainer(max_steps=3, callbacks=[ewc]).fit(module, data)
    expected = hand_fisher(copy.deepcopy(module.model), data)
    (task,) = ewc.tasks
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(task["fisher"][name], expected[name])
        assert torch.equal(task["anchor"][name], param.detach())


def test_penalty_and_its_gradient_equal_a_hand_computation():
    ewc = EWC(ewc_lambda=4.0)
    module = sgd()
    trainer(max_steps=2, callbacks=[ewc]).fit(module, shifted_loader(2.0))
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    penalty = ewc.closure_loss(None, module)
    task = ewc.tasks[0]
    by_hand = sum(
        (task["fisher"][n] * (p.detach() - task["anchor"][n]) ** 2).sum()
        for n, p in module.model.named_parameters()
    )
    torch.testing.assert_close(penalty.detach(), 0.5 * 4.0 * by_hand)
    module.zero_grad()
    penalty.backward()
    for n, p in module.model.named_parameters():
        want = 4.0 * task["fisher"][n] * (p.detach() - task["anchor"][n])
        torch.testing.assert_close(p.grad, want)


def test_separate_keeps_one_term_per_task_and_online_decays():
    fisher = lambda v: {"w": torch.full((2,), v)}  # noqa: E731
    anchor = lambda v: {"w": torch.full((2,), v)}  # noqa: E731
    separate, online = EWC(mode="separate"), EWC(mode="online", decay=0.5)
    for cb in (separate, online):
        cb.consolidate(fisher(1.0), anchor(0.0))
        cb.consolidate(fisher(3.0), anchor(1.0))
    assert len(separate.tasks) == 2
    (task,) = online.tasks
    torch.testing.assert_close(task["fisher"]["w"], torch.full((2,), 0.5 * 1.0 + 3.0))
    torch.testing.assert_close(task["anchor"]["w"], torch.ones(2))
    online.consolidate(fisher(2.0), anchor(2.0))
    torch.testing.assert_close(online.tasks[0]["fisher"]["w"], torch.full((2,), 0.5 * 3.5 + 2.0))


def test_ewc_reduces_forgetting_and_its_penalty_is_in_every_line_search_trial():
    # task A then task B with the same callback object (the sequential runner does this)
    def run(ewc_lambda):
        ewc = EWC(ewc_lambda=ewc_lambda)
        module = TinyRegression(optimizer=SaLSA)
        trainer(max_steps=40, callbacks=[ewc]).fit(module, shifted_loader(2.0, 64))
        a_before = float(module.compute_loss(next(iter(shifted_loader(2.0, 64)))))
        trials = []
        original = ewc.closure_loss

        def counted(trainer, pl_module):
            term = original(trainer, pl_module)
            trials.append(term is not None)
            return term

        ewc.closure_loss = counted
        trainer(max_steps=40, callbacks=[ewc]).fit(module, shifted_loader(-2.0, 64))
        a_after = float(module.compute_loss(next(iter(shifted_loader(2.0, 64)))))
        closure_evals = module.trainer.callback_metrics["train/closure_evals"]
        return a_after - a_before, sum(trials), closure_evals

    forgetting_plain, _, _ = run(0.0)
    forgetting_ewc, calls, _ = run(1000.0)
    assert forgetting_ewc < 0.5 * forgetting_plain
    assert calls > 40  # a penalty term in the trials too, not once per step


def test_resume_between_stages_keeps_fisher_and_anchors(tmp_path):
    ewc = EWC(ewc_lambda=10.0, mode="online", decay=0.9)
    module = sgd()
    first = trainer(max_steps=3, callbacks=[ewc])
    first.fit(module, shifted_loader(2.0))
    first.save_checkpoint(tmp_path / "after_a.ckpt")
    restored = EWC(ewc_lambda=10.0, mode="online", decay=0.9)
    checkpoint = torch.load(tmp_path / "after_a.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("EWC")]
    restored.load_state_dict(state)
    for kind in ("fisher", "anchor"):
        for name, tensor in ewc.tasks[0][kind].items():
            assert torch.equal(restored.tasks[0][kind][name], tensor)
    with pytest.raises(ValueError, match="mode"):
        EWC(mode="separate").load_state_dict(state)


def test_a_fit_resumed_from_its_last_step_still_consolidates_its_task(tmp_path):
    # the checkpoint of step 4 is written before the fit's end consolidates task A
    ewc = EWC(ewc_lambda=10.0)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)
    module = sgd()
    trainer(max_steps=4, callbacks=[ewc, saver], enable_checkpointing=True).fit(
        module, shifted_loader(2.0)
    )
    resumed = EWC(ewc_lambda=10.0)
    fit = trainer(max_steps=4, callbacks=[resumed])
    fit.fit(sgd(), shifted_loader(2.0), ckpt_path=tmp_path / "last.ckpt")
    assert len(ewc.tasks) == len(resumed.tasks) == 1
    for kind in ("fisher", "anchor"):
        for name, tensor in ewc.tasks[0][kind].items():
            assert torch.allclose(resumed.tasks[0][kind][name], tensor), (kind, name)
    fit.save_checkpoint(tmp_path / "after.ckpt")  # after the consolidation: not added twice
    again = EWC(ewc_lambda=10.0)
    trainer(max_steps=4, callbacks=[again]).fit(
        sgd(), shifted_loader(2.0), ckpt_path=tmp_path / "after.ckpt"
    )
    assert len(again.tasks) == 1


def test_two_ewc_callbacks_with_other_settings_each_resume_their_own_state(tmp_path):
    def pair():
        return [EWC(ewc_lambda=10.0), EWC(ewc_lambda=10.0, mode="online", decay=0.5)]

    first = pair()
    fit = trainer(max_steps=3, callbacks=first)
    fit.fit(sgd(), shifted_loader(2.0))
    fit.save_checkpoint(tmp_path / "a.ckpt")
    resumed = pair()
    trainer(max_steps=3, callbacks=resumed).fit(
        sgd(), shifted_loader(2.0), ckpt_path=tmp_path / "a.ckpt"
    )
    for saved, loaded in zip(first, resumed):
        assert loaded.mode == saved.mode and len(loaded.tasks) == 1
        for name, tensor in saved.tasks[0]["fisher"].items():
            assert torch.equal(loaded.tasks[0]["fisher"][name], tensor)


def test_a_checkpoint_with_ewc_s_older_state_key_resumes_its_state(tmp_path):
    ewc = EWC(ewc_lambda=10.0)
    fit = trainer(max_steps=3, callbacks=[ewc])
    fit.fit(sgd(), shifted_loader(2.0))
    fit.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=False)
    states = checkpoint["callbacks"]
    states["EWC"] = states.pop(ewc.state_key)  # as lsframe saved it before its settings joined
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = EWC(ewc_lambda=10.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=3, callbacks=[resumed]).fit(
            sgd(), shifted_loader(2.0), ckpt_path=tmp_path / "old.ckpt"
        )
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    for name, tensor in ewc.tasks[0]["anchor"].items():
        assert torch.equal(resumed.tasks[0]["anchor"][name], tensor)


def test_the_logged_penalty_is_the_one_at_the_point_the_gradient_is_taken():
    ewc = EWC(ewc_lambda=1000.0)
    module = TinyRegression(optimizer=SaLSA)
    trainer(max_steps=5, callbacks=[ewc]).fit(module, shifted_loader(2.0, 64))
    calls = []
    original = ewc.closure_loss

    def recorded(trainer, pl_module):
        term = original(trainer, pl_module)
        calls.append((torch.is_grad_enabled(), float(term)))
        return term

    ewc.closure_loss = recorded
    with torch.no_grad():  # far from task A's anchor: the first search backtracks
        for p in module.model.parameters():
            p.add_(0.5)
    fit = trainer(max_steps=1, callbacks=[ewc])
    fit.fit(module, shifted_loader(-2.0, 64))
    assert not calls[-1][0]  # the step ends with a forward-only trial
    at_gradient = [value for grad, value in calls if grad][-1]
    assert float(fit.callback_metrics["ewc/penalty"]) == pytest.approx(at_gradient, rel=1e-6)
    assert at_gradient != pytest.approx(calls[-1][1], rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"include": "head"},
            r"include must be a list of regular expressions \(write \['head'\]\)",
        ),
        ({"exclude": [1]}, "exclude must be a list of regular expressions"),
        ({"include": ["["]}, r"include must be a list of regular expressions \('\['"),
        ({"mlm_max_length": 0}, "mlm_max_length must be an integer >= 1"),
    ],
)
def test_bad_patterns_and_lengths_are_refused_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EWC(**kwargs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        EWC(mode="both")
    with pytest.raises(ValueError, match="ewc_lambda"):
        EWC(ewc_lambda=-1)
    with pytest.raises(ValueError, match="decay"):
        EWC(decay=2.0)
    with pytest.raises(ValueError, match="selected no parameter"):
        trainer(max_steps=1, callbacks=[EWC(include=["weight"], exclude=["weight"])]).fit(
            sgd(), loader(8, 4)
        )
    with pytest.raises(ConfigError, match="include pattern 'nothing' matches no trainable"):
        trainer(max_steps=1, callbacks=[EWC(include=["weight", "nothing"])]).fit(
            sgd(), loader(8, 4)
        )


@pytest.mark.skipif(
    importlib.util.find_spec("avalanche") is None, reason="avalanche-lib is not installed"
)
def test_fisher_and_penalty_equal_avalanches_ewc_plugin_with_twice_the_lambda():
    from types import SimpleNamespace

    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.utils import copy_params_dict

    ewc = EWC(ewc_lambda=2 * 3.0)  # lsframe's (λ/2) vs Avalanche's λ
    module = sgd()
    data = shifted_loader(2.0)
    trainer(max_steps=3, callbacks=[ewc]).fit(module, data)
    plugin = EWCPlugin(ewc_lambda=3.0)
    x, y = data.dataset.tensors
    dataset = TensorDataset(x, y, torch.zeros(len(y), dtype=torch.long))
    model = module.model
    criterion = lambda out, target: F.mse_loss(out.squeeze(-1), target)  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    importances = plugin.compute_importances(model, criterion, optimizer, dataset, "cpu", 4)
    for name, imp in importances.items():
        torch.testing.assert_close(ewc.tasks[0]["fisher"][name], imp.data)
    plugin.importances[0] = importances
    plugin.saved_params[0] = copy_params_dict(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    strategy = SimpleNamespace(
        clock=SimpleNamespace(train_exp_counter=1), model=model, device="cpu", loss=0.0
    )
    plugin.before_backward(strategy)
    torch.testing.assert_close(ewc.closure_loss(None, module), strategy.loss)


def test_bertcl_baseline_mlm_fisher_anchored_at_the_pretrained_weights(minilm, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from lsframe.hub import load_tokenizer
    from lsframe.modules import SequenceClassificationModule

    tokenizer = load_tokenizer(minilm)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    texts = tmp_path / "wiki.txt"
    texts.write_text("\n".join(f"the cat number {i} sat on the mat today." for i in range(40)))
    ewc = EWC(source="mlm", mlm_model=str(tmp_path / "mlm"), mlm_texts=str(texts))
    module = SequenceClassificationModule(str(tmp_path / "mlm"), num_labels=2)
    pretrained = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    ids = tokenizer(["a fine film"] * 8, padding=True, return_tensors="pt")
    data = [{**{k: v[i] for k, v in ids.items()}, "labels": torch.tensor(i % 2)} for i in range(8)]
    loader = DataLoader(data, batch_size=4)
    trainer(max_steps=2, callbacks=[ewc]).fit(module, loader)
    (task,) = ewc.tasks  # one MLM term, no per-fit consolidation
    assert set(task["fisher"]) and all(n.startswith("bert.") for n in task["fisher"])
    assert not any(n.startswith(("classifier", "bert.pooler")) for n in task["fisher"])
    assert sum(float(f.sum()) for f in task["fisher"].values()) > 0
    for name, anchor in task["anchor"].items():
        assert torch.equal(anchor, pretrained[name])
    assert float(ewc.closure_loss(None, module)) > 0  # training moved the encoder off its anchor
    with pytest.raises(ValueError, match="mlm_model"):
        EWC(source="mlm")


def test_an_mlm_model_without_its_masked_lm_head_is_refused(minilm, tmp_path):
    # the offline MiniLM is an encoder without an MLM head: transformers would draw one at random
    from lsframe.hub import load_tokenizer
    from lsframe.modules import SequenceClassificationModule

    texts = tmp_path / "wiki.txt"
    texts.write_text("the cat sat on the mat.\n")
    ewc = EWC(source="mlm", mlm_model=minilm, mlm_texts=str(texts), fisher_batches=1)
    module = SequenceClassificationModule(minilm, num_labels=2)
    ids = load_tokenizer(minilm)(["a fine film"] * 2, return_tensors="pt")
    data = [{**{k: v[i] for k, v in ids.items()}, "labels": torch.tensor(i)} for i in range(2)]
    with pytest.raises(ConfigError, match=r"lacks .*cls\.predictions\.bias.*6 in all") as error:
        trainer(max_steps=1, callbacks=[ewc]).fit(module, DataLoader(data, batch_size=2))
    assert error.value.argument == "mlm_model" and not ewc.tasks


def test_a_missing_mlm_texts_file_is_named_at_its_key(tmp_path):
    from lsframe.errors import MissingFileError

    with pytest.raises(MissingFileError) as info:
        EWC(source="mlm", mlm_model=str(tmp_path), mlm_texts=str(tmp_path / "gone.txt"))
    located = info.value.at("trainer.callbacks[0].init_args")
    assert (
        str(located)
        == f"{tmp_path}/gone.txt is not a file (trainer.callbacks[0].init_args.mlm_texts)"
    )
    with pytest.raises(ValueError, match="needs mlm_model") as info:
        EWC(source="mlm", mlm_texts=str(tmp_path / "gone.txt"))
    assert info.value.at("trainer.callbacks[0].init_args").where.endswith("init_args.mlm_model")
