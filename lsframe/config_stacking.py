"""Stacked ``--config`` files: a later file that changes a ``class_path`` starts that class's
arguments afresh.

jsonargparse keeps the ``init_args`` of the earlier class that the new one also accepts (a
convenience on the command line: ``--optimizer Adam`` after ``--optimizer.lr 0.1``). For a file
stacked on a fit config, such as ``configs/optimizers/adamsls_robust.yaml`` on
``configs/quickstart_adamw.yaml``, that silently ran AdamSLS at AdamW's ``lr`` (5e-5 instead of
its own 0.1) and ``weight_decay``. Here an argument that an earlier file set under another class
and that the changing file does not set is returned to the new class's default (by a config
string inserted after that file, so that what follows still overrides it and
``--print_config`` shows it). A class changed on the command line keeps jsonargparse's
behaviour, as do files given before the subcommand.

A node is matched by its path without ``init_args`` (``model.optimizer``: a file may write
``model: {optimizer: ...}`` or ``model: {init_args: {optimizer: ...}}``); a later file may name
the class as ``class_path``, or as a bare string where an earlier file had a class node
(``optimizer: lsframe.optim.SGDSLS``). Classes are compared as objects (``torch.optim.AdamW`` is
``torch.optim.adamw.AdamW``), a short name (``AdamSLS``) is looked up in ``lsframe.optim`` and
``torch.optim`` (and the other modules of :data:`SHORT_NAME_MODULES`). A class that neither
name resolves to (a short name of a module not listed) is no change: its arguments are kept, as
jsonargparse keeps them.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from lsframe.config_files import inline_config, is_config_file, plain_parts
from lsframe.config_nodes import import_class

SPECIAL = ("class_path", "init_args", "dict_kwargs", "__path__")
#: Where a class named without its module is looked up.
SHORT_NAME_MODULES = (
    "lsframe.optim",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "lsframe.data",
    "lsframe.modules",
    "lsframe.callbacks",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
)

Node = tuple[str, str, str | None, set[str]]  # (plain path, real path, class_path, keys)


def resolve(class_path: str) -> Any:
    """The class ``class_path`` names (also a short name), else the string itself."""
    found = import_class(class_path)
    for module in SHORT_NAME_MODULES if found is None and "." not in class_path else ():
        found = import_class(f"{module}.{class_path}")
        if found is not None:
            break
    return found if found is not None else class_path


def _plain(path: str) -> str:
    return ".".join(plain_parts(path))


def _class_nodes(data: Any, known: set[str], path: str = "") -> list[Node]:
    """Every class node of a YAML mapping: ``(plain path, path as written, class_path or None,
    argument keys)``; a string where ``known`` (plain paths) has a class node is a bare class."""
    if isinstance(data, str) and _plain(path) in known:
        return [(_plain(path), path, data, set())]
    if not isinstance(data, dict):
        return []
    found: list[Node] = []
    if "class_path" in data or "init_args" in data:
        arguments = data.get("init_args")
        arguments = arguments if isinstance(arguments, dict) else {}
        shorthand = {k: v for k, v in data.items() if k not in SPECIAL}  # keys beside class_path
        arguments = {**shorthand, **arguments}
        class_path = data.get("class_path")
        class_path = class_path if isinstance(class_path, str) else None
        found.append((_plain(path), path, class_path, set(arguments)))
        for key, value in arguments.items():
            found.extend(_class_nodes(value, known, f"{path}.init_args.{key}"))
        return found
    for key, value in data.items():
        found.extend(_class_nodes(value, known, f"{path}.{key}" if path else str(key)))
    return found


def class_node_paths(data: Any, known: set[str], path: str = "") -> set[str]:
    """The paths without ``init_args`` (``model.optimizer``) of the class nodes of ``data``, a
    config mapping placed at ``path`` (a node with a ``class_path`` or ``init_args``; a string
    where ``known`` has a class node)."""
    return {plain for plain, *_ in _class_nodes(data, known, path)}


def classes_given(key: str, value: str, known: set[str]) -> set[str]:
    """The class nodes (paths without ``init_args``) a command-line option ``key`` with
    ``value`` gives: a ``--config`` file's or string's, a class (its name, or a mapping with a
    ``class_path``) given to a key, and each key before an ``init_args`` part; ``known``: the
    class nodes given before it."""
    if key in ("--config", "-c"):
        return class_node_paths(read_config(value), known)
    if not key.startswith("--"):
        return set()
    parts = key[2:].split(".")
    found = {".".join(plain_parts(".".join(parts[:n]))) for n, part in enumerate(parts)
             if part == "init_args"}  # fmt: skip
    plain = ".".join(plain_parts(key))
    if parts[-1] == "class_path":
        return found | {plain.rpartition(".")[0]}
    if re.fullmatch(r"[A-Za-z_][\w.]*", value):  # a class name, or another word
        return found | ({plain} if not isinstance(resolve(value), str) else set())
    try:
        given = yaml.safe_load(value) if value.lstrip().startswith("{") else None
    except yaml.YAMLError:
        return found
    return found | (class_node_paths(given, known, plain) if isinstance(given, dict) else set())


def _parameters(cls: Any) -> dict[str, inspect.Parameter]:
    """The arguments ``cls`` takes: its ``__init__``'s, and, while one passes ``**kwargs`` on,
    those of the base classes' (as jsonargparse reads them)."""
    found: dict[str, inspect.Parameter] = {}
    for base in cls.__mro__ if isinstance(cls, type) else ():
        if "__init__" not in vars(base) or base is object:
            continue
        try:
            parameters = inspect.signature(base.__init__).parameters
        except (TypeError, ValueError):  # a class without a readable signature
            break
        for name, parameter in list(parameters.items())[1:]:  # after self
            found.setdefault(name, parameter)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return found


