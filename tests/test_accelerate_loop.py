"""lsframe's optimizers in a Hugging Face Accelerate loop (docs/integrations.md, "Accelerate"):
the prepared optimizer and model, its accumulation, fp16 scaler and bf16 forward patch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("accelerate")  # lsframe's dev extras install it

from accelerate import Accelerator  # noqa: E402
from accelerate.optimizer import AcceleratedOptimizer  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from lsframe.errors import ConfigError  # noqa: E402
from lsframe.optim import (  # noqa: E402
    SGDSLS,
    LossClosure,
    SaLSA,
    StepSizeSchedule,
    WarmupCosineLR,
    make_closure,
)

CRITERION = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # Accelerate keeps one process-wide state: each test builds its own Accelerator
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return x, (x[:, 0] > 0).long()


def test_a_step_size_schedule_takes_the_optimizer_accelerate_prepared():
    accelerator = Accelerator(cpu=True)
    inner = SaLSA(mlp().parameters())
    prepared = accelerator.prepare(inner)
    assert isinstance(prepared, AcceleratedOptimizer)
    schedule = StepSizeSchedule(
        prepared, lambda o: WarmupCosineLR(o, warmup_ratio=0.5, total_steps=4)
    )
    assert schedule.optimizer is inner
    schedule.step()
    assert inner.param_groups[0]["lr_multiplier"] == pytest.approx(1.0)  # warmup's end


def test_a_closure_over_one_micro_batch_is_refused_where_accelerate_accumulates():
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer = accelerator.prepare(mlp(), SaLSA(mlp().parameters()))
    with pytest.raises(
        ConfigError, match="accumulates gradients over 2 micro-batches.*LossClosure"
    ):
        make_closure(model, batch(), optimizer, criterion=CRITERION)


def test_one_loss_closure_over_the_micro_batches_steps_as_on_the_whole_batch():
    # the recipe the refusal points to: a LossClosure over the step's micro-batches
    x, y = batch(32)
    whole = mlp().eval()  # no dropout: two halves draw other masks than the whole batch
    reference = SGDSLS(whole.parameters())
    reference.step(make_closure(whole, (x, y), reference, criterion=CRITERION))

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    net = mlp().eval()  # the parameters the reference started from
    model, optimizer = accelerator.prepare(net, SGDSLS(net.parameters()))
    micro_batches, stepped = [], 0
    for part in ((x[:16], y[:16]), (x[16:], y[16:])):
        with accelerator.accumulate(model):
            micro_batches.append(part)
            if accelerator.sync_gradients:
                parts, micro_batches = micro_batches, []
                closure = LossClosure(
                    lambda parts=parts: sum(CRITERION(model(a), b) for a, b in parts) / len(parts),
                    optimizer,
                    model=model,
                )
                optimizer.step(closure)
                stepped += 1
    assert stepped == 1
    for got, expected in zip(model.parameters(), whole.parameters()):
        torch.testing.assert_close(got, expected)


def test_a_closure_is_refused_where_accelerate_steps_through_an_fp16_grad_scaler():
    # on CUDA, mixed_precision="fp16" wraps the optimizer so; the scaler exists on CPU too
    Accelerator(cpu=True)
    model = mlp()
    optimizer = AcceleratedOptimizer(SaLSA(model.parameters()), scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ConfigError, match="fp16's GradScaler, which cannot drive a closure"):
        make_closure(model, batch(), optimizer, criterion=CRITERION)


@pytest.mark.parametrize("compiled", [False, True])
def test_under_accelerate_bf16_the_search_compares_float32_losses_and_trains_in_bf16(compiled):
    # accelerate patches the model's forward with bf16 autocast (the compiled wrapper's, for a
    # model compiled before prepare): autocast around the step (the plain-loop recipe) must
    # still give the search float32 losses at x and at every trial
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    net = mlp()
    net.eval()  # no dropout: the loss at x below is the one the search computes
    seen: list[tuple[bool, torch.dtype]] = []
    net[3].register_forward_hook(
        lambda _m, _i, out: seen.append((torch.is_grad_enabled(), out.dtype))
    )
    optimizer = SaLSA(net.parameters())
    model = torch.compile(net, backend="eager") if compiled else net
    model, prepared = accelerator.prepare(model, optimizer)
    x, y = batch()
    with torch.no_grad():
        at_x = float(CRITERION(model._original_forward(x), y))  # accelerate's own unpatched one
        rounded = float(CRITERION(model(x), y))
    seen.clear()
    forward_before = copy.copy(vars(model)["forward"])
    with accelerator.autocast():
        prepared.step(make_closure(model, (x, y), prepared, criterion=CRITERION))

    assert seen[0] == (True, torch.bfloat16)  # the backward evaluation: the run's precision
    trials = [dtype for grad, dtype in seen[1:] if not grad]
    assert trials and set(trials) == {torch.float32}
    assert optimizer.last_step["reference_loss"] == pytest.approx(at_x, rel=1e-6)
    assert at_x != rounded
    assert vars(model)["forward"] == forward_before  # the patch is back


def test_an_optimizer_that_merely_has_a_scaler_attribute_is_not_taken_for_fp16():
    class LossScaled(SaLSA):
        scaler = 2.0  # a user's own attribute, no GradScaler

    model = mlp()
    optimizer = LossScaled(model.parameters())
    optimizer.step(make_closure(model, batch(), optimizer, criterion=CRITERION))
    assert optimizer.last_step is not None
