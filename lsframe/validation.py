"""Argument checks shared by every layer: optimizers, callbacks, modules and data.

Each check takes keyword arguments ``name=value`` (so the message names the argument as the user
spelled it) and raises :class:`lsframe.errors.ConfigError` (a :class:`ValueError`) with one line:
``<name> must be <rule>, got <value>``, and ``argument=<name>``, so the command line can name the
full config key (``model.init_args.optimizer.init_args.c``). This file imports nothing but the
standard library and :mod:`lsframe.errors` (itself standard library only), so the optimizers in
:mod:`lsframe.optim` stay usable without Lightning.

Example::

    check_positive(lr=lr, eps=eps)
    check_open_unit(c=c, beta_b=beta_b)
    check_int_at_least(1, allow_none=True, max_steps=max_steps)
    check_choice("mode", mode, ("separate", "online"))
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from typing import Any

from lsframe.errors import ConfigError


def _fail(name: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{name} must be {rule}, got {value!r}", argument=name)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(name, "a number", value)
    return float(value)


def check_positive(allow_none: bool = False, **values: Any) -> None:
    """Each value is a finite number > 0 (or None where ``allow_none``)."""
    for name, value in values.items():
        if value is None and allow_none:
            continue
        number = _number(name, value)
        if not (number > 0 and math.isfinite(number)):
            _fail(name, "a positive finite number" + (" or None" if allow_none else ""), value)


def check_non_negative(**values: Any) -> None:
    """Each value is a finite number >= 0."""
    for name, value in values.items():
        number = _number(name, value)
        if not (number >= 0 and math.isfinite(number)):
            _fail(name, ">= 0", value)


def check_interval(low: float, high: float, low_open: bool, high_open: bool, **values: Any) -> None:
    """Each value lies in the interval from ``low`` to ``high`` (open or closed at each end)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    for name, value in values.items():
        number = _number(name, value)
        above = number > low if low_open else number >= low
        below = number < high if high_open else number <= high
        if not (above and below):
            _fail(name, f"in {interval}", value)


def check_open_unit(**values: Any) -> None:
    """Each value lies in (0, 1): Armijo constants, backtracking factors, averaging rates."""
    check_interval(0.0, 1.0, True, True, **values)


def check_unit(**values: Any) -> None:
    """Each value lies in [0, 1): momentum coefficients, masked fractions."""
    check_interval(0.0, 1.0, False, True, **values)


def check_fraction(name: str, value: Any, low_open: bool = False) -> None:
    """``value`` lies in (0, 1] with ``low_open``, else in [0, 1)."""
    check_interval(0.0, 1.0, low_open, not low_open, **{name: value})


def check_int_at_least(minimum: int, allow_none: bool = False, **values: Any) -> None:
    """Each value is an integer >= ``minimum`` (or None where ``allow_none``)."""
    for name, value in values.items():
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            _fail(name, f"an integer >= {minimum}" + (" or None" if allow_none else ""), value)


def check_bool(**values: Any) -> None:
    """Each value is True or False (a string ``"false"`` is not: it would switch an option on)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            _fail(name, "True or False", value)


def check_patterns(**values: Any) -> None:
    """Each value is None or a list of regular expressions (a bare string is not: it would be
    read as a list of one-letter patterns)."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            hint = f" (write [{value!r}])" if isinstance(value, str) else ""
            _fail(name, f"a list of regular expressions{hint}", value)
        for pattern in value:
            if not isinstance(pattern, str):
                _fail(name, "a list of regular expressions (strings)", value)
            try:
                re.compile(pattern)
            except re.error as error:
                _fail(name, f"a list of regular expressions ({pattern!r}: {error})", value)


def check_numbers(name: str, value: Any, length: int, spelled: str) -> None:
    """``value`` is a tuple or list of ``length`` numbers (``spelled`` says what they are)."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != length
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value)
    ):
        _fail(name, spelled, value)


def as_tuple(value: Any) -> Any:
    """A list or tuple as a tuple; anything else unchanged, for a check to name."""
    return tuple(value) if isinstance(value, (tuple, list)) else value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``, of the same type (``True`` and ``1.0`` are not ``1``)."""
    choices = tuple(choices)
    if not any(value == c and type(value) is type(c) for c in choices):
        spelled = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        _fail(name, spelled if len(choices) > 1 else repr(choices[0]), value)