def _defaults(class_path: str, keys: set[str]) -> dict[str, Any]:
    """The defaults of ``keys`` in ``class_path``'s signature that a config can hold (JSON)."""
    parameters = _parameters(resolve(class_path))
    defaults = {}
    for key in sorted(keys):
        parameter = parameters.get(key)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            continue
        value = parameter.default
        if isinstance(value, float) and not math.isfinite(value):
            continue  # JSON would write Infinity, which YAML reads back as a string
        try:
            defaults[key] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):  # not a value a config can hold
            continue
    return defaults


def _nested(path: str, init_args: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"init_args": init_args}
    for name in reversed(path.split(".")):
        config = {name: config}
    return config


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_fresh_class_arguments(argv: list[str], load: Any) -> list[str]:
    """``argv`` with, after each ``--config`` file that changes a class node's ``class_path``,
    a config string that returns the arguments earlier files set under the earlier class to
    the new class's defaults (anything after it still overrides them, and ``--print_config``
    shows the result).

    Args:
        argv: The subcommand's arguments, in order (``--config`` files before a subcommand
            are the caller's to leave out).
        load: ``load(path)`` → the file's mapping, or None when it cannot be read (files are
            checked before this runs; jsonargparse reports what it cannot read).
    """
    current: dict[str, Any] = {}  # plain path → class
    written: dict[str, str] = {}  # plain path → the path as the first file wrote it
    given: dict[str, set[str]] = {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            file, taken = argv[i + 1], argv[i : i + 2]
        elif arg.startswith("--config="):
            file, taken = arg.split("=", 1)[1], [arg]
        else:
            out.append(arg)
            i += 1
            continue
        out += taken
        i += len(taken)
        fresh: dict[str, Any] = {}
        for plain, path, class_path, keys in _class_nodes(load(file), set(current)):
            cls = resolve(class_path) if class_path is not None else None
            written.setdefault(plain, path)
            # a name that resolves to no class cannot be compared: GlueDataModule in one file
            # and lsframe.data.GlueDataModule in the next reset the task to its default
            known = cls is not None and not isinstance(cls, str)
            if (
                known
                and plain in current
                and not isinstance(current[plain], str)
                and current[plain] != cls
            ):
                defaults = _defaults(class_path, given.get(plain, set()) - keys)
                if defaults:
                    fresh = _merge(fresh, _nested(written[plain], defaults))
                given[plain] = set(keys)
            else:
                given.setdefault(plain, set()).update(keys)
            if cls is not None:
                current[plain] = cls
        if fresh:
            out += ["--config", json.dumps(fresh)]
    return out


def read_config(value: str) -> Any:
    """A ``--config`` value's mapping: a file's, or an inline YAML/JSON string's
    (:func:`lsframe.config_files.inline_config`); None when it does not read (jsonargparse
    then reports it)."""
    try:
        path = Path(value)
        return (
            yaml.safe_load(path.read_text(encoding="utf-8"))
            if is_config_file(value)
            else inline_config(value)
        )
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def fresh_class_arguments(argv: list[str], subcommands: tuple[str, ...] = ()) -> list[str]:
    """:func:`with_fresh_class_arguments` on the arguments after the first of ``subcommands``
    in ``argv`` (all of them when none is there), the files read by :func:`read_config`."""
    start = next((i + 1 for i, arg in enumerate(argv) if arg in subcommands), 0)
    return argv[:start] + with_fresh_class_arguments(argv[start:], read_config)
