"""jsonargparse's parse errors as lsframe's one line (part of :mod:`lsframe.cli_errors`).

:func:`usage_error` turns a nested parse error (``Parser key "model": Does not validate against
any of the Union subtypes ...``) into the full key and the innermost problem, with "did you mean"
for an unknown key (:func:`did_you_mean`); :class:`RaisingArgumentParser` and
:func:`parse_or_raise` make a parser raise it instead of printing its usage and exiting.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lsframe.config_files import (
    config_file_arguments,
    item_lacking,
    option_value,
    plain_parts,
    where_in_config_files,
)
from lsframe.config_stacking import classes_given
from lsframe.errors import UsageError, one_line


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and its causes, outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        cause = error.__cause__
        if cause is None and not error.__suppress_context__:
            cause = error.__context__
        error = cause


def _parser_keys(parser: Any) -> list[str]:
    """Every destination of ``parser`` and of its subcommand parsers."""
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            for sub in action._name_parser_map.values():
                keys += _parser_keys(sub)
        elif action.dest and action.dest != argparse.SUPPRESS:
            keys.append(action.dest)
    return keys


def _class_parameters(class_path: str) -> list[str]:
    """The init arguments of ``class_path``, following ``**kwargs`` into base classes."""
    import importlib

    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", [cls]):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return [n for n in dict.fromkeys(names) if n != "self"]


def _children(known: list[str], prefix: str) -> list[str]:
    """The names one level below ``prefix`` (``"trainer."``; ``""``: the top) among ``known``."""
    return sorted({k[len(prefix) :].split(".", 1)[0] for k in known if k.startswith(prefix)})


def _first_unknown(key: str, known: list[str]) -> str:
    """``key`` cut after its first part that no known key has at that place: a misspelt
    section (``trainr.max_steps``) is the unknown key, not the setting under it."""
    if not known:  # no parser to ask
        return key
    prefixes = {".".join(k.split(".")[:n]) for k in known for n in range(1, k.count(".") + 2)}
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        if ".".join(parts[:n]) not in prefixes:
            return ".".join(parts[:n])
    return key


def _public_names(module: str) -> list[str]:
    """The public names of an importable ``module`` (none when it does not import)."""
    try:
        return [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
    except Exception:  # noqa: BLE001 - only a hint: a module that fails to import has none
        return []


def did_you_mean(name: str, candidates: list[str]) -> str:
    """``", did you mean 'x'?"`` for the closest of ``candidates`` to ``name``; "" when none is."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


