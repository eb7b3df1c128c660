"""The raw examples of a text-classification split, shared by the DataModules
(:mod:`lsframe.data.text`) and the within-dataset shifts (:mod:`lsframe.data.shifts`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextExamples:
    """The raw examples of one split: single sentences or sentence pairs with integer labels."""

    text: list[str]
    labels: list[int] | list[float]
    text_pair: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.text) != len(self.labels):
            raise ValueError(f"{len(self.text)} texts but {len(self.labels)} labels")
        if self.text_pair is not None and len(self.text_pair) != len(self.text):
            raise ValueError(f"{len(self.text)} first sentences but {len(self.text_pair)} second")

    def head(self, n: int | None) -> TextExamples:
        """The first ``n`` examples (all when None)."""
        if n is None:
            return self
        pair = None if self.text_pair is None else self.text_pair[:n]
        return TextExamples(self.text[:n], self.labels[:n], pair)

    def sample(self, n: int | None, seed: int) -> TextExamples:
        """``n`` examples drawn without replacement from ``seed``, in their original order (all
        when None or at least the number of examples)."""
        if n is None or n >= len(self.text):
            return self
        order = torch.randperm(len(self.text), generator=torch.Generator().manual_seed(seed))
        index = sorted(order[:n].tolist())
        pair = None if self.text_pair is None else [self.text_pair[i] for i in index]
        return TextExamples([self.text[i] for i in index], [self.labels[i] for i in index], pair)
