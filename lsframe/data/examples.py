"""The raw examples of a text-classification split, shared by the DataModules
(:mod:`lsframe.data.text`) and the within-dataset shifts (:mod:`lsframe.data.shifts`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from lsframe.errors import DataError


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


def check_labels(examples: TextExamples, num_labels: int, source: str) -> None:
    """Refuse labels a head of ``num_labels`` outputs cannot learn: for classification each
    label is a class id in ``[0, num_labels)``; for regression (``num_labels == 1``) a finite
    number (a class id list given to a regression head, or scores given to a classifier, fail).

    Raises:
        DataError: naming the first bad label, its example number (1-based) and ``source``.
    """
    for i, label in enumerate(examples.labels):
        if num_labels == 1:
            ok = isinstance(label, numbers.Real) and math.isfinite(label)
            rule = "a finite score (num_labels: 1, regression)"
        else:
            ok = isinstance(label, numbers.Integral) and 0 <= label < num_labels
            rule = f"a class id in [0, {num_labels}) (num_labels: {num_labels})"
        if not ok:
            raise DataError(f"label {label!r} of example {i + 1} is not {rule}", where=source)
