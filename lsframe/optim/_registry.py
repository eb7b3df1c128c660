"""Optimizers by name: ``create("salsa", params, lr=...)`` and the list of registered names."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from lsframe.optim.adam_e import AdamE
from lsframe.optim.adam_sls import AdamSLS
from lsframe.optim.alsals import ALSALS
from lsframe.optim.alto import ALTO
from lsframe.optim.lamb import Lamb
from lsframe.optim.plasls import PLASLS
from lsframe.optim.salsa import SaLSA
from lsframe.optim.sls import SGDSLS

REGISTRY: dict[str, type[Optimizer]] = {
    "sgdsls": SGDSLS,
    "adamsls": AdamSLS,
    "plasls": PLASLS,
    "alsals": ALSALS,
    "salsa": SaLSA,
    "lamb": Lamb,
    "alto": ALTO,
    "adame": AdamE,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}

LINE_SEARCH = ("sgdsls", "adamsls", "plasls", "alsals", "salsa")


def names() -> list[str]:
    """The registered optimizer names."""
    return sorted(REGISTRY)


def register(name: str, cls: type[Optimizer]) -> None:
    """Register an optimizer class under ``name`` (lower case)."""
    key = name.lower()
    if key in REGISTRY and REGISTRY[key] is not cls:
        raise ValueError(f"optimizer name {name!r} is already registered to {REGISTRY[key]}")
    REGISTRY[key] = cls


def create(name: str, params: Any, **kwargs: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` (case-insensitive).

    Raises:
        ValueError: the name is unknown; the message lists the valid names.
    """
    try:
        cls = REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; registered optimizers: {', '.join(names())}"
        ) from None
    return cls(params, **kwargs)
