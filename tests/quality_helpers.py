"""What the quality benchmark's tests share: a logged run's row and a tiny regression model."""

from __future__ import annotations

from types import SimpleNamespace

import torch


def row(optimizer: str, seed: int, acc: float) -> dict:
    return {
        "optimizer": optimizer,
        "seed": seed,
        "acc": acc,
        "train_loss": 0.5,
        "forwards_per_step": 1.0,
        "seconds": 10.0,
    }


class Regression(torch.nn.Module):
    """A linear model called as Hugging Face models are (``model(**batch).loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y))
