"""lsframe's optimizers in Hugging Face ``Trainer`` (lsframe.integrations.hf): every optimizer
learns, and a line search's closure gives its trials what Trainer's backward saw."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")  # Trainer needs it; lsframe's dev extras install it

import helpers  # noqa: E402
from hf_helpers import (  # noqa: E402, F401
    DATA,
    VOCAB,
    arguments,
    bert,
    one_thread,
    optimizer_for,
    training_logs,
)
from transformers import Trainer, TrainerCallback  # noqa: E402

from lsframe.errors import ConfigError  # noqa: E402
from lsframe.integrations.hf import LineSearchTrainer, TrainerStepClosure  # noqa: E402
from lsframe.optim import SGDSLS, SaLSA, SlopeTrackingAdam, info, names  # noqa: E402
from lsframe.optim.closure import ClosureContractError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", names(searches=True))
def test_a_small_bert_learns_with_every_line_search(name, tmp_path):
    model = bert()
    optimizer = optimizer_for(name, model)
    args = arguments(tmp_path, max_steps=60, logging_steps=10)
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    )
    before = trainer.evaluate(DATA)["eval_loss"]  # the whole training set, eval mode
    trainer.train()
    after = trainer.evaluate(DATA)["eval_loss"]

    # seeds 0-2 measured: every search falls by 0.045 or more (SGDSLS, ALSALS the least)
    assert after < before - 0.03, (name, before, after)
    counters = optimizer.state["line_search"]
    assert counters["step"] == 60 and counters["rejected_steps"] == 0
    if info(name).forward_trials:
        assert counters["searches"] > 0 and counters["forwards"] >= counters["searches"]
    else:  # a step-size tracker: no trial, its step size moved with the alignment
        assert counters["forwards"] == 0 and counters["alignments"] == 59
    logs = training_logs(trainer)
    assert len(logs) == 6
    for entry in logs:  # the accepted step size, and the step taken (constant schedule: equal)
        assert entry["step_size"] > 0
        assert math.isclose(entry["learning_rate"], entry["step_size"], rel_tol=1e-6)
    groups = optimizer.param_groups
    assert logs[-1]["step_size"] == groups[0]["step_size"]
    if any(g["step_size"] != groups[0]["step_size"] for g in groups):  # PLASLS's parts
        assert logs[-1][f"step_size/{groups[-1]['name']}"] == groups[-1]["step_size"]
    # after train() the optimizer is lsframe's own again: no closure, lsframe's error
    if info(name).forward_trials:
        with pytest.raises(ClosureContractError, match="closure"):
            optimizer.step()


def test_each_step_tells_a_tracker_which_pass_over_the_data_it_is_on(tmp_path, monkeypatch):
    seen = []
    original = SlopeTrackingAdam.step

    def step(self, closure=None, **kwargs):
        seen.append(self.search_state["data_pass"])
        return original(self, closure, **kwargs)

    monkeypatch.setattr(SlopeTrackingAdam, "step", step)
    model = bert()
    optimizer = optimizer_for("slope_tracking_adam", model)
    args = arguments(tmp_path, max_steps=-1, num_train_epochs=2)  # 8 batches a pass
    LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    ).train()
    assert seen == [0] * 8 + [1] * 8


class _StepProbe:
    """An optimizer step pre-hook: what the line search's closure gives before the step."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, optimizer, args, kwargs) -> None:
        closure = args[1] if len(args) > 1 else kwargs["closure"]  # args[0]: the optimizer
        assert isinstance(closure, TrainerStepClosure)
        model = closure.micro_batches[0].model
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        record = {
            "micro_batches": len(closure.micro_batches),
            "scales": [float(mb.scale) for mb in closure.micro_batches],
            "grad_norm": float(torch.stack([g.norm() for g in grads.values()]).norm()),
            "trial": float(closure.forward()),
            "trial_again": float(closure(backward=False)),
            "accumulated": float(sum(mb.loss for mb in closure.micro_batches)),
        }
        # the same micro-batches under another random state: other dropout masks, other loss
        torch.manual_seed(1234 + len(self.records))
        with torch.no_grad():
            record["other_masks"] = float(
                sum(mb.scale * model(**mb.inputs).loss for mb in closure.micro_batches)
            )
        if not self.records:  # a second backward evaluation repeats Trainer's, clipped again
            first = closure()  # Trainer's backward: returned as computed, gradients kept
            assert float(first) == pytest.approx(record["accumulated"], rel=1e-6)
            current = dict(model.named_parameters())
            assert all(torch.equal(g, current[n].grad) for n, g in grads.items())
            again = closure()
            assert float(again) == pytest.approx(record["accumulated"], rel=1e-5)
            for n, g in grads.items():
                torch.testing.assert_close(current[n].grad, g, rtol=1e-4, atol=1e-7)
        self.records.append(record)


