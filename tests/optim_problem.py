"""The problem the optimizer tables run on: L2-regularised logistic regression on a fixed
synthetic dataset, strongly convex, so the optimum is unique and known to high precision (maths
only; real data is for benchmarks); each registered line search built on it, and its steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsframe import optim
from lsframe.optim import SlopeTrackingAdam

GEN = torch.Generator().manual_seed(0)
X = torch.randn(256, 10, generator=GEN)
Y = (X @ torch.randn(10, generator=GEN) + 0.5 * torch.randn(256, generator=GEN) > 0).float()
L2 = 1e-2


class Logistic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def loss(self, index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        logits = self.linear(X[index]).squeeze(-1)
        penalty = 0.5 * L2 * self.linear.weight.square().sum()
        return F.binary_cross_entropy_with_logits(logits, Y[index]) + penalty


def make_closure(model: Logistic, opt: torch.optim.Optimizer, index=slice(None)):
    def closure(backward: bool = True) -> torch.Tensor:
        if not backward:
            with torch.no_grad():
                return model.loss(index)
        opt.zero_grad()
        loss = model.loss(index)
        loss.backward()
        return loss.detach()

    return closure


def optimum() -> float:
    model = Logistic()
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    opt.step(closure)
    return float(model.loss())


F_STAR = optimum()


def make(name: str, model: torch.nn.Module, **kwargs):
    if optim.info(name).param_grouping == "parts":
        groups = [
            {"params": [model.linear.weight], "part": "w"},
            {"params": [model.linear.bias], "part": "b"},
        ]
        return optim.create(name, groups, **kwargs)
    return optim.create(name, model.parameters(), **kwargs)


NAMES = optim.line_searches()
SEARCHES = [name for name in NAMES if optim.info(name).forward_trials]  # trials move x


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def loss_at(model, params, index=slice(None)):
    trial = Logistic()
    with torch.no_grad():
        for p, value in zip(trial.parameters(), params):
            p.copy_(value)
        return float(trial.loss(index))


# step-size trackers run no trial search: their rule is checked on every step
TRACKERS = {SlopeTrackingAdam}


def run(model, opt, steps, start=0):
    for step in range(start, start + steps):
        index = torch.arange(step * 32 % 256, step * 32 % 256 + 32)
        opt.step(make_closure(model, opt, index))
