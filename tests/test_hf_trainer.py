"""lsframe's optimizers in Hugging Face ``Trainer`` (lsframe.integrations.hf), on a tiny
random-init BERT and a synthetic task it can learn in a few dozen CPU steps."""

from __future__ import annotations

import math

import helpers
import pytest
import torch

pytest.importorskip("accelerate")  # Trainer needs it; lsframe's dev extras install it

from transformers import (  # noqa: E402
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.optimization import get_linear_schedule_with_warmup  # noqa: E402

from lsframe.errors import ConfigError  # noqa: E402
from lsframe.integrations.hf import LineSearchTrainer, TrainerStepClosure  # noqa: E402
from lsframe.optim import (  # noqa: E402
    SaLSA,
    SlopeTrackingAdam,
    StepSizeSchedule,
    create,
    info,
    names,
)
from lsframe.optim.closure import ClosureContractError  # noqa: E402
from lsframe.parts import part_groups  # noqa: E402

VOCAB, LENGTH = 40, 8


def dataset(n: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Class 1 draws 70 % of its tokens from the upper half of the vocabulary, class 0 from the
    lower half: every token carries evidence, so a 2-layer BERT learns it in ~30 steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    low = torch.randint(4, VOCAB // 2 + 2, (n, LENGTH), generator=generator)
    high = torch.randint(VOCAB // 2 + 2, VOCAB, (n, LENGTH), generator=generator)
    upper = (torch.rand(n, LENGTH, generator=generator) < 0.7) == labels[:, None].bool()
    ids = torch.where(upper, high, low)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


DATA = dataset()


def bert(seed: int = 0) -> BertForSequenceClassification:
    # dropout 0.1 (BERT's default): the trials must see the backward pass's masks
    return helpers.tiny_bert(seed, vocab=VOCAB, hidden=32, layers=2)


def arguments(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=10,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=128,
        logging_steps=5,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on the 2-core machine
    yield
    torch.set_num_threads(threads)


def optimizer_for(name: str, model: torch.nn.Module):
    if info(name).param_grouping == "parts":
        return create(name, part_groups(model, num_parts=4))
    kwargs = {} if info(name).test_lr is None else {"lr": info(name).test_lr}
    return create(name, model.parameters(), **kwargs)


def training_logs(trainer: Trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


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


def test_trainer_schedule_acts_on_lr_multiplier(tmp_path):
    """Trainer's own lr_scheduler_type and warmup become the line search's lr_multiplier; with
    optimizer_cls_and_kwargs Trainer builds the line search on its weight-decay groups."""
    multipliers, used = [], []

    class Record(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            groups = optimizer.param_groups  # after the step, before the scheduler's
            multipliers.append([g["lr_multiplier"] for g in groups])
            used.append([(g["lr"], g["step_size"]) for g in groups])

    args = arguments(
        tmp_path,
        max_steps=8,
        warmup_steps=3,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        logging_steps=1,
    )
    trainer = LineSearchTrainer(
        model=bert(),
        args=args,
        train_dataset=DATA,
        optimizer_cls_and_kwargs=(SaLSA, {}),
        callbacks=[Record()],
    )
    trainer.train()

    optimizer = trainer.optimizer.optimizer  # Accelerate's wrapper around the SaLSA
    assert isinstance(optimizer, SaLSA) and len(optimizer.param_groups) == 2
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert isinstance(trainer.lr_scheduler, StepSizeSchedule)
    reference = get_linear_schedule_with_warmup(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 3, 8
    ).lr_lambdas[0]
    expected = [reference(step) for step in range(8)]  # 0, 1/3, 2/3, 1, 0.8, ... 0.2
    assert [m[0] for m in multipliers] == pytest.approx(expected)
    assert all(m[0] == m[1] for m in multipliers)
    assert all(step_size > 0 for groups in used for _, step_size in groups)
    for (lr, step_size), multiplier, entry in zip(
        (u[0] for u in used), (m[0] for m in multipliers), training_logs(trainer)
    ):
        assert lr == pytest.approx(step_size * multiplier)
        assert entry["learning_rate"] == pytest.approx(lr)  # the step actually taken
        assert entry["step_size"] == pytest.approx(step_size)


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


def test_a_torch_scheduler_on_a_line_search_is_refused(tmp_path):
    model = bert()
    optimizer = SaLSA(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(ConfigError, match="StepSizeSchedule"):
        LineSearchTrainer(
            model=model,
            args=arguments(tmp_path),
            train_dataset=DATA,
            optimizers=(optimizer, scheduler),
        )


def test_a_step_size_schedule_passed_in_is_used(tmp_path):
    model = bert()
    optimizer = SaLSA(model.parameters())
    schedule = StepSizeSchedule(
        optimizer, lambda shadow: torch.optim.lr_scheduler.LambdaLR(shadow, lambda s: 0.5)
    )
    trainer = LineSearchTrainer(
        model=model,
        args=arguments(tmp_path, max_steps=2, logging_steps=1),
        train_dataset=DATA,
        optimizers=(optimizer, schedule),
    )
    trainer.train()
    assert trainer.lr_scheduler is schedule
    for entry in training_logs(trainer):
        assert entry["learning_rate"] == pytest.approx(0.5 * entry["step_size"])


@pytest.mark.parametrize("name, accumulation", [("salsa", 1), ("sgdsls", 1), ("salsa", 2)])
def test_under_bf16_a_search_compares_full_precision_losses(name, accumulation, tmp_path):
    """accelerate autocasts inside the model's forward under ``bf16=True``; the search's loss at
    x and its trials must still run in fp32 (bf16 cannot resolve a fine-tuning step's change)."""
    model = bert()
    optimizer = create(name, model.parameters())
    seen: list[tuple[bool, torch.dtype]] = []  # per forward: gradients on?, the logits' dtype
    model.classifier.register_forward_hook(
        lambda _m, _i, out: seen.append((torch.is_grad_enabled(), out.dtype))
    )
    args = arguments(tmp_path, max_steps=3, bf16=True, gradient_accumulation_steps=accumulation)
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
    )
    trainer.train()

    trained = [dtype for grad, dtype in seen if grad]
    evaluated = [dtype for grad, dtype in seen if not grad]
    assert trained and set(trained) == {torch.bfloat16}  # Trainer's own forwards stay bf16
    assert evaluated and set(evaluated) == {torch.float32}
    record = optimizer.last_step
    assert "reference_loss" in record  # the loss at x, recomputed in fp32
    # each evaluation runs every micro-batch of the step
    assert len(evaluated) == accumulation * optimizer.state["line_search"]["forwards"]
    # the fp32 loss at x differs from the bf16 one Trainer back-propagated
    assert record["reference_loss"] != record["loss"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"fp16": True}, "fp16"),
        (
            {"lr_scheduler_type": "reduce_lr_on_plateau", "eval_strategy": "steps"},
            "reduce_lr_on_plateau",
        ),
    ],
)
def test_settings_a_line_search_cannot_honour_are_refused(overrides, match, tmp_path):
    model = bert()
    with pytest.raises(ConfigError, match=match):
        LineSearchTrainer(
            model=model,
            args=arguments(tmp_path, **overrides),
            train_dataset=DATA,
            eval_dataset=DATA,
            optimizers=(SaLSA(model.parameters()), None),
        )


@pytest.mark.parametrize(
    "make, steps, saved_at",
    [
        (lambda model: SaLSA(model.parameters()), 6, 3),
        # a tracker that stops growing after pass 0, resumed in pass 1 (8 batches a pass)
        (
            lambda model: create("slope_tracking_adam", model.parameters(), preset="fresh_growth"),
            12,
            10,
        ),
    ],
    ids=["salsa", "slope_tracking_adam-across-a-pass"],
)
def test_resume_from_a_trainer_checkpoint_is_bit_exact(tmp_path, make, steps, saved_at):
    """Trainer's checkpoint holds the line search's state and the StepSizeSchedule's; the trials
    leave the random stream alone, so Trainer's saved random state is the whole story."""

    def run(out, resume=None, save=False):
        model = bert()
        optimizer = make(model)
        args = arguments(
            out,
            max_steps=steps,
            lr_scheduler_type="linear",
            warmup_steps=2,
            save_strategy="steps" if save else "no",
            save_steps=saved_at,
        )
        trainer = LineSearchTrainer(
            model=model, args=args, train_dataset=DATA, optimizers=(optimizer, None)
        )
        trainer.train(resume_from_checkpoint=resume)
        return model, optimizer

    straight, first = run(tmp_path / "straight")
    run(tmp_path / "saved", save=True)
    checkpoint = tmp_path / "saved" / f"checkpoint-{saved_at}"
    resumed, second = run(tmp_path / "resumed", resume=str(checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    assert first.state["line_search"] == second.state["line_search"]
    if isinstance(second, SlopeTrackingAdam):  # resumed in pass 1, and it knows it
        assert second.search_state["data_pass"] == 1
    assert first.param_groups[0]["step_size"] == second.param_groups[0]["step_size"]


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
