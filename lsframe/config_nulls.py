"""Nulls in a configuration: jsonargparse lets ``null`` through for a class's ``init_args``
whatever the annotation says, so ``max_change: null`` for a ``float`` would reach the
constructor; :func:`check_nulls` refuses it at its key, in the words of :func:`null_refused_as`.
On the command line, a null for an argument of a class inside another class is handed to
jsonargparse as that class's ``init_args`` (:func:`nested_nulls_as_init_args`)."""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any

from lsframe.cli_usage import KIND_WORDS
from lsframe.config_files import option_value, plain_parts
from lsframe.config_stacking import classes_given
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


YAML_NULLS = ("null", "Null", "NULL", "~")


def nested_nulls_as_init_args(argv: list[str]) -> list[str]:
    """``argv`` with each null for an argument of a class inside another class given as that
    class's ``init_args``: ``--A.init_args.B.init_args.key null`` (also ``--key=null``; any
    YAML null) as ``--A.init_args.B '{"init_args": {"key": null}}'``, and so the shorthand
    without ``init_args`` (``--model.optimizer.key null``) where ``A`` and ``B`` are class
    nodes given before it (:func:`_class_owner`).

    Why: jsonargparse (≤ 4.53) passes a dotted value on to a class nested in another class
    (the optimizer in a module) as text, so a null arrives there as the string ``'None'`` and
    an ``int | None`` argument refuses it. The same value as an ``init_args`` dict merges with
    the class given before it (in a config file or earlier on the command line), as the dotted
    key would. Other arguments, and a null for a class one level down
    (``--model.init_args.key null``, which parses), pass unchanged and in order.
    """
    classes: set[str] = set()  # paths without init_args of the class nodes given so far
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, value, taken = option_value(argv, i)
        owner, marker, name = key.rpartition(".init_args.")
        if marker and ".init_args." in owner and "." not in name:
            nested: tuple[str, str] | None = (owner, name)
        else:
            nested = _class_owner(key, classes)
        if key.startswith("--") and nested and value in YAML_NULLS:
            out += [nested[0], json.dumps({"init_args": {nested[1]: None}})]
            i += taken
            continue
        if value is not None:
            classes |= classes_given(key, value, classes)
        out.append(arg)
        i += 1
    return out


def _class_owner(key: str, classes: set[str]) -> tuple[str, str] | None:
    """``("--A.init_args.B", "key")`` for an option ``key`` written without (some of) its
    ``init_args`` whose owner is a class node in ``classes`` inside another one; else None."""
    parts = plain_parts(key)
    prefixes = [".".join(parts[:n]) for n in range(1, len(parts))]
    if len(parts) < 3 or prefixes[-1] not in classes:
        return None
    if not any(prefix in classes for prefix in prefixes[:-1]):
        return None  # a class one level down: jsonargparse parses the null
    owner = parts[0]
    for prefix, part in zip(prefixes, parts[1:-1]):
        owner += (".init_args." if prefix in classes else ".") + part
    return "--" + owner, parts[-1]
