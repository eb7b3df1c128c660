"""``validate|test|predict --ckpt_path last|best`` stand for the files of the config's newest fit
(Lightning looked in the new process's empty version folder, warned, and evaluated the model
as the config builds it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lsframe.errors import ConfigError
from lsframe.named_checkpoints import logger_root, resolve_for_evaluation


def section(save_dir: Path | None, ckpt_path: str, dirpath: Path | None = None, **logger) -> dict:
    init = {"save_dir": None if save_dir is None else str(save_dir), "name": "task", **logger}
    return {
        "ckpt_path": ckpt_path,
        "trainer": {"logger": {"class_path": "TensorBoardLogger", "init_args": init}},
        "checkpoint": {"dirpath": None if dirpath is None else str(dirpath)},
    }


def lightning_file(path: Path, best: Path | None = None, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    callbacks = {"BestAndLastCheckpoint{'monitor': 'val/acc'}": {"best_model_path": str(best)}}
    torch.save(
        {"state_dict": {}, "pytorch-lightning_version": "2.6.0", "callbacks": callbacks}, path
    )
    stamp = path.stat().st_mtime - age
    os.utime(path, (stamp, stamp))
    return path


def test_last_is_the_newest_last_checkpoint_of_the_loggers_versions(tmp_path):
    root = tmp_path / "runs" / "task"
    lightning_file(root / "version_0" / "checkpoints" / "last.ckpt", age=100)
    newest = lightning_file(root / "version_1" / "checkpoints" / "last.ckpt")
    (root / "version_2" / "checkpoints").mkdir(parents=True)  # a validate's own, empty
    assert logger_root(section(tmp_path / "runs", "last")) == root
    for subcommand in ("validate", "test", "predict"):
        assert resolve_for_evaluation(section(tmp_path / "runs", "last"), subcommand) == str(newest)
    # fit continues a run itself (ResumeChecks.continue_last_run); a file path is left alone
    assert resolve_for_evaluation(section(tmp_path / "runs", "last"), "fit") is None
    assert resolve_for_evaluation(section(tmp_path / "runs", str(newest)), "validate") is None


def test_best_is_the_file_the_last_checkpoints_model_checkpoint_state_records(tmp_path):
    folder = tmp_path / "ckpts"
    best = lightning_file(folder / "best-step40.ckpt", age=50)
    lightning_file(folder / "last.ckpt", best=best)
    found = resolve_for_evaluation(section(None, "best", dirpath=folder), "test")
    assert found == str(best)
    assert resolve_for_evaluation(section(None, "last", dirpath=folder), "test") == str(
        folder / "last.ckpt"
    )
    # recorded relative to the fit's working directory (save_dir: runs), read from elsewhere
    lightning_file(folder / "last.ckpt", best=Path("runs/task/version_0/checkpoints") / best.name)
    assert resolve_for_evaluation(section(None, "best", dirpath=folder), "test") == str(best)
    best.unlink()
    with pytest.raises(ConfigError, match="records no best checkpoint that still exists"):
        resolve_for_evaluation(section(None, "best", dirpath=folder), "test")


def test_no_fit_written_there_or_no_folder_to_look_in_is_one_line_at_ckpt_path(tmp_path):
    with pytest.raises(ConfigError, match=r"no last checkpoint under .*task/version_\*") as error:
        resolve_for_evaluation(section(tmp_path, "last"), "validate")
    assert error.value.where == "ckpt_path"
    with pytest.raises(ConfigError, match="sets neither"):
        resolve_for_evaluation(section(None, "best"), "predict")
    with pytest.raises(ConfigError, match="sets neither"):  # a fixed version: not searched
        resolve_for_evaluation(section(tmp_path, "last", version=3), "validate")
