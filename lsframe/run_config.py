"""The configuration a resumable run was started with, so that a rerun with another one is
refused instead of continuing the first run's progress under the new settings.

``lsframe sequential`` resumes from what its ``output_dir`` holds, and ``lsframe search`` from
the Optuna study in its storage. Rerun with another config (stages reordered, a callback added,
other learning-rate bounds), either would carry the first run's weights, matrix rows or trials
into results labelled with the new settings. Each run records :func:`defining_config` of its
parsed configuration when it starts without progress; a rerun that finds progress compares its
own and refuses the first difference (:func:`refuse_another_config`).

Settings that only say where or how a run executes (devices, progress bar, logger, the
``--config`` file's path) are left out: a preempted job may resume on another machine.
"""

from __future__ import annotations

import json
import re
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


def _named(value: Any) -> str:
    """A value JSON cannot hold, by a name that is the same in every process: a function or a
    class by its import path (``str`` would give its memory address), else ``str`` without
    addresses."""
    if hasattr(value, "__module__") and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(value))


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
    return {k: v for k, v in plain.items() if not k.startswith("__")}


def first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """``(key, old value, new value)`` of the first place where ``old`` and ``new`` differ
    (``stages[1].data.init_args.task_name``), or None where they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            found = first_difference(old.get(name), new.get(name), f"{key}.{name}" if key else name)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{key}[{i}]")
            if found is not None:
                return found
        return None
    return None if old == new else (key, old, new)


def _shown(value: Any) -> str:
    text = json.dumps(value) if value is not None else "unset"
    return text if len(text) <= 60 else text[:57] + "..."


def refuse_another_config(
    saved: dict[str, Any], current: dict[str, Any], what: str, remedy: str, where: str
) -> None:
    """Raise :class:`ConfigError` at ``where`` naming the first difference between the
    ``saved`` and the ``current`` defining config (``what`` says whose progress is at stake,
    ``remedy`` the ways out)."""
    found = first_difference(saved, current)
    if found is None:
        return
    key, old, new = found
    raise ConfigError(
        f"{what} was started with another config: {key} was {_shown(old)}, now {_shown(new)}; "
        f"continuing would carry its progress into results under the new settings: {remedy}",
        where=where,
    )


def check_recorded(path: Path, current: dict[str, Any], what: str, remedy: str, where: str) -> None:
    """:func:`refuse_another_config` against the config recorded in ``path`` (JSON; a run from
    before such files existed has none and is not checked)."""
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not the JSON lsframe writes: {error}", str(path)) from None
    refuse_another_config(saved, current, what, remedy, where)


def record(path: Path, current: dict[str, Any]) -> None:
    """Write ``current`` to ``path`` as the config a run starts with (whole or not at all)."""
    from lsframe.checkpoint_io import write_atomically

    write_atomically(path, (json.dumps(current, indent=1, sort_keys=True) + "\n").encode())
