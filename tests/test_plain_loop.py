"""Plain PyTorch loops: lsframe.optim.make_closure, and what a line search says about a closure
that does not keep lsframe's contract ``closure(backward: bool = True) -> Tensor``."""

from __future__ import annotations

import warnings

import helpers
import pytest
import torch
from torch import nn

from lsframe.errors import ConfigError
from lsframe.optim import SGDSLS, SaLSA, create, info, line_searches, make_closure, names
from lsframe.optim.closure import ClosureContractError, LossClosure

CONTRACT = "closure(backward: bool = True) -> Tensor"


def classification_data(n: int = 128, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def classifier(seed: int = 0, dropout: float = 0.2, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 2)]
    return nn.Sequential(*layers)


def build(name: str, model: nn.Module) -> torch.optim.Optimizer:
    kwargs = {} if info(name).test_lr is None else {"lr": info(name).test_lr}
    return create(name, model.parameters(), **kwargs)


def full_loss(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y).item()
    model.train()
    return loss


@pytest.mark.parametrize("name", names())
def test_every_optimizer_learns_in_a_plain_loop_with_a_criterion(name):
    x, y = classification_data()
    model = classifier()
    optimizer = build(name, model)
    criterion = nn.CrossEntropyLoss()
    before = full_loss(model, x, y)
    for _epoch in range(5):
        for start in range(0, len(x), 32):
            batch = (x[start : start + 32], y[start : start + 32])
            optimizer.step(make_closure(model, batch, optimizer, criterion=criterion))
    after = full_loss(model, x, y)
    assert after < before - 0.05, (name, before, after)


def tiny_bert():
    pytest.importorskip("transformers")
    return helpers.tiny_bert()  # dropout 0.1


def test_hugging_face_model_trials_see_the_backward_pass_dropout_masks():
    model = tiny_bert()
    model.train()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 30, (8, 6), generator=generator),
        "labels": torch.randint(0, 2, (8,), generator=generator),
    }
    optimizer = SaLSA(model.parameters())
    closure = make_closure(model, batch, optimizer)  # the model's own loss: model(**batch).loss
    loss = closure()  # backward
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    trial = closure(backward=False)
    assert trial.requires_grad is False
    assert torch.equal(trial, loss)  # same inputs, same masks, same parameters
    assert all(torch.equal(g, p.grad) for (n, g), p in zip(grads.items(), model.parameters()))
    torch.manual_seed(99)
    with torch.no_grad():
        assert not torch.equal(model(**batch).loss, loss)  # dropout is active
    assert closure.evaluations == 2
    optimizer.step(closure)  # and the step itself takes it
    assert optimizer.state["line_search"]["step"] == 1


def test_loss_fn_of_model_and_batch():
    x, y = classification_data()
    model = classifier(dropout=0.0)
    optimizer = SGDSLS(model.parameters())
    batch = {"features": x, "target": y}
    closure = make_closure(
        model,
        batch,
        optimizer,
        loss_fn=lambda m, b: nn.functional.cross_entropy(m(b["features"]), b["target"]),
    )
    assert isinstance(closure, LossClosure)
    first = optimizer.step(closure)
    assert float(first) == pytest.approx(full_loss(classifier(dropout=0.0), x, y), rel=1e-6)


def test_criterion_unpacks_tuple_and_mapping_inputs():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, a, b):
            return self.linear(torch.cat([a, b], dim=-1))

    model = TwoInputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    a, b, y = torch.randn(5, 2), torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    criterion = nn.CrossEntropyLoss()
    expected = criterion(model(a, b), y)
    for inputs in ((a, b), {"a": a, "b": b}):
        closure = make_closure(model, (inputs, y), optimizer, criterion=criterion)
        assert torch.equal(closure(backward=False), expected.detach())


def test_make_closure_refuses_ambiguous_or_malformed_input():
    model = classifier()
    optimizer = SaLSA(model.parameters())
    with pytest.raises(ConfigError, match="loss_fn or criterion"):
        make_closure(model, None, optimizer, loss_fn=lambda m, b: 0, criterion=nn.MSELoss())
    closure = make_closure(model, torch.randn(4, 6), optimizer, criterion=nn.MSELoss())
    with pytest.raises(ConfigError, match=r"\(inputs, target\)"):
        closure()
    # the default, model(**batch).loss: a tensor batch failed on '**'; a batch without labels
    # gave "loss_fn must return the mean loss ..., got NoneType" though none was passed
    closure = make_closure(model, torch.randn(4, 6), optimizer)
    with pytest.raises(ConfigError, match="needs a mapping batch, got Tensor; or pass criterion="):
        closure()
    bert = tiny_bert()
    inputs = {"input_ids": torch.randint(0, 30, (4, 6))}
    closure = make_closure(bert, inputs, SaLSA(bert.parameters()))
    message = r"returned no loss: is 'labels' in the batch\? \(input_ids\); or pass criterion="
    with pytest.raises(ConfigError, match=message):
        closure()


