"""The configuration a resumable run was started with, so that a rerun with another one is
refused instead of continuing the first run's progress under the new settings.

``lsframe sequential`` resumes from what its ``output_dir`` holds, and ``lsframe search`` from
the Optuna study in its storage. Rerun with another config (stages reordered, a callback added,
other learning-rate bounds), either would carry the first run's weights, matrix rows or trials
into results labelled with the new settings. Each run records :func:`defining_config` of its
parsed configuration when it starts without progress; a rerun that finds progress compares its
own and refuses the first difference (:func:`refuse_another_config`).

Settings that only say where or how a run executes (devices, progress bar, logger, the
``--config`` file's path) are left out: a preempted job may resume on another machine. For the
same reason a path may change if what it names has not: the record keeps a fingerprint of each
file or folder its config names (:func:`fingerprint`), and a path that differs is the same
setting when the new one's fingerprint equals the old one's (data copied to a node's local disk,
a model moved).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsframe.errors import ConfigError, DataError

#: Trainer settings that say where or how a run executes, not what it computes.
OPERATIONAL_TRAINER_KEYS = frozenset(
    {
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "logger",
        "log_every_n_steps",
        "default_root_dir",
        "profiler",
        "num_sanity_val_steps",
    }
)


#: The key under which a record keeps the fingerprints of the paths its config names.
PATHS_KEY = "__paths__"
_WHOLE_FILE = 64 * 2**20  # hashed whole up to this size, else its first and last MiB
_MAX_FILES = 100_000  # a larger folder gets no fingerprint: listing it would delay every start


def fingerprint(path: Path) -> str | None:
    """A cheap identity of what ``path`` holds: for a file its size and the SHA-256 of its bytes
    (past 64 MiB, of its first and last MiB); for a folder the SHA-256 of each file's relative
    path and size (None past 100,000 files). Same content, same fingerprint, wherever it lies;
    an edit that keeps a large file's size and its ends, or a folder's file sizes, goes
    unseen."""
    digest = hashlib.sha256()
    if path.is_file():
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as f:
            if size <= _WHOLE_FILE:
                digest.update(f.read())
            else:
                digest.update(f.read(2**20))
                f.seek(size - 2**20)
                digest.update(f.read())
        return "file:" + digest.hexdigest()
    listed = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        listed += len(files)
        if listed > _MAX_FILES:
            return None
        for name in sorted(files):
            file = Path(root, name)
            size = file.stat().st_size if file.is_file() else -1
            digest.update(f"{file.relative_to(path).as_posix()}\0{size}\n".encode())
    return "folder:" + digest.hexdigest()


def _names_a_path(value: str) -> bool:
    """Whether a config string names an existing file, or a folder by a path with a separator
    (not ``"."`` or one of its parents: a bare word such as a task name is a setting)."""
    if not value or "\n" in value or len(value) > 1024:
        return False
    try:
        path = Path(value)
        if path.is_file():
            return True
        if "/" not in value and os.sep not in value or not path.is_dir():
            return False
        here = Path.cwd().resolve()
        return path.resolve() not in (here, *here.parents)
    except (OSError, ValueError):
        return False


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def with_fingerprints(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` with :data:`PATHS_KEY`: the fingerprint of each path it names."""
    found = {v: fingerprint(Path(v)) for v in sorted(set(_strings(current))) if _names_a_path(v)}
    return {**current, PATHS_KEY: {v: f for v, f in found.items() if f is not None}}


def _moved(old: Any, new: Any, paths: dict[str, str]) -> bool:
    """Whether ``new`` names what the recorded path ``old`` named, moved."""
    if not (isinstance(old, str) and isinstance(new, str) and old in paths):
        return False
    return _names_a_path(new) and fingerprint(Path(new)) == paths[old]


def _named(value: Any) -> str:
    """A value JSON cannot hold, by a name that is the same in every process: a function or a
    class by its import path (``str`` would give its memory address), else ``str`` without
    addresses."""
    if hasattr(value, "__module__") and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}" + _captured(value)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(value))


_PLAIN = (bool, int, float, str, type(None))


def _captured(function: Any) -> str:
    """``(lr=5e-05)``: the plain values a function (a lambda, a local function) captured from
    its scope or takes as defaults, which are settings (``lambda p: AdamW(p, lr=lr)``); empty
    for a class or a function without them."""
    code = getattr(function, "__code__", None)
    if code is None:
        return ""
    cells = zip(code.co_freevars, getattr(function, "__closure__", None) or ())
    values = []
    for name, cell in cells:
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(content, _PLAIN):
            values.append(f"{name}={content!r}")
    defaults = [d for d in getattr(function, "__defaults__", None) or () if isinstance(d, _PLAIN)]
    values += [repr(d) for d in defaults]
    return f"({', '.join(values)})" if values else ""


