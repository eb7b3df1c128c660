"""How ``python -m lsframe`` says what is wrong: one line, no traceback, no usage block.

Rule: a bad input ends the command with exactly one line on stderr,
``lsframe <subcommand>: error: <what is wrong> (<key or file:line>)``, and exit status 2 for a
configuration error or 1 for a data or checkpoint error (:mod:`lsframe.errors`). A command line
or config file that does not parse adds ``; see: lsframe <subcommand> --help`` instead of the
usage block. ``LSFRAME_DEBUG=1`` prints the traceback before the line.

* :func:`lsframe.config_files.check_config_files` reads every ``--config`` file with
  ``yaml.safe_load`` before jsonargparse does, so a syntax error names ``file:line:column`` (and
  a key named twice in one mapping, which YAML would resolve by dropping the first,
  ``file:line``);
* :func:`lsframe.cli_usage.usage_error` turns jsonargparse's nested parse errors (``Parser key "model": Does not
  validate against any of the Union subtypes ...``) into the full key and the innermost problem,
  with "did you mean" for an unknown key, and the ``--config`` file and line that gave an
  unknown key or a value of the wrong type;
* :func:`error_line` classifies any exception for the top-level handler: lsframe's own errors
  (:mod:`lsframe.errors`, found also under jsonargparse's wrappers), parse errors, YAML errors,
  a missing file (1), Lightning's ``MisconfigurationException`` (2, whenever it comes: a
  setting Lightning cannot run with) and its refusal of a ``val_check_interval`` longer than an
  epoch (2, at that key, whenever it comes), a collective that failed because another process
  of the run stopped (1, :func:`peer_stopped`), any other ``ValueError`` (2) raised before a fit
  got past its setup; None for the rest (a bug, an environment failure, or an error of the run itself
  once training started: the traceback stays).
"""

from __future__ import annotations

import argparse
import errno
import os
import re

from lsframe.cli_usage import _chain, usage_error
from lsframe.errors import (
    ConfigError,
    DataError,
    LsframeError,
    MissingFileError,
    PeerStoppedError,
    UsageError,
    one_line,
    run_started,
)

DEBUG_VARIABLE = "LSFRAME_DEBUG"


