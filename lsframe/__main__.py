"""Entry point: ``python -m lsframe`` and the ``lsframe`` console script.

Rule for bad input (:mod:`lsframe.cli_errors`): the command ends with one line on stderr,
``lsframe <subcommand>: error: <what is wrong> (<key or file:line>)``, exit status 2 for a
configuration error and 1 for a data or checkpoint error, no traceback (``LSFRAME_DEBUG=1``
prints it) and no usage block. In a multi-process run (DDP) rank 0 prints the line; another
rank prints a data or checkpoint error as ``error (rank <k>):`` (it may be that rank's alone)
and stays silent on a configuration error, which every rank meets alike; a rank whose collective
failed because another rank stopped says so in one line (:func:`lsframe.cli_errors.peer_stopped`).
``SystemExit`` (``--help``, a preempted run's ``128 + signum``)
and ``KeyboardInterrupt`` pass through untouched; other exceptions keep their traceback.

Lightning's informational log lines (seed, devices, model summary) go to stdout, so that stderr
carries only problems.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

SUBCOMMANDS = ("fit", "validate", "test", "predict", "sequential", "search", "combine", "export")


def main(args: list[str] | None = None) -> None:
    """Run ``lsframe <args>`` (``sys.argv[1:]`` when None); a bad input exits with its one
    error line (see the module docstring)."""
    argv = sys.argv[1:] if args is None else list(args)
    with _interrupts_outside_training(_prog(argv), exit_at_once=args is None):
        _main(argv, explicit=args is not None)


def _main(argv: list[str], explicit: bool) -> None:
    from lsframe.errors import mark_run_started

    mark_run_started(False)
    try:
        _run(argv, explicit=explicit)
    except SystemExit as error:
        _exit_on_second_ctrl_c(error, argv)
        raise
    except KeyboardInterrupt:
        raise
    except Exception as error:
        _exit_on_bad_input(error, argv)
        raise
    finally:
        mark_run_started(False)  # the flag belongs to this command, not to the process
        _release_process_group()


_OUTSIDE: dict[str, object] = {"signum": None, "prog": "lsframe", "at_once": False}


def _stopped_line(signum: int) -> str:
    import signal

    return (
        f"{_OUTSIDE['prog']}: stopped by {signal.Signals(signum).name} outside training, with "
        "nothing of a run to save; rerun the command (--ckpt_path last continues a fit from "
        "its last checkpoint)"
    )


def _interrupt(signum: int, frame: object) -> None:
    import os

    if _OUTSIDE["at_once"]:  # the command itself: end here, between two Python bytecodes
        if int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0) == 0:
            os.write(2, (_stopped_line(signum) + "\n").encode())
        os._exit(128 + signum)
    if _OUTSIDE["signum"] is None:
        _OUTSIDE["signum"] = int(signum)
    raise KeyboardInterrupt


@contextmanager
def _interrupts_outside_training(prog: str, exit_at_once: bool) -> Iterator[None]:
    """Ctrl-C or SIGTERM while no training loop holds the signals (imports, config checks, the
    model's load; a fit's closing lines): one line and ``128 + signum``, as a stop inside a fit
    ends, not a traceback of whatever was importing (or, for SIGTERM, a silent death). Nothing
    of a run is unsaved then, so the command (``exit_at_once``) ends in the handler itself: an
    exception raised into an import half done (torch's) could crash the interpreter's exit. Run
    in process (``main(args)``), it raises ``SystemExit`` instead. Inside a fit lsframe's own
    handlers take over (:func:`lsframe.preemption.catch_signals`); an ignored SIGINT (a
    background job) and another program's SIGTERM handler are left as they are."""
    import signal
    import threading

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                previous[signum] = current
                signal.signal(signum, _interrupt)
    _OUTSIDE.update(signum=None, prog=prog, at_once=exit_at_once)
    try:
        yield
    except BaseException as error:  # an import the signal broke fails with anything
        signum = _OUTSIDE["signum"]
        if not isinstance(signum, int) or (
            isinstance(error, SystemExit) and error.code == 128 + signum
        ):
            raise
        import os

        # the environment's rank: importing Lightning may be what the signal broke
        if int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0) == 0:
            print(_stopped_line(signum), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _OUTSIDE.update(signum=None, at_once=False)


def _prog(argv: list[str]) -> str:
    """``lsframe <subcommand>``, or ``lsframe`` when no known subcommand comes first."""
    return f"lsframe {argv[0]}" if argv[:1] and argv[0] in SUBCOMMANDS else "lsframe"


def _exit_on_second_ctrl_c(error: SystemExit, argv: list[str]) -> None:
    """A second Ctrl-C while a stop is pending interrupts the step at once
    (:mod:`lsframe._signals`); Lightning answers it with its own shutdown and ``exit(1)``. Say
    so in one line and exit with Ctrl-C's 130, as the first Ctrl-C's stop does."""
    if error.code == 1 and isinstance(error.__context__, KeyboardInterrupt):
        print(
            f"{_prog(argv)}: interrupted by a second Ctrl-C inside a step; nothing was saved "
            "for it: a rerun resumes from the last checkpoint written before it",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(130) from None


def _exit_on_bad_input(error: Exception, argv: list[str]) -> None:
    """Print the one error line and exit with its status when ``error`` is a bad input;
    return (so the caller re-raises with the traceback) when it is not."""
    from lsframe.cli_errors import debug_enabled, error_line

    report = error_line(error, _prog(argv))
    if report is None:
        return
    line, status = report
    if debug_enabled():
        traceback.print_exception(error)
    rank = _global_rank()
    if rank > 0:  # a process of a multi-process run started by rank 0's command
        if status == 2:  # a configuration error: every rank has the same config and code
            raise SystemExit(status) from None
        line = line.replace(": error: ", f": error (rank {rank}): ", 1)
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(status) from None


def _global_rank() -> int:
    """This process's rank in a multi-process run (Lightning's, from the strategy or the launch
    environment); 0 alone."""
    import os

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", 0)
    # a rank variable of the environment alone (a SLURM job step of one task) is no run of
    # several processes: only Lightning's launch and torchrun set WORLD_SIZE
    alone = int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        alone = dist.get_world_size() <= 1
    return 0 if alone or not isinstance(rank, int) else rank


class _StdoutHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stdout`` is at the time of the record."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's attribute
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - ignored: always the current stdout
        pass


def _route_lightning_logs_to_stdout() -> None:
    """Lightning's own stderr handlers (seed, devices, model summary: informational) → stdout."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stderr,
                sys.__stderr__,
            ):
                logger.removeHandler(handler)
                replacement = _StdoutHandler()
                replacement.setLevel(handler.level)
                replacement.setFormatter(handler.formatter)
                logger.addHandler(replacement)


def _release_process_group() -> None:
    """Destroy a DDP process group the command left (Lightning keeps it for another fit).

    Left to interpreter shutdown, gloo's worker threads can abort the finished process
    (``terminate called without an active exception``, exit code 134); PyTorch asks every
    trainer process to call ``destroy_process_group`` at the end of its main.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(argv: list[str], explicit: bool = True) -> None:
    from lsframe.config_files import check_config_files

    if argv[:1] in (["-h"], ["--help"]):
        print(
            "lsframe subcommands beyond Lightning's fit/validate/test/predict (each has --help):\n"
            "  sequential  fine-tune on a sequence of tasks; accuracy matrix and forgetting\n"
            "  search      Optuna search of per-part learning rates (BERTcL)\n"
            "  combine     geometric mean of several pairs' best distributions (BERTcL)\n"
            "  export      write a checkpoint's model: Hugging Face (LoRA merged or adapter alone)"
            " or timm\n"
        )
    check_config_files(argv)
    if not argv or (not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS):
        from lsframe.cli_usage import unknown_subcommand

        raise unknown_subcommand(argv[0] if argv else None, SUBCOMMANDS)
    if argv[:1] == ["combine"]:
        from lsframe.lr_distribution import combine_main

        combine_main(argv[1:])
        return
    from lsframe.cli import LSFrameCLI
    from lsframe.export_command import export

    _route_lightning_logs_to_stdout()
    if argv[:1] == ["export"]:
        export(argv[1:])
        return
    if argv[:1] == ["search"]:
        from lsframe.search import main as search

        search(argv[1:])
        return
    if argv[:1] == ["sequential"]:
        from lsframe.sequential import main as sequential

        sequential(argv[1:])
        return
    # LightningCLI reads sys.argv itself when called from the console (args=None); a parse
    # error raises (exit_on_error=False) and becomes the one error line
    LSFrameCLI(
        args=argv if explicit else None, parser_kwargs={"exit_on_error": False, "prog": "lsframe"}
    )


if __name__ == "__main__":
    main()