def defining_config(config: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parsed ``config`` (a jsonargparse Namespace) as plain JSON values, without the
    ``--config`` paths, the operational trainer settings and the dotted keys ``leave_out``."""
    plain = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    plain = json.loads(json.dumps(plain, sort_keys=True, default=_named))
    plain.pop("config", None)
    trainer = plain.get("trainer")
    if isinstance(trainer, dict):
        for key in OPERATIONAL_TRAINER_KEYS:
            trainer.pop(key, None)
    for dotted in leave_out:
        *parents, last = dotted.split(".")
        node = plain
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return _without_config_paths({k: v for k, v in plain.items() if not k.startswith("__")})


def _without_config_paths(value: Any) -> Any:
    """``value`` without jsonargparse's ``__path__`` keys at any depth: the file a section was
    read from (``model: model.yaml``) is not a setting, the values it gives are (a comment added
    to it, or the same run started from another folder, changed the recorded path's bytes)."""
    if isinstance(value, dict):
        return {k: _without_config_paths(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list):
        return [_without_config_paths(v) for v in value]
    return value


def first_difference(
    old: Any, new: Any, key: str = "", paths: dict[str, str] | None = None
) -> tuple[str, Any, Any] | None:
    """``(key, old value, new value)`` of the first place where ``old`` and ``new`` differ
    (``stages[1].data.init_args.task_name``), or None where they are equal. A path of ``old``
    with a fingerprint in ``paths`` equals a ``new`` path whose fingerprint is the same; the
    same path to a file whose fingerprint changed differs."""
    paths = paths or {}
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            at = f"{key}.{name}" if key else name
            found = first_difference(old.get(name), new.get(name), at, paths)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):  # an item inserted or removed shows here
            found = first_difference(a, b, f"{key}[{i}]", paths)
            if found is not None:
                return found
        if len(old) != len(new):  # one list goes on: its first item the other lacks
            i = min(len(old), len(new))
            return (
                f"{key}[{i}]",
                old[i] if i < len(old) else None,
                new[i] if i < len(new) else None,
            )
        return None
    if old == new:
        return (key, old, new) if _edited(old, paths) else None
    if (
        isinstance(old, str)
        and isinstance(new, str)
        and new.startswith(f"{old}(")
        and "(" not in old
    ):
        return None  # a function recorded by its name alone, before 2026-12-07
    return None if _moved(old, new, paths) else (key, old, new)


def _edited(value: Any, paths: dict[str, str]) -> bool:
    """Whether the recorded file ``value`` names holds other bytes now (an edited distribution
    or text file at the same path). A folder's content may change without changing the run (a
    data folder that gains a task), so folders are compared only when they moved."""
    recorded = paths.get(value) if isinstance(value, str) else None
    if recorded is None or not recorded.startswith("file:"):
        return False
    return fingerprint(Path(value)) != recorded


def _shown(value: Any) -> str:
    text = json.dumps(value) if value is not None else "unset"
    if len(text) <= 60:
        return text
    # a path says the most at its end, a list or a mapping at its start
    return '"...' + text[-56:] if isinstance(value, str) else text[:57] + "..."


def refuse_another_config(
    saved: dict[str, Any], current: dict[str, Any], what: str, remedy: str, where: str
) -> None:
    """Raise :class:`ConfigError` at ``where`` naming the first difference between the
    ``saved`` and the ``current`` defining config (``what`` says whose progress is at stake,
    ``remedy`` the ways out). Paths that moved are the same setting (see the module's text)."""
    saved = dict(saved)
    paths = saved.pop(PATHS_KEY, None) or {}
    saved = _without_config_paths(saved)  # recorded before 2026-12-07
    found = first_difference(saved, current, paths=paths)
    if found is None:
        return
    key, old, new = found
    other = " (other content)" if isinstance(old, str) and old in paths else ""
    raise ConfigError(
        f"{what} was started with another config: {key} was {_shown(old)}, now {_shown(new)}"
        f"{other}; "
        f"continuing would carry its progress into results under the new settings: {remedy}",
        where=where,
    )


def check_recorded(
    path: Path,
    current: dict[str, Any],
    what: str,
    remedy: str,
    where: str,
    older: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """:func:`refuse_another_config` against the config recorded in ``path`` (JSON; a run from
    before such files existed has none and is not checked); ``older`` reads a record an
    earlier lsframe wrote as this one would have written it."""
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not the JSON lsframe writes: {error}", str(path)) from None
    refuse_another_config(older(saved) if older else saved, current, what, remedy, where)


def record(path: Path, current: dict[str, Any]) -> None:
    """Write ``current`` to ``path`` as the config a run starts with, with the fingerprints of
    the paths it names (whole or not at all)."""
    from lsframe.checkpoint_io import write_atomically

    text = json.dumps(with_fingerprints(current), indent=1, sort_keys=True) + "\n"
    write_atomically(path, text.encode())