def debug_enabled() -> bool:
    """Whether ``LSFRAME_DEBUG`` asks for tracebacks (set, and not ``0``/``false``/empty)."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------- top-level handler
_WRAPPERS = ("Does not validate against any of the Union subtypes", 'Parser key "', "Problem with")


#: Lightning's refusals whose words name the Trainer setting at fault.
_LIGHTNING_KEYS = (
    (re.compile(r"^The strategy `[^`]+` requires"), "trainer.strategy"),  # fsdp on a CPU
)
#: Lightning's refusal of an integer ``val_check_interval`` longer than an epoch.
_VALIDATION_INTERVAL = re.compile(
    r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training "
    r"batches \((\d+)\)"
)


#: Lightning's refusal of two callbacks whose saved states would share one key.
_SAME_STATE_KEY = re.compile(r"Found more than one stateful callback of type `(\w+)`")


_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback")


def unwrap_worker_error(error: LsframeError) -> LsframeError:
    """``error`` as the DataLoader worker raised it: torch re-raises a worker's exception as its
    class with the whole worker traceback as the message; its last line is the one to print."""
    if not _WORKER.match(error.message):
        return error
    last = error.message.strip().splitlines()[-1]
    original = last.split(": ", 1)[1] if ": " in last else last
    return type(error)(original)


#: A collective's failure because another process of the run ended: gloo's words (torch adds
#: the hint about a remote worker) and NCCL's.
_PEER_GONE = re.compile(
    r"(gloo|NCCL).*?(Connection (closed|reset) by peer|remote process exited|remote worker crash)",
    re.IGNORECASE | re.DOTALL,
)


def peer_stopped(error: BaseException) -> PeerStoppedError | None:
    """The failure of a collective (an all-reduce, DDP's gradient sync) because another process
    of a multi-process run stopped: its own output says why, so this one's traceback only hides
    that line under sixty of its own."""
    for exc in _chain(error):
        found = _PEER_GONE.search(str(exc)) if isinstance(exc, RuntimeError) else None
        if found is None:
            continue
        if found[1].upper() == "NCCL":  # NCCL's one word for both: "... or a network error"
            return PeerStoppedError(
                "another process of this run stopped, or the network between them failed "
                "(NCCL's words for either); each process's output says which",
                where=f"NCCL: {one_line(str(exc))[:300]}",
            )
        return PeerStoppedError(
            "another process of this run stopped, so this one stopped too; that process's "
            "output says why (one the system killed prints nothing)",
            where=f"{found[1]}: {found[2]}",
        )
    return None


def classify(error: BaseException) -> LsframeError | None:
    """The bad input ``error`` reports, as an :class:`LsframeError`; None when ``error`` is not a
    bad input (a bug or an environment failure: the traceback stays)."""
    if isinstance(error, (ValueError, TypeError, argparse.ArgumentError, LsframeError)):
        for exc in _chain(error):
            if isinstance(exc, LsframeError):
                return unwrap_worker_error(exc)
    for exc in _chain(error):  # Lightning's word for a setting it cannot run with
        if any(c.__name__ == "MisconfigurationException" for c in type(exc).__mro__):
            text = str(exc).strip()
            return ConfigError(one_line(text or type(exc).__name__), where=_lightning_key(text))
        twin = _SAME_STATE_KEY.search(str(exc)) if isinstance(exc, RuntimeError) else None
        if twin:  # raised while the Trainer is built
            return ConfigError(
                f"two {twin[1]} callbacks have one checkpoint state key (the class name, with "
                "the settings that tell its instances apart where the class keys on any), so "
                "the second's state would overwrite the first's; keep one, or make them differ "
                "in those settings",
                where="trainer.callbacks",
            )
        interval = _VALIDATION_INTERVAL.search(str(exc)) if isinstance(exc, ValueError) else None
        if interval:  # found when the fit loads its data, after the run counts as started
            return ConfigError(
                f"val_check_interval {interval[1]} is more than the {interval[2]} training "
                "batches of an epoch, so validation would never run: lower it, or set "
                "trainer.check_val_every_n_epoch: null to count batches across epochs",
                where="trainer.val_check_interval",
            )
    peer = peer_stopped(error)  # not a bad input, but its traceback would bury the cause
    if peer is not None:
        return peer
    for exc in _chain(error):  # a full disk: the atomic write kept the earlier checkpoint
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            saving = ".ckpt" in str(exc.filename or "")
            kept = " (the checkpoint being written was discarded whole, the earlier one kept)"
            return DataError(
                f"no space left on the device{kept if saving else ''}: free some; a fit "
                "resumes with --ckpt_path last",
                where=exc.filename or None,
            )
    if run_started():  # raised by the run itself, not by reading its inputs: keep the traceback
        return None
    if isinstance(error, argparse.ArgumentError):
        return usage_error(error)
    try:
        import yaml

        if isinstance(error, yaml.YAMLError):
            return UsageError(f"YAML error: {one_line(error)}")
    except ImportError:  # pragma: no cover - yaml comes with jsonargparse
        pass
    if isinstance(error, FileNotFoundError):
        return MissingFileError(one_line(error))
    wrapped = any(str(exc).startswith(_WRAPPERS) for exc in _chain(error))
    # a ValueError is a refused value; a TypeError only where jsonargparse built a class from
    # the config (an argument it does not take); elsewhere it is a bug and keeps its traceback
    if isinstance(error, ValueError) or (isinstance(error, TypeError) and wrapped):
        inner = error
        for exc in _chain(error):
            if not str(exc).startswith(_WRAPPERS):
                inner = exc
                break
        text = str(inner).strip()
        line = one_line(text.splitlines()[0]) if text else type(inner).__name__
        return ConfigError(line, where=_lightning_key(text))
    return None


def _lightning_key(text: str) -> str | None:
    """The Trainer setting a refusal of Lightning's words names (:data:`_LIGHTNING_KEYS`)."""
    return next((key for pattern, key in _LIGHTNING_KEYS if pattern.search(text)), None)


def error_line(error: BaseException, prog: str) -> tuple[str, int] | None:
    """``(line, exit status)`` for a bad input, or None (see :func:`classify`)."""
    found = classify(error)
    if found is None:
        return None
    where = found.where or found.argument
    line = f"{prog}: error: {one_line(found.message)}" + (f" ({where})" if where else "")
    if isinstance(found, UsageError):
        line += f"; see: {prog} --help"
    return line, found.exit_code
