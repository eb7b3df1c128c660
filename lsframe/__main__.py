"""Entry point: ``python -m lsframe`` and the ``lsframe`` console script."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    try:
        _run(sys.argv[1:] if args is None else list(args))
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Destroy a DDP process group the command left (Lightning keeps it for another fit).

    Left to interpreter shutdown, gloo's worker threads can abort the finished process
    (``terminate called without an active exception``, exit code 134); PyTorch asks every
    trainer process to call ``destroy_process_group`` at the end of its main.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(argv: list[str]) -> None:
    from lsframe.cli import LSFrameCLI, export

    if argv[:1] in (["-h"], ["--help"]):
        print(
            "lsframe subcommands beyond Lightning's fit/validate/test/predict (each has --help):\n"
            "  sequential  fine-tune on a sequence of tasks; accuracy matrix and forgetting\n"
            "  search      Optuna search of per-part learning rates (BERTcL)\n"
            "  combine     geometric mean of several pairs' best distributions (BERTcL)\n"
            "  export      write a checkpoint's model with save_pretrained\n"
        )
    if argv[:1] == ["export"]:
        export(argv[1:])
        return
    if argv[:1] == ["search"]:
        from lsframe.search import main as search

        search(argv[1:])
        return
    if argv[:1] == ["combine"]:
        from lsframe.lr_distribution import combine_main

        combine_main(argv[1:])
        return
    if argv[:1] == ["sequential"]:
        from lsframe.sequential import main as sequential

        sequential(argv[1:])
        return
    LSFrameCLI(args=argv)


if __name__ == "__main__":
    main()
