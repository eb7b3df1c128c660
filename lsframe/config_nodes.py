"""Reading a parsed configuration: values at keys of jsonargparse Namespaces or dicts, the
``class_path`` entries under a key, and constructor errors placed at their full key. Shared by
the config checks (:mod:`lsframe.config_checks`, :mod:`lsframe.trainer_checks`,
:mod:`lsframe.sequence_checks`)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lsframe.errors import ConfigError, LsframeError, MissingFileError, one_line

# torch's own optimizers say "Invalid learning rate: -1" without the argument's name
_TORCH_MESSAGES = {
    "Invalid learning rate": "lr",
    "Invalid epsilon value": "eps",
    "Invalid beta parameter": "betas",
    "Invalid weight_decay value": "weight_decay",
    "Invalid momentum value": "momentum",
}


def node_get(node: Any, name: str, default: Any = None) -> Any:
    """The value at ``name`` of a parsed node (a jsonargparse Namespace or a dict)."""
    if isinstance(node, dict):
        return node.get(name, default)
    return getattr(node, name, default)


def node_items(node: Any) -> list[tuple[str, Any]]:
    """A parsed node's ``(name, value)`` pairs; none for a value that is not a node."""
    if isinstance(node, dict):
        return list(node.items())
    if hasattr(node, "__dict__") and type(node).__name__ == "Namespace":
        return list(vars(node).items())
    return []


def plain(value: Any) -> Any:
    """A parsed value as plain Python (jsonargparse Namespaces become dicts)."""
    if type(value).__name__ == "Namespace":
        return {k: plain(v) for k, v in vars(value).items() if not k.startswith("__")}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def class_nodes(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, node)`` for every ``class_path`` entry under ``node``, outermost first (lists
    give ``key[i]``)."""
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from class_nodes(item, f"{key}[{i}]")
        return
    if node_get(node, "class_path") is not None and isinstance(node_get(node, "class_path"), str):
        yield key, node
        for name, value in node_items(node_get(node, "init_args")):
            yield from class_nodes(value, f"{key}.init_args.{name}")
        return
    for name, value in node_items(node):
        if not str(name).startswith("__"):
            yield from class_nodes(value, f"{key}.{name}" if key else name)


def dump_enums_as_values() -> None:
    """Let PyYAML's safe dumper write an enum member as its value, once per process.
    jsonargparse dumps the parsed config while it builds the classes, and a default such as
    Lightning's ``Timer(interval=Interval.step)`` failed there ("cannot represent an object");
    the classes still receive the members themselves."""
    import enum

    import yaml

    if enum.Enum not in yaml.SafeDumper.yaml_multi_representers:
        yaml.SafeDumper.add_multi_representer(
            enum.Enum, lambda dumper, member: dumper.represent_data(member.value)
        )


def import_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def located(error: Exception, prefix: str, init_args: dict[str, Any]) -> LsframeError:
    """``error`` from a constructor under ``prefix`` (``<key>.init_args``) as an lsframe error
    at the full key: its ``argument``, else an init argument its message starts with."""
    if isinstance(error, LsframeError):
        return error.at(prefix)
    text = one_line(error) or type(error).__name__
    name = re.match(r"[\w.\[\]]+", text)
    argument = name.group(0) if name and name.group(0).split("[")[0] in init_args else None
    owned = re.match(r"[A-Z]\w*: (\w+)=", text)  # "SaLSA: eps=1e-08 ...", a default included
    argument = owned.group(1) if owned else argument
    for start, key in _TORCH_MESSAGES.items():
        argument = key if text.startswith(start) else argument
    owner = prefix.removesuffix(".init_args")
    kind = MissingFileError if isinstance(error, FileNotFoundError) else ConfigError
    return kind(text, where=f"{prefix}.{argument}" if argument else owner)


def _owning_class(error: Any) -> str | None:
    """The class an error without a place names as its owner (``DPS: a stage would be ...``)
    with the argument at fault, or None."""
    if getattr(error, "where", None) is not None or not getattr(error, "argument", None):
        return None
    found = re.match(r"([A-Z]\w*): ", str(getattr(error, "message", "")))
    return found[1] if found else None


def at_callback(error: Any, callbacks: Any, key: str = "trainer.callbacks") -> Any:
    """``error`` (an lsframe error) raised while a fit ran, by a callback that names itself
    (``DPS: a stage would be ...``) and its argument, located at that callback's item of the
    config's ``callbacks`` list (``trainer.callbacks[2].init_args.update_ratio``); unchanged
    where it has a place already, or no one item of that class is listed."""
    owner = _owning_class(error)
    if owner is None or not isinstance(callbacks, list):
        return error
    items = [
        i
        for i, node in enumerate(callbacks)
        if str(node_get(node, "class_path") or "").rsplit(".", 1)[-1] == owner
    ]
    return error.at(f"{key}[{items[0]}].init_args") if len(items) == 1 else error


@contextmanager
def callback_errors_placed(callbacks: Callable[[], Any]) -> Iterator[None]:
    """Re-raise an lsframe error from inside (a fit) placed by :func:`at_callback` at its
    callback's item of ``callbacks()``, the config's ``trainer.callbacks`` (read only for an
    error a class names itself the owner of); others unchanged."""
    try:
        yield
    except LsframeError as error:
        located = at_callback(error, callbacks()) if _owning_class(error) else error
        if located is error:
            raise
        raise located from error
