"""Line searches under bf16 autocast compare full-precision losses (lsframe.optim._precision).

Rounded to bf16, the loss of a fine-tuning step's trial differs from the loss at x by rounding
noise, and a search then accepts whatever that noise allows (here: the first trial, at η0 = 1,
where a full-precision search backtracks to ~6e-3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsframe.optim import create


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 2)
    )


def run(name: str, bf16: bool, steps: int, **kwargs) -> tuple[list[dict], list[list[bool]]]:
    """``steps`` steps on one fixed batch; per step the optimizer's ``last_step`` and, per
    forward, whether it ran under autocast."""
    model = mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=gen)
    y = (x[:, 0] > 0).long()
    opt = create(name, model.parameters(), **kwargs)
    seen: list[bool] = []
    model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))

    def closure(backward: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(backward):
            loss = nn.functional.cross_entropy(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    records, forwards = [], []
    for _ in range(steps):
        seen.clear()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            opt.step(closure)
        records.append(dict(opt.last_step, step_size=opt.param_groups[0]["step_size"]))
        forwards.append(list(seen))
    return records, forwards


@pytest.mark.parametrize("name", ["salsa", "adamsls", "sgdsls"])
def test_a_search_under_bf16_autocast_accepts_the_step_sizes_of_a_full_precision_search(name):
    full, _ = run(name, bf16=False, steps=4)
    mixed, forwards = run(name, bf16=True, steps=4)
    for a, b in zip(full, mixed):
        assert b["step_size"] == pytest.approx(a["step_size"], rel=0.25)  # bf16 gradients only
    # the loss at x that the search compared is the full-precision one, not the bf16 closure's
    assert mixed[0]["reference_loss"] == pytest.approx(full[0]["loss"], rel=1e-5)
    assert mixed[0]["loss"] != pytest.approx(full[0]["loss"], rel=1e-5)
    # one forward in bf16 (the closure's backward), then the reference and the trials in fp32
    assert forwards[0][0] and not any(forwards[0][1:])
    assert len(forwards[0]) == 1 + mixed[0]["trials"]


def test_salsa_under_bf16_adds_a_full_precision_forward_only_on_the_steps_it_searches():
    records, forwards = run("salsa", bf16=True, steps=80)
    assert records[0]["step_size"] < 0.1  # backtracked from η0 = 1, as in full precision
    assert any(not r["searched"] for r in records)  # amortised: some steps do not search
    for record, seen in zip(records, forwards):
        extra = 1 + record["trials"] if record["searched"] else 1
        assert len(seen) == extra and seen[0]  # no reference forward when it will not search
        assert ("reference_loss" in record) == record["searched"]


def test_without_autocast_the_step_is_unchanged_and_keeps_no_reference_loss():
    records, forwards = run("salsa", bf16=False, steps=3)
    assert all("reference_loss" not in r for r in records)
    assert [len(f) for f in forwards] == [1 + r["trials"] for r in records]


class AutocastInside(nn.Module):
    """A model whose own forward enters bf16 autocast, as Fabric's ``bf16-mixed`` module and
    accelerate's patched forward do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return self.net(x).float()


@pytest.mark.parametrize("name", ["salsa", "sgdsls"])
def test_trials_see_the_trial_weights_when_the_model_enters_autocast_inside_the_steps(name):
    # the step's autocast region kept the bf16 casts of the weights at x, and the model's own
    # autocast reused them: every trial's loss was the loss at x (SGDSLS backtracked to 1e-23,
    # SaLSA accepted a step of 1 and the loss rose a hundredfold)
    from lsframe.optim import make_closure

    model = AutocastInside()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=gen)
    y = (x[:, 0] > 0).long()
    opt = create(name, model.parameters())
    closure = make_closure(model, (x, y), opt, criterion=nn.functional.cross_entropy)
    losses = []
    for _ in range(4):
        with torch.no_grad():
            losses.append(nn.functional.cross_entropy(model(x), y).item())
        with torch.autocast("cpu", torch.bfloat16):
            opt.step(closure)
        assert not opt.last_step["failed"]
    assert losses[-1] < 0.9 * losses[0] and opt.param_groups[0]["step_size"] > 1e-3


def test_under_fabric_bf16_mixed_trials_through_the_unwrapped_module_run_in_full_precision():
    # Fabric's module enters bf16 autocast in its own forward, which the search's switch to full
    # precision cannot reach: its trials compared bf16 losses
    fabric_module = pytest.importorskip("lightning.fabric")
    from lsframe.optim import make_closure

    fabric = fabric_module.Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    net = mlp()
    dtypes: list[torch.dtype] = []
    net[0].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    model, opt = fabric.setup(net, create("salsa", net.parameters()))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=gen)
    y = (x[:, 0] > 0).long()
    criterion = nn.functional.cross_entropy
    closure = make_closure(
        model, (x, y), opt, criterion=criterion, trial_model=model.module, backward=fabric.backward
    )
    with torch.autocast("cpu", torch.bfloat16):
        opt.step(closure)
    record = opt.optimizer.last_step
    assert "reference_loss" in record and len(dtypes) == 1 + record["trials"]
    assert dtypes[0] == torch.bfloat16  # the backward evaluation, through Fabric's module
    assert set(dtypes[1:]) == {torch.float32}  # the reference loss at x and the trials