def test_batch_norm_statistics_move_once_per_step_whatever_the_trials():
    x, y = classification_data(32)
    model = classifier(dropout=0.0, batch_norm=True)
    reference = classifier(dropout=0.0, batch_norm=True)
    reference.train()
    with torch.no_grad():
        reference(x)  # one batch's worth of running statistics
    optimizer = SGDSLS(model.parameters(), lr=100.0)  # backtracks: several trials
    optimizer.step(make_closure(model, (x, y), optimizer, criterion=nn.CrossEntropyLoss()))
    assert optimizer.state["line_search"]["forwards"] > 1
    norm, expected = model[1], reference[1]
    assert int(norm.num_batches_tracked) == 1
    torch.testing.assert_close(norm.running_mean, expected.running_mean)
    torch.testing.assert_close(norm.running_var, expected.running_var)


# ------------------------------------------------------------------ the contract, enforced
def torch_style_closure(model, optimizer, calls):
    x, y = classification_data(16)

    def closure():  # as written for torch's LBFGS
        calls.append(1)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("name", [n for n in line_searches() if info(n).forward_trials])
def test_a_torch_style_closure_gets_lsframes_error_before_anything_runs(name):
    model = classifier()
    optimizer = create(name, model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    calls: list[int] = []
    with pytest.raises(ClosureContractError) as caught:
        optimizer.step(torch_style_closure(model, optimizer, calls))
    error = caught.value
    assert isinstance(error, TypeError) and isinstance(error, ConfigError)
    assert CONTRACT in str(error) and "make_closure" in str(error)
    assert "backward" in str(error) and type(optimizer).__name__ in str(error)
    assert calls == []  # refused before the first evaluation
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert optimizer.state["line_search"]["step"] == 0

    with pytest.raises(ClosureContractError, match="needs a closure") as caught:
        optimizer.step()
    # the contract first, GradScaler's case after it
    message = str(caught.value)
    assert message.startswith(f"{type(optimizer).__name__}.step needs a closure: lsframe's")
    assert CONTRACT in message and message.index("GradScaler") > message.index(CONTRACT)


def test_a_torch_style_closure_works_with_a_separate_forward():
    model = classifier(dropout=0.0)
    optimizer = SaLSA(model.parameters())
    calls: list[int] = []
    x, y = classification_data(16)

    def forward():
        with torch.no_grad():
            return nn.functional.cross_entropy(model(x), y)

    optimizer.step(torch_style_closure(model, optimizer, calls), forward=forward)
    assert calls == [1] and optimizer.state["line_search"]["step"] == 1


def test_closures_that_accept_backward_in_any_form_are_let_through():
    model = classifier(dropout=0.0)
    optimizer = SGDSLS(model.parameters())
    inner = make_closure(model, classification_data(16), optimizer, criterion=nn.CrossEntropyLoss())

    class Callable:
        def __call__(self, backward=True):
            return inner(backward)

    for closure in (inner, Callable(), lambda *args, **kwargs: inner(*args, **kwargs)):
        optimizer.step(closure)
    assert optimizer.state["line_search"]["step"] == 3


def test_torch_optimizers_take_lsframes_closure():
    model = classifier(dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    closure = make_closure(
        model, classification_data(16), optimizer, criterion=nn.CrossEntropyLoss()
    )
    loss = optimizer.step(closure)  # torch calls closure() -> backward=True
    assert loss is not None and closure.evaluations == 1


def test_make_closure_names_a_loss_fn_that_returns_per_example_losses():
    model = classifier()
    x, y = classification_data(8)
    opt = SaLSA(model.parameters())
    per_example = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")  # noqa: E731
    closure = make_closure(model, (x, y), opt, loss_fn=per_example)
    with pytest.raises(ClosureContractError, match=r"^loss_fn must return .* shape \(8,\)"):
        opt.step(closure)


@pytest.mark.parametrize("name", ["sgdsls", "salsa", "slope_tracking_adam"])
def test_a_closure_that_never_back_propagates_is_warned_about_not_counted_silently(name):
    # every step was a no-op counted as "rejected", the record's word for a non-finite loss
    model = classifier(dropout=0.0)
    optimizer = create(name, model.parameters())
    x, y = classification_data(16)

    def closure(backward=True):
        with torch.set_grad_enabled(backward):
            return nn.functional.cross_entropy(model(x), y)  # no loss.backward()

    with pytest.warns(UserWarning, match="no parameter has a gradient after closure") as caught:
        optimizer.step(closure)
    assert caught[0].filename == __file__  # the line that called step, not torch's wrapper
    assert optimizer.last_step["rejected"]
    with warnings.catch_warnings():  # a non-finite loss is its own reason (nonfinite_loss skip)
        warnings.simplefilter("error")
        optimizer.step(lambda backward=True: torch.tensor(float("nan")))
    for p in model.parameters():  # all frozen: nothing to warn about
        p.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step(lambda backward=True: torch.tensor(1.0))


@pytest.mark.parametrize("name", ["slope_tracking_adam", "salsa"])
def test_a_compiled_function_that_steps_a_line_search_runs_the_step_eagerly(name):
    # Dynamo traced into the step and lost the state it wrote across a graph break:
    # SlopeTrackingAdam raised AttributeError '_kernels'
    x, y = classification_data(32)
    trained = []
    for compiled in (False, True):
        model = classifier(dropout=0.0)
        optimizer = build(name, model)

        def step(closure, optimizer=optimizer):
            return optimizer.step(closure)

        run = torch.compile(step) if compiled else step
        for _ in range(3):
            run(make_closure(model, (x, y), optimizer, criterion=nn.functional.cross_entropy))
        trained.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*trained))
