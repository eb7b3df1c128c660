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
behaviour.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from lsframe.config_nodes import import_class

SPECIAL = ("class_path", "init_args", "dict_kwargs", "__path__")


def _class_nodes(data: Any, path: str = "") -> list[tuple[str, str | None, set[str]]]:
    """``(path, class_path or None, init_args keys)`` of every class node of a YAML mapping;
    paths name ``init_args`` as the parsed config does (``model.init_args.optimizer``)."""
    if not isinstance(data, dict):
        return []
    found: list[tuple[str, str | None, set[str]]] = []
    if "class_path" in data or "init_args" in data:
        arguments = data.get("init_args")
        arguments = arguments if isinstance(arguments, dict) else {}
        shorthand = {k: v for k, v in data.items() if k not in SPECIAL}  # keys beside class_path
        arguments = {**shorthand, **arguments}
        class_path = data.get("class_path")
        found.append((path, class_path if isinstance(class_path, str) else None, set(arguments)))
        for key, value in arguments.items():
            found.extend(_class_nodes(value, f"{path}.init_args.{key}"))
        return found
    for key, value in data.items():
        found.extend(_class_nodes(value, f"{path}.{key}" if path else str(key)))
    return found


def _defaults(class_path: str, keys: set[str]) -> dict[str, Any]:
    """The defaults of ``keys`` in ``class_path``'s signature that a config can hold (JSON)."""
    cls = import_class(class_path)
    if cls is None:
        return {}
    parameters = inspect.signature(cls).parameters
    defaults = {}
    for key in sorted(keys):
        parameter = parameters.get(key)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            continue
        try:
            defaults[key] = json.loads(json.dumps(parameter.default))
        except (TypeError, ValueError):  # not a value a config can hold
            continue
    return defaults


def _nested(path: str, init_args: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"init_args": init_args}
    for name in reversed(path.split(".")):
        config = {name: config}
    return config


def with_fresh_class_arguments(argv: list[str], load: Any) -> list[str]:
    """``argv`` with, after each ``--config`` file that changes a class node's ``class_path``,
    a config string that returns the arguments earlier files set under the earlier class to
    the new class's defaults (anything after it still overrides them, and ``--print_config``
    shows the result).

    Args:
        argv: The subcommand's arguments, in order.
        load: ``load(path)`` → the file's mapping (files are checked before this runs).
    """
    current: dict[str, str] = {}
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
        for path, class_path, keys in _class_nodes(load(file)):
            if class_path is not None and path in current and current[path] != class_path:
                defaults = _defaults(class_path, given.get(path, set()) - keys)
                if defaults:
                    fresh = _merge(fresh, _nested(path, defaults))
                given[path] = set(keys)
            else:
                given.setdefault(path, set()).update(keys)
            if class_path is not None:
                current[path] = class_path
        if fresh:
            out += ["--config", json.dumps(fresh)]
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
