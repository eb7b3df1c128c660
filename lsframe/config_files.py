"""The ``--config`` files of ``python -m lsframe``, read before jsonargparse reads them, so that a
problem names ``file:line:column``: a YAML syntax error, a key named twice in one mapping (which
YAML would resolve by dropping the first), an empty or list-shaped file, a file that is not
UTF-8 or does not exist. Each raises :class:`~lsframe.errors.UsageError` (exit status 2)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lsframe.errors import UsageError, one_line


def config_file_arguments(argv: list[str]) -> list[str]:
    """The values given to ``--config`` / ``-c`` in ``argv`` (also ``--config=...``)."""
    values = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.split("=", 1)[1])
    return values


def option_value(argv: list[str], i: int) -> tuple[str, str | None, int]:
    """The option ``argv[i]``, its value (after ``=``, else the next argument; None when there
    is none) and how many arguments the two take (1 or 2)."""
    key, equals, value = argv[i].partition("=")
    if equals:
        return key, value, 1
    if i + 1 < len(argv):
        return key, argv[i + 1], 2
    return key, None, 1


def plain_parts(key: str) -> list[str]:
    """The parts of an option or dotted key without ``--`` and ``init_args``."""
    return [part for part in key.removeprefix("--").split(".") if part != "init_args"]


class DuplicateKeyError(Exception):
    """A mapping of a config file names a key twice (YAML keeps the last, silently)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _unique_key_mapping(loader: Any, node: Any, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(
                f"duplicate key {key!r} (first on line {seen[key]}): YAML would keep only the "
                "second, and drop every setting under the first",
                line,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


def unique_json_keys(pairs: list[tuple[Any, Any]]) -> dict:
    """``json.loads``'s ``object_pairs_hook`` that raises :class:`DuplicateKeyError` on a key
    named twice (JSON keeps the last, silently; JSON gives no line)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKeyError(f"duplicate key {key!r}: JSON would keep only the second", 0)
        seen.add(key)
    return dict(pairs)


def unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a key named twice."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    UniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_key_mapping
    )
    return UniqueKeyLoader


#: where an error line places a problem of an inline ``--config`` value
INLINE = "inline --config"


def is_config_file(value: str) -> bool:
    """Whether the ``--config`` value ``value`` names an existing file (an inline YAML longer
    than a file name may be is none: ``stat`` refuses it with ENAMETOOLONG)."""
    try:
        return Path(value).is_file()
    except OSError:
        return False


def inline_config(value: str) -> dict | None:
    """The mapping an inline ``--config`` value gives, or None when ``value`` is not one.

    The rule is jsonargparse's: a value that is not an existing file and parses as a YAML
    mapping is inline (``--config 'data: {init_args: {data_dir: ../glue}}'``); it reads any
    other value as a path."""
    import yaml

    if is_config_file(value):
        return None
    try:
        found = yaml.safe_load(value)
    except yaml.YAMLError:
        return None
    return found if isinstance(found, dict) else None


def _looks_inline(value: str) -> bool:
    return "\n" in value or value.lstrip().startswith(("{", "["))


def check_config_files(argv: list[str]) -> None:
    """Parse each ``--config`` file of ``argv`` with ``yaml.safe_load``, and each inline value
    (:func:`inline_config`) as well.

    Raises:
        UsageError: a value that is neither an existing file nor inline (a file not found), a
            file or inline value that does not parse as YAML (``file:line:column`` of the
            syntax error) or names a key twice in one mapping (``file:line`` of the second),
            a file that is not UTF-8 or a mapping.
    """
    import yaml

    unique_keys = unique_key_loader()

    for value in config_file_arguments(argv):
        path = Path(value)
        if not is_config_file(value):
            try:
                inline = yaml.load(value, Loader=unique_keys)
            except DuplicateKeyError as error:
                raise UsageError(error.message, f"{INLINE}:{error.line}") from None
            except yaml.YAMLError as error:
                if _looks_inline(value):  # meant as YAML, not as a path
                    raise UsageError(*yaml_problem(error, INLINE)) from error
                inline = None
            if isinstance(inline, dict):
                continue
            if _looks_inline(value):
                raise UsageError(f"{INLINE} is {_kind(inline)}, expected a mapping", value)
            raise UsageError("config file not found", where=value)
        try:
            content = yaml.load(path.read_text(encoding="utf-8"), Loader=unique_keys)
        except DuplicateKeyError as error:
            raise UsageError(error.message, f"{path}:{error.line}") from None
        except yaml.YAMLError as error:
            raise UsageError(*yaml_problem(error, path)) from error
        except UnicodeDecodeError as error:
            raise UsageError(f"config file is not UTF-8 text ({error.reason})", str(path)) from None
        if not isinstance(content, dict):
            raise UsageError(
                f"config file is {_kind(content)}, expected a mapping of sections (trainer:, "
                "model:, ...)",
                str(path),
            )


def _kind(content: Any) -> str:
    return "empty" if content is None else f"a {type(content).__name__}"


def yaml_problem(error: Exception, path: str | Path) -> tuple[str, str]:
    """``(message, "file:line:column")`` for a PyYAML error in the file ``path``: the problem,
    and where the construct it was parsing started (``while parsing a flow sequence from line
    2, column 14``)."""
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    context_mark = getattr(error, "context_mark", None)
    message = f"YAML syntax error: {problem or context or error}"
    if problem and context and context_mark is not None:
        line, column = context_mark.line + 1, context_mark.column + 1
        message += f", {context} from line {line}, column {column}"
    where = str(path) if mark is None else f"{path}:{mark.line + 1}:{mark.column + 1}"
    return one_line(message), where


def _key_parts(key: str) -> list[str | int]:
    """``trainer.callbacks[1].init_args.x`` → ``["trainer", "callbacks", 1, "init_args", "x"]``."""
    return [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", key)]


def _value_node(node: Any, parts: list[str | int]) -> tuple[Any, Any] | None:
    """``(key node, value node)`` of the key ``parts`` in a composed YAML ``node``; a class
    node's arguments may be written with or without ``init_args``. None when it is not there."""
    import yaml

    found = None
    for part in parts:
        if isinstance(part, int):
            if not isinstance(node, yaml.SequenceNode) or part >= len(node.value):
                return None
            node = node.value[part]
            continue
        if not isinstance(node, yaml.MappingNode):
            return None
        children = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        if part not in children and part != "init_args" and "init_args" in children:
            node = children["init_args"][1]  # the key written under init_args
            if not isinstance(node, yaml.MappingNode):
                return None
            children = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        if part in children:
            found = children[part]
            node = found[1]
        elif part != "init_args":  # init_args may be left out
            return None
    return found


def where_in_config_files(argv: list[str], key: str, value: str | None = None) -> str | None:
    """``file:line`` of the ``--config`` file in ``argv`` that gives the key ``key`` (dotted,
    as an error names it: ``data.init_args.batch_sise``, ``trainer.callbacks[1].init_args.x``)
    where jsonargparse refused it: it applies the files and options in order and stops at the
    first that is bad, so the first that holds the key, or, with ``value`` (the refused value's
    text), the first that holds it with that value. None when an option on the command line
    comes first, or no file holds it (an inline ``--config`` is named ``inline --config``)."""
    import yaml

    parts = _key_parts(key)
    plain = [p for p in parts if p != "init_args" and not isinstance(p, int)]
    for i in range(len(argv)):
        option, text, _ = option_value(argv, i)
        if not option.startswith("-"):
            continue
        text = text or ""
        if option not in ("--config", "-c"):
            given = plain_parts(option)
            shorter = min(len(given), len(plain))
            if option.startswith("--") and given[:shorter] == plain[:shorter]:
                return None  # the command line gives it (or a mapping around it)
            continue
        inline = inline_config(text) is not None
        try:
            content = text if inline else Path(text).read_text(encoding="utf-8")
            found = _value_node(yaml.compose(content), parts)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if found is None:
            continue
        held = found[1]
        if value is None or (isinstance(held, yaml.ScalarNode) and held.value == value):
            return f"{INLINE if inline else text}:{found[0].start_mark.line + 1}"
    return None


def item_lacking(argv: list[str], key: str, names: list[str]) -> tuple[str, str] | None:
    """``(key[i], file:line)`` of the first item of the list at the top-level key ``key`` (a
    list of lists: ``key[i][j]``) in the last ``--config`` file that gives it, that is a mapping
    without one of ``names`` (jsonargparse's "the following arguments are required" names the
    list, not the item). None when no file gives such an item."""
    import yaml

    if any(arg.split("=")[0] in (f"--{key}", f"--{key}+") for arg in argv):
        return None  # the command line gives the list

    def lacking(node: Any, where: str) -> tuple[str, Any] | None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                found = lacking(item, f"{where}[{i}]")
                if found:
                    return found
        elif isinstance(node, yaml.MappingNode):
            keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
            return (where, node) if not set(names) <= keys else None
        return None

    for text in reversed(config_file_arguments(argv)):
        inline = inline_config(text) is not None
        try:
            content = text if inline else Path(text).read_text(encoding="utf-8")
            found = _value_node(yaml.compose(content), [key])
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if found is None or not isinstance(found[1], yaml.SequenceNode):
            continue
        hit = lacking(found[1], key)
        if hit is None:
            return None
        return hit[0], f"{INLINE if inline else text}:{hit[1].start_mark.line + 1}"
    return None