def test_trials_see_the_same_micro_batches_dropout_and_clipped_gradients(tmp_path):
    model = bert()
    optimizer = SaLSA(model.parameters())
    probe = _StepProbe()
    optimizer.register_step_pre_hook(probe)
    args = arguments(
        tmp_path,
        max_steps=6,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_grad_norm=0.05,
        logging_steps=1,
    )
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    )
    trainer.train()

    assert len(probe.records) == 6
    logs = training_logs(trainer)
    # what Trainer back-propagates per micro-batch: compute_loss's loss / accumulation steps, or
    # the loss itself when Trainer passes num_items_in_batch to the model (which is then expected
    # to normalise over the whole accumulated batch)
    scale = 1.0 if trainer.model_accepts_loss_kwargs else 0.5
    for record, entry in zip(probe.records, logs):
        assert record["micro_batches"] == 2
        assert record["scales"] == pytest.approx([scale, scale])
        assert record["grad_norm"] <= 0.05 * (1 + 1e-4)  # Trainer clipped before the step
        assert entry["grad_norm"] > 0.05  # (the norm before clipping: clipping did act)
        # a forward-only trial at x is the loss Trainer back-propagated, accumulated
        assert record["trial"] == pytest.approx(record["accumulated"], rel=1e-5, abs=1e-6)
        assert record["trial_again"] == record["trial"]
        assert record["accumulated"] == pytest.approx(entry["loss"], abs=1e-4)
        assert abs(record["other_masks"] - record["trial"]) > 1e-4  # dropout is active


