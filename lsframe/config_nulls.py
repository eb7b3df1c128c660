"""Nulls in a parsed configuration: jsonargparse lets ``null`` through for a class's
``init_args`` whatever the annotation says, so ``max_change: null`` for a ``float`` would reach
the constructor; :func:`check_nulls` refuses it at its key, in the words of
:func:`null_refused_as`."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from lsframe.cli_usage import KIND_WORDS
from lsframe.errors import ConfigError


def check_nulls(key: str, cls: type, init_args: dict[str, Any]) -> None:
    """Refuse a null for an init argument of ``cls`` without a None default whose annotation
    admits none (:func:`null_refused_as`), at ``<key>.init_args.<name>``. Annotations that
    cannot be read, and classes and other types, are left to the constructor."""
    nulls = [name for name, value in init_args.items() if value is None]
    if not nulls:
        return
    try:
        hints = typing.get_type_hints(cls.__init__)
        parameters = inspect.signature(cls.__init__).parameters
    except (AttributeError, NameError, TypeError, ValueError):
        return
    for name in nulls:
        expected = null_refused_as(hints.get(name))
        if name in parameters and parameters[name].default is not None and expected:
            raise ConfigError(
                f"{name} cannot be null: expected {expected}", where=f"{key}.init_args.{name}"
            )


#: the plain annotations :func:`null_refused_as` judges
KIND_TYPES = (int, float, bool, str)

_CONTAINER_WORDS = {tuple: "a list", list: "a list", dict: "a mapping", set: "a list"}


def null_refused_as(hint: Any) -> str | None:
    """What an argument annotated ``hint`` expects, in words, when the annotation refuses a
    null: a plain ``int``/``float``/``bool``/``str``, a tuple, list, set or dict (of anything),
    a ``Literal`` without None, or a union of those. None when it admits one (``Optional``,
    ``Any``) or is of another kind (a class, a callable), which the constructor judges."""
    if hint in KIND_TYPES:
        return KIND_WORDS[hint.__name__]
    origin = typing.get_origin(hint)
    if hint in _CONTAINER_WORDS or origin in _CONTAINER_WORDS:
        arms = typing.get_args(hint)
        if origin is tuple and arms and ... not in arms:
            return f"a list of {len(arms)} values"
        return _CONTAINER_WORDS[origin or hint]
    if origin is typing.Literal:
        values = typing.get_args(hint)
        return None if None in values else "one of " + ", ".join(map(repr, values))
    if origin in (typing.Union, types.UnionType):
        words = [null_refused_as(arm) for arm in typing.get_args(hint)]
        return None if None in words else " or ".join(dict.fromkeys(words))
    return None
