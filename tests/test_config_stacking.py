"""Stacked ``--config`` files: a later file that changes a class starts its arguments afresh;
the same class named otherwise, or a name that resolves to no class, changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lsframe.cli import LSFrameCLI
from lsframe.config_stacking import with_fresh_class_arguments

ROOT = Path(__file__).resolve().parents[1]


def printed_data(tmp_path: Path, capsys, *pieces: str) -> dict:
    files = []
    for i, piece in enumerate(pieces):
        files += ["--config", str(tmp_path / f"piece{i}.yaml")]
        (tmp_path / f"piece{i}.yaml").write_text(piece + "\n")
    with pytest.raises(SystemExit):
        LSFrameCLI(
            args=["fit", "--config", str(ROOT / "configs" / "glue" / "minilm.yaml"), *files]
            + ["--print_config"]
        )
    return yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("GlueDataModule", "lsframe.data.GlueDataModule"),
        ("lsframe.data.GlueDataModule", "GlueDataModule"),
    ],
    ids=["short then full", "full then short"],
)
def test_a_data_class_named_short_in_one_file_and_in_full_in_the_next_keeps_its_task(
    first, second, tmp_path, capsys
):
    # the short name was looked up among the optimizers only: the full name in the next file
    # read as another class and put task_name and data_dir back to their defaults
    data = printed_data(
        tmp_path,
        capsys,
        f"data: {{class_path: {first}, init_args: {{task_name: mrpc, data_dir: glue_copy}}}}",
        f"data: {{class_path: {second}, init_args: {{max_length: 64}}}}",
    )
    assert (data["task_name"], data["data_dir"], data["max_length"]) == ("mrpc", "glue_copy", 64)


def test_a_class_name_that_resolves_to_nothing_is_no_change_and_keeps_the_arguments():
    files = {
        "a.yaml": {"data": {"class_path": "MyOwnData", "init_args": {"task_name": "rte"}}},
        "b.yaml": {"data": {"class_path": "lsframe.data.GlueDataModule"}},
    }
    argv = ["--config", "a.yaml", "--config", "b.yaml"]
    assert with_fresh_class_arguments(argv, files.get) == argv  # nothing inserted after b.yaml


def test_a_change_of_class_resets_what_its_base_class_takes_through_kwargs():
    # ImageFolderDataModule takes batch_size through **kwargs (ImageDataModule's, default 128):
    # read from its own signature alone, GlueDataModule's 4 went on into the image data
    files = {
        "a.yaml": {"data": {"class_path": "GlueDataModule", "init_args": {"batch_size": 4}}},
        "b.yaml": {"data": {"class_path": "lsframe.data.ImageFolderDataModule"}},
    }
    argv = with_fresh_class_arguments(["--config", "a.yaml", "--config", "b.yaml"], files.get)
    assert argv[:4] == ["--config", "a.yaml", "--config", "b.yaml"]
    assert json.loads(argv[5]) == {"data": {"init_args": {"batch_size": 128}}}
