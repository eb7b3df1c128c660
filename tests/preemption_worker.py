"""Run by test_preemption.py in a subprocess.

``preemption_worker.py lsframe OUT_DIR ARGS...``: ``python -m lsframe ARGS...`` that also writes
its exit status to ``OUT_DIR/exit.rank<r>`` (under DDP Lightning starts rank 1 with this same
command line, so every rank reports).

``preemption_worker.py writer CKPT READY``: a Trainer with lsframe's Preemption callback writes a
good checkpoint to CKPT, then starts a second write of other parameters that pauses halfway
through the bytes, after touching READY, for the test to SIGKILL it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_lsframe(out_dir: str, argv: list[str]) -> None:
    from lsframe.__main__ import main

    rank = os.environ.get("LOCAL_RANK", "0")
    code: object = 1
    try:
        main(argv)
        code = 0
    except SystemExit as error:
        code = error.code
        raise
    finally:
        Path(out_dir, f"exit.rank{rank}").write_text(str(code))


def killed_writer(checkpoint: str, ready: str) -> None:
    import torch
    from helpers import trainer
    from preemption_helpers import Blobs, TinyClassifier

    from lsframe import checkpoint_io
    from lsframe.preemption import Preemption

    module = TinyClassifier()
    fit = trainer(max_steps=2, callbacks=[Preemption()])
    fit.fit(module, Blobs())
    fit.save_checkpoint(checkpoint)  # the good one
    assert isinstance(fit.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)

    def half_then_hang(file, data: memoryview) -> None:
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        Path(ready).write_text(str(len(data)))
        time.sleep(120)  # SIGKILLed here

    checkpoint_io._write_all = half_then_hang
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(1.0)
    fit.save_checkpoint(checkpoint)


if __name__ == "__main__":
    if sys.argv[1] == "lsframe":
        run_lsframe(sys.argv[2], sys.argv[3:])
    else:
        killed_writer(sys.argv[2], sys.argv[3])
