"""Real ``python -m lsframe`` runs of the tiny classifier of ``preemption_helpers`` (through
``preemption_worker.py``, which records each rank's exit status), and what the tests read back
from them: the preemption and checkpoint tests share these."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "preemption_worker.py"


def fit_config(save_dir: Path) -> dict:
    return {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "val_check_interval": 5,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {
                    "save_dir": str(save_dir),
                    "name": "tiny",
                    "default_hp_metric": False,
                },
            },
        },
        "model": {
            "class_path": "preemption_helpers.TinyClassifier",
            "init_args": {
                "accumulate_grad_batches": 2,
                "optimizer": {"class_path": "lsframe.optim.SaLSA"},
            },
        },
        "data": {"class_path": "preemption_helpers.Blobs"},
    }


def lsframe(
    workdir: Path, args: list[str], wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m lsframe ARGS`` (through the worker) in ``workdir``, tests on the path."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    command = [sys.executable, str(WORKER), "lsframe", str(workdir), *args]
    options = dict(cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return subprocess.Popen(command, **options)
    return subprocess.run(command, timeout=400, **options)


def fit_args(tmp: Path, *extra: str, devices: int = 1) -> list[str]:
    config = tmp / "tiny.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(fit_config(tmp / "runs")))
    args = ["fit", "--config", str(config), *extra]
    if devices > 1:
        args += ["--trainer.devices", str(devices), "--trainer.strategy", "ddp"]
    return (
        args
        + ["--trainer.callbacks+=preemption_helpers.FinalParameters"]
        + [
            "--trainer.callbacks.path",
            str(tmp / "final.pt"),
        ]
    )


def signal_at(step: int, signum: int, ranks: str = "[0]") -> list[str]:
    return [
        "--trainer.callbacks+=preemption_helpers.SignalAt",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.signum={int(signum)}",
        f"--trainer.callbacks.ranks={ranks}",
    ]


def stop_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if ": stopped by " in line]


def exits(workdir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(workdir.glob("exit.rank*"))}


def final_parameters(workdir: Path) -> dict:
    return torch.load(workdir / "final.pt", weights_only=True)


def assert_bit_equal(reference: dict, resumed: dict) -> None:
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


def logged_steps(log_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return sorted(event.step for event in events.Scalars(tag))
