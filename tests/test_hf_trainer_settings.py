"""Trainer's settings around a line search (lsframe.integrations.hf): its schedules act on the
step size's multiplier, bf16 keeps the search's losses in fp32, settings a search cannot honour
are refused, and a resume from Trainer's checkpoint is bit-exact."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")  # Trainer needs it; lsframe's dev extras install it

from hf_helpers import DATA, arguments, bert, one_thread, training_logs  # noqa: E402, F401
from transformers import TrainerCallback  # noqa: E402
from transformers.optimization import get_linear_schedule_with_warmup  # noqa: E402

from lsframe.errors import ConfigError  # noqa: E402
from lsframe.integrations.hf import LineSearchTrainer  # noqa: E402
from lsframe.optim import SaLSA, SlopeTrackingAdam, StepSizeSchedule, create  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.mark.parametrize("make", [SaLSA, SlopeTrackingAdam])
def test_a_second_train_restarts_the_schedule_as_it_does_for_adamw(make, tmp_path):
    # a linear decay ends at a multiplier of 0: the second train()'s schedule must start from the
    # group's own multiplier again, as torch's schedulers start from ``initial_lr``
    model = bert()
    args = arguments(
        tmp_path, max_steps=4, warmup_steps=1, lr_scheduler_type="linear", logging_steps=1
    )
    trainer = LineSearchTrainer(
        model=model, args=args, train_dataset=DATA, optimizers=(make(model.parameters()), None)
    )
    trainer.train()
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    peak = max(e["learning_rate"] for e in training_logs(trainer)[-4:])
    assert peak > 0
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


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

    # with accumulation, two forwards at Trainer's precision come first: whether BERT's loss
    # ignores num_items_in_batch (LineSearchTrainer's check, not the search)
    first = next(i for i, (grad, _) in enumerate(seen) if grad)
    assert first == (2 if accumulation > 1 else 0)
    seen = seen[first:]
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