#: how an error line names a parameter's type
KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _innermost(message: str) -> str:
    """jsonargparse's innermost problem in plain words."""
    first = message.strip().splitlines()[0] if message.strip() else message
    expected = re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)", first)
    if expected:
        kind = KIND_WORDS.get(expected.group(1), f"a {expected.group(1)}")
        return f"expected {kind}, got {expected.group(2)!r}"
    literal = re.match(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", first)
    if literal:
        return f"expected one of {literal.group(1)}, got {literal.group(2)!r}"
    first = re.sub(r"\. Got value: .*$", "", first)
    first = re.sub(r"^Type [^:]+ expects a function or a callable class: ", "", first)
    return first


def _item_holding(argv: list[str], section: str, name: str) -> str | None:
    """``section[i]`` or ``section[i].init_args`` where the list at the dotted key ``section``
    of the last config file in ``argv`` that has one holds the key ``name`` in exactly one item
    (jsonargparse's error names the list, not the item)."""
    import yaml

    for path in reversed(config_file_arguments(argv)):
        try:
            items = yaml.safe_load(Path(path).read_text())
        except Exception:  # noqa: BLE001 - only a hint: a file that does not read gives none
            continue
        for key in section.split("."):  # trainer.callbacks
            items = items.get(key) if isinstance(items, dict) else None
        if not isinstance(items, list):
            continue
        found = [
            f"{section}[{i}]" + ("" if name in item else ".init_args")
            for i, item in enumerate(items)
            if isinstance(item, dict) and (name in item or name in (item.get("init_args") or {}))
        ]
        return found[0] if len(found) == 1 else None
    return None


def _nested_item_holding(
    argv: list[str], keys: list[str], name: str, class_path: str | None = None
) -> str | None:
    """``stages[i].data.init_args`` where ``i`` is the first item of the list at ``keys[0]`` (in
    the last config file that has the list) whose node at the rest of ``keys`` holds ``name``
    (the error's ``stages.init_args.data`` names the list, not the item), skipping items of
    another class than ``class_path``, the one the error is about."""
    import yaml

    path = [key for key in keys[1:] if key != "init_args"]
    for file in reversed(config_file_arguments(argv)):
        try:
            items = yaml.safe_load(Path(file).read_text())
        except Exception:  # noqa: BLE001 - only a hint: a file that does not read gives none
            continue
        items = items.get(keys[0]) if isinstance(items, dict) else None
        if not isinstance(items, list):
            continue
        found = []
        for i, node in enumerate(items):
            where = f"{keys[0]}[{i}]"
            for key in path:
                if isinstance(node, dict) and key not in node:
                    node, where = node.get("init_args"), f"{where}.init_args"
                node = node.get(key) if isinstance(node, dict) else None
                where = f"{where}.{key}"
            other = isinstance(node, dict) and node.get("class_path") and class_path
            if other and str(node["class_path"]).split(".")[-1] != class_path.split(".")[-1]:
                continue  # another class there: the error is about the one it names
            if isinstance(node, dict) and name in (node.get("init_args") or {}):
                found.append(f"{where}.init_args")
            elif isinstance(node, dict) and name in node:
                found.append(where)
        return found[0] if found else None  # the items are parsed in order: the first fails
    return None


def _before_its_class(argv: list[str], where: str) -> str | None:
    """The line for an option under a class node given before the node's class, which a later
    ``--config`` or option gives (``--data.init_args.batch_size 8 --config glue.yaml``):
    jsonargparse applies the arguments in order, so the option met the base class
    (``LightningDataModule``), which takes no such key. None unless the key ``where`` is such
    an option."""
    target = plain_parts(where)
    node = ".".join(target[:-1])
    known: set[str] = set()  # the class nodes given before
    option = None
    for i in range(len(argv)):
        key, value, _ = option_value(argv, i)
        if not key.startswith("-"):
            continue
        value = value or ""
        if option is None and key.startswith("--") and plain_parts(key) == target:
            if node in known:
                return None  # the class was given: the key is unknown to it
            option = key
            continue
        given = classes_given(key, value, known)
        if option is not None and node in given:
            source = f"--config {value}" if key in ("--config", "-c") else key
            return (
                f"{option} comes before the class of {node}, which {source} gives: put "
                f"{source} first (the arguments apply in order)"
            )
        known |= given
    return None


def usage_error(
    error: BaseException, parser: Any = None, argv: list[str] | None = None
) -> UsageError:
    """One line for an argparse/jsonargparse parse error: the full key and the innermost
    problem; an unknown key gets the closest accepted name ("did you mean"), and an unknown key
    in an item of a list the config files give (``stages``) the item's index (``argv``)."""
    keys: list[str] = []
    class_path: str | None = None
    into_class = False
    innermost = ""
    for exc in _chain(error):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        innermost = text or innermost
        given = re.match(r"Problem with given class_path '([^']+)'", first)
        callable_class = re.search(r"expects a function or a callable class", first)
        if given or callable_class:
            found = given or re.search(r"class_path='([^']+)'", text)
            class_path = found.group(1) if found else class_path
            into_class = True
        for key in re.findall(r'Parser key "([^"]+)"', first):
            if keys and keys[-1] == key:
                continue
            if into_class and keys:
                keys.append("init_args")
            into_class = False
            keys.append(key)
    deepest = innermost.strip().splitlines()[0] if innermost.strip() else str(error)
    unknown = re.match(r"Option '([^']+)' is not accepted", deepest)
    group = re.match(r"(?:Group|Subcommand) '([^']+)' does not accept option '([^']+)'", deepest)
    unrecognized = re.match(r"unrecognized arguments: (.*)", deepest)
    if group:
        owner, option = group.groups()
        full = option if deepest.startswith("Subcommand") else f"{owner}.{option}"
        known = _parser_keys(parser)
        full = _first_unknown(full, known)
        section, _, name = full.rpartition(".")
        names = _children(known, f"{section}." if section else "")
        return UsageError(f"unknown key {name!r}{did_you_mean(name, names)}", _in_file(full, argv))
    if unknown:
        name = unknown.group(1)
        item = _item_holding(argv, keys[0], name) if argv and len(keys) == 1 else None
        if argv and len(keys) > 1 and into_class:
            item = _nested_item_holding(argv, keys, name, class_path)
        if into_class and class_path:
            names = _class_parameters(class_path)
            keys = [item] if item else [*keys, "init_args"]
        else:
            names = _children(_parser_keys(parser), ".".join(keys) + "." if keys else "")
        where = ".".join([*keys, name])
        early = _before_its_class(argv, where) if argv and into_class else None
        if early:
            return UsageError(early, where)
        message = f"unknown key {name!r}{did_you_mean(name, names)}"
        return UsageError(message, _in_file(where, argv))
    if unrecognized:
        option = unrecognized.group(1).split()[0]
        options = ["--" + k for k in _parser_keys(parser)]
        message = f"unknown option {option!r}{did_you_mean(option, options)}"
        return UsageError(message, option.lstrip("-"))
    where = ".".join(keys) or None
    required = re.match(r"the following arguments are required: (.*)", deepest)
    if required and argv and len(keys) == 1:  # in an item of a list (a stage): that item's key
        names = required.group(1).split(", ")
        item = item_lacking(argv, keys[0], names)
        if item:
            return UsageError(deepest, f"{item[0]}.{names[0]} in {item[1]}")
    if into_class and class_path and re.search(r"has no attribute|No module named", deepest):
        return UsageError(_cannot_import(class_path, deepest), where)
    classless = re.match(r"Dict must include a class_path.*NestedArg\(key='([^']+)'", deepest)
    if argv and where and classless:  # an argument of a nested class that has none yet
        early = _before_its_class(argv, f"{where}.init_args.{classless.group(1)}")
        if early:
            return UsageError(early, f"{where}.init_args.{classless.group(1)}")
    message = _union_problem(_deepest_union(error)) or one_line(_innermost(deepest))
    wrong = re.search(r"^expected .*, got ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", message)
    if where and wrong:  # a value of the wrong type: the file that gave it
        where = _in_file(where, argv, ast.literal_eval(wrong.group(1)))
    return UsageError(message, where)


def _in_file(where: str, argv: list[str] | None, value: str | None = None) -> str:
    """The key ``where`` and ``in <file>:<line>`` of the ``--config`` file in ``argv`` that gave
    it (with ``value``, that value: :func:`lsframe.config_files.where_in_config_files`); the key
    alone when the command line gave it."""
    found = where_in_config_files(argv, where, value) if argv else None
    return f"{where} in {found}" if found else where


_UNION = "Does not validate against any of the Union subtypes"


def _cannot_import(class_path: str, reason: str) -> str:
    """The line for a ``class_path`` that does not import, with "did you mean" for a misspelt
    class (the one that failed, which may sit inside another class's arguments)."""
    missing = re.search(r"module '([^']+)' has no attribute '([^']+)'", reason)
    hint = ""
    if missing:
        module, name = missing.groups()
        class_path = f"{module}.{name}"
        hint = did_you_mean(name, _public_names(module))
    return f"cannot import class_path {class_path!r}: {reason}{hint}"


def _deepest_union(error: BaseException) -> str:
    """jsonargparse's Union report for the deepest key of ``error``'s chain; "" when that key's
    problem is not one (a setting inside a class inside a Union reports its own key)."""
    chain = [str(exc) for exc in _chain(error)]
    found = [i for i, text in enumerate(chain) if _UNION in text]
    if not found or any('Parser key "' in text for text in chain[found[-1] + 1 :]):
        return ""
    return chain[found[-1]]


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets: ``"a[1, 2], b"`` → ``["a[1, 2]", "b"]``."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    return [*items, text[start:].strip()]


def _union_problem(text: str) -> str | None:
    """One line for a value that fits none of a setting's types (jsonargparse's Union
    report): a class path that does not import says so, as for a class-typed setting;
    otherwise every accepted form is named (``precision``: each of its values, with "did you
    mean"), not only the first type's. None when the report does not read as expected."""
    value = re.search(r"^\s*Given value: (.*)$", text, re.M)
    subtypes = re.search(r"^\s*Subtypes: \[(.*)\]$", text, re.M)
    if value is None or subtypes is None:
        return None
    given = value.group(1)
    failed = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if failed:
        return _cannot_import(failed.group(1), failed.group(2).strip())
    values: list[str] = []
    kinds: list[str] = []
    for subtype in _split_top_level(subtypes.group(1)):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", subtype)
        plain = re.fullmatch(r"<class '([\w.]+)'>", subtype)
        if literal:
            values += _split_top_level(literal.group(1))
        elif plain and plain.group(1) != "NoneType":
            name = plain.group(1).rsplit(".", 1)[-1]
            kinds.append(KIND_WORDS.get(name, f"a {name}"))
        elif re.fullmatch(r"list\[.*\]", subtype):
            kinds.append("a list")
    forms = ([f"one of {', '.join(values)}"] if values else []) + kinds
    if not forms:
        return None
    strings = [v.strip("'") for v in values if v.startswith("'")]
    return f"expected {' or '.join(forms)}, got {given!r}{did_you_mean(given, strings)}"


def unknown_subcommand(given: str | None, subcommands: tuple[str, ...]) -> UsageError:
    """The error for a missing or unknown subcommand, listing them (with "did you mean")."""
    names = ", ".join(subcommands)
    if given is None:
        return UsageError(f"a subcommand is required: {names}")
    return UsageError(f"unknown subcommand {given!r}{did_you_mean(given, list(subcommands))}"
                      f" (subcommands: {names})")  # fmt: skip


def parse_or_raise(parser: Any, argv: list[str]) -> Any:
    """``parser.parse_args(argv)`` for a jsonargparse parser made with ``exit_on_error=False``;
    a parse error raises :func:`usage_error`'s one line instead."""
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as error:
        raise usage_error(error, parser, argv) from error


class RaisingArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors raise :class:`~lsframe.errors.UsageError` (one line, no
    usage block) instead of printing the usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(one_line(message))
