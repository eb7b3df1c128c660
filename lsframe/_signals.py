"""The signal flag behind lsframe's preemption-safe runs (:mod:`lsframe.preemption`).

SIGTERM, SIGUSR1 and SIGINT only set a flag inside :func:`catch_signals`; the
:class:`~lsframe.preemption.Preemption` callback reads it after each optimizer step, and the
commands that run several fits (search, sequential) read it between them
(:func:`stop_if_received`). A stopped run raises :class:`Preempted`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name)
)


class _Flag:
    """The first signal received (None: none) and how many :func:`catch_signals` are open."""

    signum: int | None = None
    depth: int = 0


_FLAG = _Flag()


def _note(signum: int, frame: Any) -> None:
    """The signal handler: remember the first signal, nothing else (safe inside any step).

    A second Ctrl-C while a stop is pending is the user insisting (a hung step, a slow
    download): Python's default handling comes back and the KeyboardInterrupt is raised now."""
    if _FLAG.signum is None:
        _FLAG.signum = int(signum)
    elif signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt


def received() -> int | None:
    """The signal this process received and has not acted on yet (None: none)."""
    return _FLAG.signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _install(signals: tuple[int, ...]) -> dict[int, Any]:
    """Point ``signals`` at :func:`_note`; the previous handlers (nothing off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in signals:
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _note)
    return previous


class Preempted(SystemExit):
    """A run stopped by a signal: a ``SystemExit`` with status ``128 + signum`` on every rank.

    Attributes:
        signum: The signal.
        step: The optimizer step after which the run stopped (None: before its first step).
        checkpoint: The checkpoint written (None: none).
        line: The one line that says so.
    """

    def __init__(self, signum: int, step: int | None, checkpoint: str | None, line: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint, self.line = signum, step, checkpoint, line


@contextmanager
def catch_signals(command: str = "lsframe") -> Iterator[None]:
    """Within the block, :data:`SIGNALS` only set the flag that :class:`Preemption` reads.

    Covers what happens outside a fit's training loop (model and data setup, evaluations between
    stages, an Optuna trial's bookkeeping): such a signal stops the next fit before its first
    step. Lightning's own SIGTERM exception (raised when its handler saw the signal in the short
    moment before :class:`Preemption` took over) becomes :class:`Preempted` rather than exit
    status 0. The previous handlers come back on exit; the flag is cleared on entering and on
    leaving the outermost block.
    """
    if _FLAG.depth == 0:
        _FLAG.signum = None
    previous = _install(SIGNALS)
    _FLAG.depth += 1
    try:
        yield
    except SIGTERMException as error:
        if error.code is not None:
            raise
        line = f"{command}: stopped by SIGTERM outside an optimizer step; no checkpoint written"
        if rank_zero_only.rank == 0:
            print(line, file=sys.stderr, flush=True)
        raise Preempted(signal.SIGTERM, None, None, line) from None
    finally:
        _FLAG.depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if _FLAG.depth == 0:
            _FLAG.signum = None


def stop_if_received(command: str, where: str, hint: str) -> None:
    """Between runs: when a signal is pending, print ``<command>: stopped by <SIGNAL> <where>;
    <hint>`` (rank 0) and raise :class:`Preempted`; otherwise return."""
    signum = _FLAG.signum
    if signum is None:
        return
    line = f"{command}: stopped by {signal_name(signum)} {where}; {hint}"
    if rank_zero_only.rank == 0:
        print(line, file=sys.stderr, flush=True)
    raise Preempted(signum, None, None, line)


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this SLURM job (or array task), as Lightning's SLURM handler does.

    Returns:
        A phrase for the stop line: ``SLURM job <id> requeued`` or why it was not.
    """
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array_job else None
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return "no SLURM job id to requeue"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as error:
        return f"requeueing SLURM job {job} failed ({error})"
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        return f"requeueing SLURM job {job} failed ({reason[-1] if reason else result.returncode})"
    return f"SLURM job {job} requeued"
