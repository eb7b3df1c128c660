"""The errors lsframe raises for bad input, each with where the problem is.

Rule: a problem with what the user configured raises :class:`ConfigError` (the command exits
with status 2); a problem with a file the configuration points to (data, checkpoint, state file,
model directory) raises :class:`DataError` (status 1), or :class:`MissingFileError` when the file
is absent. Each carries ``where``: the config key (``model.init_args.optimizer.init_args.c``) or
the file and line (``/data/RTE/train.tsv:3``); ``str(error)`` is ``"<message> (<where>)"``
(without ``where``: ``"<message> (<argument>)"`` unless the message names the argument).
``python -m lsframe`` prints that as its one error line (:mod:`lsframe.__main__`).

A check that only knows the argument's own name (``c``, ``batch_size``: the checks of
:mod:`lsframe.validation`, which run inside constructors) sets ``argument`` instead of ``where``;
the command line, which knows where the constructor's arguments came from, turns it into the
full key with :meth:`LsframeError.at`.

A run that meets a non-finite loss or gradient under ``nonfinite_loss="raise"`` stops with
:class:`NonFiniteLossError` (status 1), said in one line like a bad input: the step and the
setting that would skip such steps.

This file imports only the standard library, so :mod:`lsframe.optim` and
:mod:`lsframe.validation` can raise these errors without Lightning.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "LsframeError",
    "MissingFileError",
    "NonFiniteLossError",
    "NonFiniteParametersError",
    "PeerStoppedError",
    "UsageError",
    "mark_run_started",
    "one_line",
    "run_started",
]


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: an error line."""
    return " ".join(str(text).split())


class _RunState:
    started = False


def mark_run_started(started: bool = True) -> None:
    """Record that a fit got past its setup (``on_fit_start``): from then on only lsframe's own
    errors are bad input; any other exception is a failure of the run and keeps its traceback."""
    _RunState.started = started


def run_started() -> bool:
    """Whether a fit of this command got past its setup (see :func:`mark_run_started`)."""
    return _RunState.started


class LsframeError(Exception):
    """A bad input, said in one line: ``message`` plus where it is.

    Args:
        message: What is wrong, without the location.
        where: The config key or ``file:line`` at fault (None: not known here).
        argument: The constructor argument at fault, as the check spelled it, for a caller that
            knows the key the argument came from (see :meth:`at`).
    """

    #: The exit status of ``python -m lsframe`` for this error.
    exit_code: int = 1

    def __init__(self, message: str, where: str | None = None, argument: str | None = None):
        self.message, self.where, self.argument = message, where, argument
        location = where
        if location is None and argument is not None and argument not in message:
            location = argument
        super().__init__(message if location is None else f"{message} ({location})")

    def at(self, prefix: str) -> LsframeError:
        """This error located under the config key ``prefix`` (e.g. ``data.init_args``): an error
        that has ``where`` already keeps it; else ``where`` becomes ``<prefix>.<argument>`` (a
        check that spelled the argument ``data.batch_size`` gives ``<prefix>.batch_size``), or
        ``prefix`` itself when no argument is known."""
        if self.where is not None:
            return self
        where = prefix
        if self.argument:
            parts = prefix.split(".")
            owner = parts[-2] if parts[-1] == "init_args" and len(parts) > 1 else parts[-1]
            section = owner.split("[", 1)[0]
            name = self.argument.removeprefix(f"{section}.")
            where = f"{prefix}.{name}"
        located = type(self)(self.message, where, self.argument)
        located.__cause__ = self
        return located


class ConfigError(LsframeError, ValueError):
    """A configured value is wrong (exit status 2): out of range, of the wrong type, an unknown
    key, settings that do not fit together."""

    exit_code = 2


class UsageError(ConfigError):
    """The command line or config file does not parse (exit status 2); the command adds a
    pointer to ``--help`` instead of printing its usage."""


class DataError(LsframeError, ValueError):
    """A file the configuration points to cannot be used (exit status 1): a malformed row, a
    label out of range, an empty file, an image that does not decode, an unreadable checkpoint."""

    exit_code = 1


class MissingFileError(DataError, FileNotFoundError):
    """A file or directory the configuration points to does not exist (exit status 1)."""


class PeerStoppedError(LsframeError, RuntimeError):
    """Another process of a multi-process run (DDP) stopped, and the collective this process
    was in failed with it (exit status 1); the reason is in that process's own output."""

    exit_code = 1


class NonFiniteLossError(LsframeError, FloatingPointError):
    """Training met a non-finite loss or gradient and the module was told to stop (exit status
    1); the step was not applied."""

    exit_code = 1


class NonFiniteParametersError(NonFiniteLossError):
    """The parameters themselves are no longer finite (exit status 1): an earlier update
    overflowed them, so no state after that update may be saved as the run's progress."""
