"""The pieces of preemption: atomic checkpoint writes (a writer SIGKILLed halfway through its
bytes), the newest last checkpoint, the signal handlers of a fit in Python, Lightning's SIGTERM
exception, and SLURM's requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lsframe.checkpoint_io import find_last_checkpoint, write_atomically
from lsframe.preemption import Preempted, catch_signals, requeue_slurm_job

WORKER = Path(__file__).resolve().parent / "preemption_worker.py"
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def test_a_writer_killed_mid_checkpoint_leaves_the_previous_last_ckpt_whole(tmp_path):
    checkpoint, ready = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "ready"
    env = dict(os.environ, TMPDIR="/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, str(WORKER), "writer", str(checkpoint), str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    good = checkpoint.read_bytes()
    (partial,) = checkpoint.parent.glob(".last.ckpt.tmp-*")  # half the new bytes, beside it
    assert 0 < partial.stat().st_size < int(ready.read_text())
    process.kill()  # SIGKILL in the middle of the write
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert checkpoint.read_bytes() == good
    loaded = torch.load(checkpoint, weights_only=True)
    assert loaded["global_step"] == 2 and "state_dict" in loaded
    write_atomically(checkpoint, b"next")  # the next write clears what the kill left
    assert checkpoint.read_bytes() == b"next" and not partial.exists()


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from lsframe import checkpoint_io

    target = tmp_path / "last.ckpt"
    write_atomically(target, b"old")

    def fail(file, data):
        file.write(data[:1])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io, "_write_all", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, b"new bytes")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_a_fit_in_python_stops_on_ctrl_c_and_gives_the_handlers_back(tmp_path):
    from helpers import trainer
    from preemption_helpers import Blobs, SignalAt, TinyClassifier

    from lsframe.preemption import Preemption

    handler = signal.getsignal(signal.SIGINT)
    fit = trainer(max_steps=8, callbacks=[SignalAt(3, signal.SIGINT), Preemption(str(tmp_path))])
    with pytest.raises(Preempted) as stopped:
        fit.fit(TinyClassifier(), Blobs())
    assert stopped.value.code == 130 and stopped.value.step == 3
    assert stopped.value.checkpoint == str(tmp_path / "last.ckpt")
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning put the old one back


def test_a_signal_in_a_validation_between_micro_batches_stops_after_the_step(tmp_path):
    # the stop at that validation's end saved the step before with the loader after its first
    # micro-batch: the resume never trained that micro-batch and paired the others anew
    import lightning.pytorch as pl
    from helpers import trainer
    from preemption_helpers import Blobs, TinyClassifier

    from lsframe.preemption import Preemption

    class SignalInValidation(pl.Callback):
        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                os.kill(os.getpid(), signal.SIGTERM)

    fit = trainer(
        max_steps=8, val_check_interval=3, check_val_every_n_epoch=None,
        callbacks=[SignalInValidation(), Preemption(str(tmp_path))],
    )  # fmt: skip
    with pytest.raises(Preempted) as stopped:
        fit.fit(TinyClassifier(accumulate_grad_batches=2), Blobs())
    assert stopped.value.step == 2  # the validation came after micro-batch 3, inside step 2
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    place = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert saved["global_step"] == 2 and place["batches"] == 4


def test_lightnings_sigterm_exception_exits_143_not_0(capsys):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(Preempted) as stopped, catch_signals("lsframe fit"):
        raise SIGTERMException()
    assert stopped.value.code == 143
    assert "lsframe fit: stopped by SIGTERM" in capsys.readouterr().err


def test_the_newest_last_checkpoint_names_the_version_to_continue(tmp_path):
    assert find_last_checkpoint(tmp_path) is None
    for version, age in (("version_0", 30), ("version_2", 10), ("version_1", 20)):
        path = tmp_path / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))
    (tmp_path / "version_3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "version_3" / "checkpoints" / "best.ckpt").write_bytes(b"x")
    version, path = find_last_checkpoint(tmp_path)
    assert version == "version_2" and path.name == "last.ckpt"


def test_slurm_requeue_calls_scontrol_for_the_job(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "called"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert requeue_slurm_job() == "SLURM job 4242 requeued"
    assert (tmp_path / "called").read_text().split() == ["requeue", "4242"]
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue_slurm_job() == "SLURM job 77_3 requeued"


def test_a_signal_after_a_trials_last_step_stops_the_search_between_trials(tmp_path, capsys):
    pytest.importorskip("optuna")
    import lightning.pytorch as pl
    from test_search import search

    class SignalAfterFit(pl.Callback):  # SIGTERM once stage b's fit has ended
        def on_fit_end(self, trainer, pl_module) -> None:
            if trainer.datamodule is study.pairs[0][1].data and not hasattr(self, "sent"):
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    study = search(tmp_path, 2)
    study.trainer_kwargs["callbacks"] = [SignalAfterFit()]
    with pytest.raises(Preempted) as stopped:
        study.run()
    assert stopped.value.code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lsframe search: stopped by SIGTERM between trials; finished trials are kept; "
        "run the same command to go on"
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    )
    (trial,) = optuna.load_study(study_name="lr_distribution", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE  # the trial it was in finished


def test_a_second_ctrl_c_interrupts_the_step_and_the_command_exits_130_in_one_line(
    tmp_path, capsys
):
    from helpers import trainer
    from lightning.pytorch.callbacks import Callback
    from preemption_helpers import Blobs, TinyClassifier

    from lsframe.__main__ import _exit_on_second_ctrl_c
    from lsframe.preemption import Preemption

    class Twice(Callback):  # the user insists: the second one raises inside the step
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    fit = trainer(max_steps=8, callbacks=[Twice(), Preemption(str(tmp_path))])
    try:
        with pytest.raises(SystemExit) as stopped:
            fit.fit(TinyClassifier(), Blobs())
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stopped.value.code == 1  # Lightning's answer to a KeyboardInterrupt
    assert not (tmp_path / "last.ckpt").exists()  # the step was cut short: nothing to save
    with pytest.raises(SystemExit) as exited:
        _exit_on_second_ctrl_c(stopped.value, ["fit"])
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lsframe fit: interrupted by a second Ctrl-C inside a step; nothing was saved for it: a "
        "rerun resumes from the last checkpoint written before it"
    )