def test_trials_leave_the_run_random_stream_alone(tmp_path):
    """After each step the random state is where Trainer's backward passes left it, so the
    dropout masks of later steps do not depend on how many trials the search ran."""
    states = []

    class Record(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            states.append(torch.get_rng_state())

    model = bert()
    optimizer = SaLSA(model.parameters())
    draws = []

    def after_backward(opt, args, kwargs):
        draws.append(torch.get_rng_state())

    optimizer.register_step_pre_hook(after_backward)
    trainer = LineSearchTrainer(
        model=model,
        args=arguments(tmp_path, max_steps=3),
        train_dataset=DATA,
        optimizers=(optimizer, None),
        callbacks=[Record()],
    )
    trainer.train()
    assert optimizer.state["line_search"]["forwards"] >= 3
    assert all(torch.equal(a, b) for a, b in zip(draws, states))


@pytest.mark.parametrize("name", names(searches=False))
def test_optimizers_that_do_not_search_run_as_in_trainer(name, tmp_path):
    model = bert()
    optimizer = optimizer_for(name, model)
    args = arguments(tmp_path, max_steps=4, logging_steps=1, lr_scheduler_type="linear")
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    logs = training_logs(trainer)
    lr = optimizer.defaults["lr"]
    assert [entry["learning_rate"] for entry in logs] == pytest.approx(
        [lr * (4 - step) / 4 for step in range(4)]
    )  # Trainer's linear schedule on lr itself
    assert all("step_size" not in entry for entry in logs)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_stock_trainer_gets_lsframes_closure_error(tmp_path):
    model = bert()
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path, max_steps=1),
        train_dataset=DATA,
        optimizers=(SaLSA(model.parameters()), None),
    )
    with pytest.raises(ClosureContractError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "closure(backward: bool = True) -> Tensor" in message
    assert "LineSearchTrainer" in message and "make_closure" in message


def test_a_training_step_that_bypasses_line_search_trainer_s_is_named_in_one_line(tmp_path):
    class OwnStep(LineSearchTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = model(**inputs).loss
            self.accelerator.backward(loss)
            return loss.detach()

    model = bert()
    trainer = OwnStep(
        model=model,
        args=arguments(tmp_path, max_steps=1),
        train_dataset=DATA,
        optimizers=(SaLSA(model.parameters()), None),
    )
    with pytest.raises(ConfigError, match="OwnStep.training_step must compute its loss through"):
        trainer.train()


def test_a_compute_loss_can_keep_its_counts_to_trainers_own_calls(tmp_path):
    # a compute_loss that counts tokens or logs metrics (TRL's trainers) runs again for every
    # trial and the item-count check: line_search_trial tells those calls from Trainer's
    class Counting(LineSearchTrainer):
        calls = own = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.calls += 1
            self.own += not self.line_search_trial
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = bert()
    trainer = Counting(
        model=model,
        args=arguments(tmp_path, max_steps=4, gradient_accumulation_steps=2),
        train_dataset=DATA,
        optimizers=(SaLSA(model.parameters()), None),
    )
    # the item-count check judges this compute_loss, not BERT's (the warning named BERT)
    with pytest.warns(UserWarning, match="^Counting.compute_loss's loss ignores num_items_in"):
        trainer.train()
    assert trainer.own == 8 and trainer.calls > 8  # 4 steps of 2 micro-batches; the trials
    assert not trainer.line_search_trial


def _sgdsls_step_sizes(tmp_path, batch: int, accumulation: int) -> tuple[list[float], list]:
    model = helpers.tiny_bert(0, vocab=VOCAB, hidden=32, layers=2, dropout=0.0)
    optimizer = SGDSLS(model.parameters(), lr=30.0)  # too large: the search backtracks
    sizes = []
    optimizer.register_step_post_hook(
        lambda opt, *_: sizes.append(opt.param_groups[0]["step_size"])
    )
    args = arguments(
        tmp_path,
        max_steps=3,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        logging_steps=1,
    )
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    )
    trainer.train()
    return sizes, [entry["loss"] for entry in training_logs(trainer)]


def test_accumulation_leaves_sgdsls_steps_where_a_loss_ignores_the_item_count(tmp_path):
    # BERT's classification loss ignores num_items_in_batch, which Trainer passes to a forward
    # taking **kwargs: Trainer then trains on accumulation-steps times the mean loss, and SGDSLS's
    # accepted step depends on that scale
    one, one_losses = _sgdsls_step_sizes(tmp_path / "one", batch=16, accumulation=1)
    with pytest.warns(UserWarning, match="loss ignores num_items_in_batch.*2 times its mean"):
        two, two_losses = _sgdsls_step_sizes(tmp_path / "two", batch=8, accumulation=2)
    assert two == pytest.approx(one, rel=1e-5)
    assert two_losses == pytest.approx(one_losses, rel=1e-4)


def _lm_rows(first_masked: bool) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(8):
        ids = torch.randint(0, VOCAB, (8,), generator=generator)
        labels = ids.clone()
        labels[:4] = -100  # the prompt
        if first_masked and i == 0:
            labels[:] = -100  # an answer truncated away: this micro-batch cannot tell
        rows.append({"input_ids": ids, "labels": labels})
    return rows


class _InOrder(LineSearchTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


@pytest.mark.parametrize("first_masked", [False, True])
def test_a_causal_lm_whose_loss_honours_the_item_count_is_left_alone(first_masked, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    args = arguments(
        tmp_path, max_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=2
    )
    trainer = _InOrder(
        model=model,
        args=args,
        train_dataset=_lm_rows(first_masked),
        optimizers=(SaLSA(model.parameters()), None),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.model_accepts_loss_kwargs  # GPT-2 divides by num_items_in_batch itself
    assert not [w for w in caught if "num_items_in_batch" in str(w.message)]
    assert trainer._lsframe.item_count_checked  # the second micro-batch could tell
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_item_count_check_is_one_decision_for_every_process(tmp_path):
    # rank 0's first micro-batches cannot tell (all labels masked), rank 1's can: deciding
    # apart left one rank gathering counts the other never sent (a hang, hf_ddp_worker.py)
    results = helpers.two_process_results(
        Path(__file__).parent / "hf_ddp_worker.py", tmp_path / "out.json"
    )
    assert [rank["gpt2"]["accepts_loss_kwargs"] for rank in results] == [True, True]
    assert [rank["ignoring"]["accepts_loss_kwargs"] for rank in results] == [False, False]
    assert [rank["bert"]["accepts_loss_kwargs"] for rank in results] == [False, False]
    for model in ("gpt2", "ignoring", "bert"):
        assert results[0][model]["sum"] == results[1][model]["sum"]


def test_the_integration_layer_imports_no_lightning():
    import subprocess
    import sys

    code = (
        "import sys, lsframe.integrations; bare = 'transformers' in sys.modules; "
        "import lsframe.integrations.hf; "
        "print(bare, any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "False"]
