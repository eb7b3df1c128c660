"""Preemption: a signal stops a run after the current optimizer step with a resumable checkpoint.

Each run is a real ``python -m lsframe`` process (``preemption_worker.py`` records the exit status
of every rank) on a tiny classifier with dropout, SaLSA (a line search) and a shuffled resumable
loader: 12 batches per epoch, 2 micro-batches per step, 2 epochs, validation after batches 5
and 10 of each epoch. The signal is sent from inside an optimizer step (during the line search),
or from outside as a scheduler would. The resumed run is the same command line, with
``--ckpt_path last``; its final parameters must equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_runs import (
    TESTS,
    assert_bit_equal,
    exits,
    final_parameters,
    fit_args,
    fit_config,
    logged_steps,
    lsframe,
    signal_at,
    stop_lines,
)

RESUME = "resume with the same command and --ckpt_path last"
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def uninterrupted(workdir: Path, devices: int = 1) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    result = lsframe(workdir, fit_args(workdir, devices=devices))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = final_parameters(workdir)
    assert reference["global_step"] == 12 // devices
    reference["logged"] = logged_steps(workdir / "runs" / "tiny" / "version_0", "train/loss")
    return reference


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return uninterrupted(tmp_path_factory.mktemp("uninterrupted"))


# signal, the step it arrives in, extra arguments; step 3: mid-epoch; step 5: a validation
# follows (the stop waits for its end); step 6: the epoch's last batch (the stop waits for
# the epoch-end hooks). The SIGTERM run has Lightning's OnExceptionCheckpoint beside lsframe's.
CASES = {
    "sigterm-mid-epoch": (signal.SIGTERM, 3, True),
    "sigusr1-before-validation": (signal.SIGUSR1, 5, False),
    "sigint-at-epoch-end": (signal.SIGINT, 6, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_signal_stops_after_the_step_and_the_same_command_resumes_bit_exact(
    case, reference, tmp_path
):
    signum, step, on_exception = CASES[case]
    extra = signal_at(step, signum)
    if on_exception:
        extra += [
            "--trainer.callbacks+=lightning.pytorch.callbacks.OnExceptionCheckpoint",
            f"--trainer.callbacks.dirpath={tmp_path / 'on_exception'}",
        ]
    # a job script passes --ckpt_path last from the first run on: nothing to resume yet
    command = fit_args(tmp_path, *extra, "--ckpt_path", "last")
    stopped = lsframe(tmp_path, command)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert exits(tmp_path) == {"exit.rank0": str(128 + signum)}
    checkpoint = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    name = signal.Signals(signum).name
    assert stop_lines(stopped) == [
        f"lsframe fit: stopped by {name} after optimizer step {step}; checkpoint {checkpoint}; "
        f"{RESUME}"
    ]
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == step  # the step that was running finished, no further
    # TensorBoard has the training losses of the uninterrupted run up to the stopped step's
    # last micro-batch (2 a step; Lightning logs micro-batch k at step k - 1), that one included
    stopped_logged = logged_steps(tmp_path / "runs" / "tiny" / "version_0", "train/loss")
    assert stopped_logged == [s for s in reference["logged"] if s <= 2 * step - 1]
    # mid-epoch: the loader's position (2 micro-batches a step), the generators
    position = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    place = {"epoch": 0, "batches": 2 * step, "seed": 3, "batch_size": 8, "examples": 96}
    place |= {"processes": 1, "order_seed": 3}  # one process: the loader's own order
    if case == "sigint-at-epoch-end":  # saved at the epoch's last batch: the epoch is over
        place["epoch_over"] = True
    assert position == [place]
    assert saved["lsframe"]["random_states"]["torch"].dtype == torch.uint8
    assert not (tmp_path / "final.pt").exists()
    if on_exception:  # Lightning's own callback ran beside lsframe's and saved the same state
        extra_checkpoint = torch.load(tmp_path / "on_exception" / "on_exception.ckpt")
        assert extra_checkpoint["global_step"] == step
        # without --ckpt_path Lightning resumed from that file: a fresh fit is not one
        fresh = lsframe(tmp_path, [a for a in command if a not in ("--ckpt_path", "last")])
        assert fresh.returncode == 2, fresh.stderr[-3000:]
        assert "Lightning would resume this fit from" in fresh.stderr.strip().splitlines()[-1]
        assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["version_0"]

    resumed = lsframe(tmp_path, command)  # the same command line
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--ckpt_path last: continuing" in resumed.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["version_0"]
    assert_bit_equal(reference, final_parameters(tmp_path))


@pytest.mark.parametrize("max_steps", [None, 9])  # the last epoch's end, or mid-epoch
def test_a_signal_during_the_last_step_lets_the_run_finish(max_steps, reference, tmp_path):
    # it stopped with 143 and "resume with --ckpt_path last", and the resume trained nothing
    last = 12 if max_steps is None else max_steps  # 6 steps an epoch, 2 epochs
    limit = [] if max_steps is None else ["--trainer.max_steps", str(max_steps)]
    done = lsframe(tmp_path, fit_args(tmp_path, *signal_at(last, signal.SIGTERM), *limit))
    assert done.returncode == 0, done.stderr[-3000:]
    assert stop_lines(done) == [] and "lsframe: fit finished" in done.stdout
    assert final_parameters(tmp_path)["global_step"] == last
    if max_steps is None:
        assert_bit_equal(reference, final_parameters(tmp_path))


def test_sigterm_from_outside_mid_epoch_resumes_bit_exact(reference, tmp_path):
    marks = tmp_path / "marks"
    slow = [
        "--trainer.callbacks+=preemption_helpers.Marker",
        f"--trainer.callbacks.dirpath={marks}",
    ]
    process = lsframe(tmp_path, fit_args(tmp_path, *slow, "--trainer.callbacks.delay=0.25"), False)
    deadline = time.monotonic() + 300
    while not (marks / "step2").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what SLURM, Kubernetes and spot instances send
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if ": stopped by " in x]
    assert line.startswith("lsframe fit: stopped by SIGTERM after optimizer step ")
    step = int(line.split("optimizer step ")[1].split(";")[0])
    checkpoint = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert 2 <= step < 12 and torch.load(checkpoint)["global_step"] == step

    resumed = lsframe(tmp_path, fit_args(tmp_path, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_equal(reference, final_parameters(tmp_path))


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> dict:
    return uninterrupted(tmp_path_factory.mktemp("ddp_uninterrupted"), devices=2)


# per rank: 6 batches an epoch, 3 steps; step 2 is mid-epoch, step 3 the epoch's end
DDP_CASES = {
    "sigterm-to-rank-1-only": (signal.SIGTERM, 2, "[1]"),
    "sigint-to-both": (signal.SIGINT, 3, "[0,1]"),
}


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_under_ddp_every_rank_stops_after_the_same_step_with_one_checkpoint(
    case, ddp_reference, tmp_path
):
    signum, step, ranks = DDP_CASES[case]
    command = fit_args(tmp_path, *signal_at(step, signum, ranks), "--ckpt_path", "last", devices=2)
    stopped = lsframe(tmp_path, command)
    code = str(128 + signum)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert exits(tmp_path) == {"exit.rank0": code, "exit.rank1": code}
    (line,) = stop_lines(stopped)  # rank 0 speaks for both
    assert f"after optimizer step {step};" in line
    directory = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    written = sorted(p.name for p in directory.iterdir())
    assert "last.ckpt" in written and not [n for n in written if ".tmp-" in n]
    assert torch.load(directory / "last.ckpt")["global_step"] == step
    if step == 2:  # mid-epoch: another split of the epoch is refused before anything is written
        run = tmp_path / "runs" / "tiny" / "version_0"
        before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
        one = fit_args(tmp_path, "--ckpt_path", "last")
        seed = [*command, "--seed_everything", "8"]
        for other, text in (
            (one, "over 2 processes, this one over 1"),
            (seed, "seed 7, this one with 8"),
        ):
            refused = lsframe(tmp_path, other)
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert text in refused.stderr.strip().splitlines()[-1]
            assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before

    resumed = lsframe(tmp_path, command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert exits(tmp_path) == {"exit.rank0": "0", "exit.rank1": "0"}
    assert_bit_equal(ddp_reference, final_parameters(tmp_path))


def sequence_config(tmp: Path, output_dir: Path, *callbacks: dict, logger: Any = False) -> Path:
    def blobs(seed: int) -> dict:
        return {"class_path": "preemption_helpers.Blobs", "init_args": {"seed": seed}}

    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": logger,
            "log_every_n_steps": 1,
            "callbacks": list(callbacks),
        },
        "model": fit_config(tmp)["model"],
        "stages": [{"name": "a", "data": blobs(1)}, {"name": "b", "data": blobs(2)}],
        "head_attr": "3",  # the MLP's last layer: one head per task
        "output_dir": str(output_dir),
    }
    path = tmp / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sequential_stops_mid_stage_and_the_same_command_continues_that_stage(tmp_path):
    plain = sequence_config(tmp_path, tmp_path / "plain")
    assert lsframe(tmp_path, ["sequential", "--config", str(plain)]).returncode == 0
    out = tmp_path / "stopped"
    signal_b = {
        "class_path": "preemption_helpers.SignalAt",
        "init_args": {"step": 3, "signum": int(signal.SIGTERM), "fit": 2},  # stage b's fit
    }
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}
    config = sequence_config(tmp_path, out, signal_b, logger=csv)
    command = ["sequential", "--config", str(config)]
    stopped = lsframe(tmp_path, command)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    checkpoint = out / "stage_1_preempted.ckpt"
    assert stop_lines(stopped) == [
        "lsframe sequential: stopped by SIGTERM after optimizer step 3 of stage 1 (b); "
        f"checkpoint {checkpoint}; resume with the same command"
    ]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3

    killed_write = out / ".stage_1.ckpt.tmp-x1y2z3"  # as a SIGKILL during a save leaves it
    killed_write.write_bytes(b"half a checkpoint")
    resumed = lsframe(tmp_path, command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not killed_write.exists()
    assert "resuming after stage 0 (a)" in resumed.stdout
    assert f"resuming stage 1 (b) from {checkpoint}" in resumed.stdout
    assert not checkpoint.exists()  # the stage is done
    # CSVLogger deleted the stage's metrics.csv, and the steps logged before the stop with it
    kept = out / "stage_1_b" / "metrics.1.csv"
    assert f"kept in metrics.1.csv ({kept.parent})" in resumed.stdout
    assert (
        "train/loss" in kept.read_text().splitlines()[0] and len(kept.read_text().splitlines()) > 1
    )
    matrix = [
        json.loads((d / "accuracy_matrix.json").read_text()) for d in (tmp_path / "plain", out)
    ]
    assert matrix[0]["matrix"] == matrix[1]["matrix"]
    final = [torch.load(d / "stage_1.ckpt")["state_dict"] for d in (tmp_path / "plain", out)]
    for name, tensor in final[0].items():
        assert torch.equal(tensor, final[1][name]), name


def test_a_search_stopped_by_sigterm_fails_its_trial_exits_143_and_goes_on(tmp_path):
    pytest.importorskip("optuna")
    import optuna

    def blobs(seed: int) -> dict:  # 100 batches an epoch: a signal finds a fit running
        return {"class_path": "preemption_helpers.Blobs", "init_args": {"seed": seed, "n": 800}}

    search_dir = tmp_path / "search"
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": False,
        },
        "model": {
            "class_path": "preemption_helpers.TinyClassifier",
            "init_args": {
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.05}}
            },
        },
        "pairs": [[{"name": "a", "data": blobs(1)}, {"name": "b", "data": blobs(2)}]],
        "head_attr": "3",
        "search": {"n_trials": 1, "base_lr": 0.05, "num_parts": 3, "output_dir": str(search_dir)},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    process = lsframe(tmp_path, ["search", "--config", str(path)], wait=False)
    deadline = time.monotonic() + 300
    while not (search_dir / "trial_0" / "pair_0").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if ": stopped by " in x]
    assert line.startswith("lsframe search: stopped by SIGTERM"), line
    print(line)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(search_dir / "journal.log"))
    )
    states = {
        t.state.name
        for t in optuna.load_study(study_name="lr_distribution", storage=storage).trials
    }
    assert "RUNNING" not in states and states <= {"FAIL", "COMPLETE"}
    assert not list(search_dir.rglob("*.ckpt"))

    again = lsframe(tmp_path, ["search", "--config", str(path)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (search_dir / "best_distribution.yaml").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_starts_is_one_line_and_its_status(signum, tmp_path):
    # Ctrl-C during the imports: a 75-line traceback, or exit 1 with a "circular import" of
    # torch; SIGTERM: a silent death
    command = [sys.executable, "-m", "lsframe", *fit_args(tmp_path)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    started = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )  # fmt: skip
    time.sleep(1.0)  # imports take longer than this on any machine
    started.send_signal(signum)
    error = started.communicate(timeout=120)[1]
    assert started.returncode == 128 + signum
    assert error.strip().splitlines() == [
        f"lsframe fit: stopped by {signal.Signals(signum).name} outside training, with nothing "
        "of a run to save; rerun the command (--ckpt_path last continues a fit from its last "
        "checkpoint)"
    ]


def test_a_resumed_run_without_checkpointing_brings_the_stop_s_checkpoint_to_its_end(tmp_path):
    # the stop's last.ckpt outlived the finished resume: validate --ckpt_path last evaluated the
    # stopped step's weights, and a requeued job trained the rest of the run again
    command = fit_args(tmp_path, *signal_at(3, signal.SIGTERM), "--ckpt_path", "last",
                       "--trainer.enable_checkpointing", "false")  # fmt: skip
    assert lsframe(tmp_path, command).returncode == 143
    checkpoint = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    resumed = lsframe(tmp_path, command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 12
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.ckpt"]
