"""lsframe.run_config: what a resumable run records of its config, and the first difference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jsonargparse import Namespace

from lsframe.errors import ConfigError
from lsframe.run_config import (
    PATHS_KEY,
    defining_config,
    fingerprint,
    first_difference,
    refuse_another_config,
    with_fingerprints,
)
from lsframe.sequence_state import CONFIG_FILE, STATE_FILE, check_same_sequence


def parsed(**trainer) -> Namespace:
    trainer = {"max_steps": 10, "devices": 1, "enable_progress_bar": True, **trainer}
    return Namespace(
        config=["/somewhere/a.yaml"],
        trainer=Namespace(**trainer),
        stages=[Namespace(name="sst2", max_steps=None), Namespace(name="mrpc", max_steps=5)],
        output_dir="runs/x",
    )


def test_where_a_run_executes_is_left_out_and_what_it_computes_kept():
    plain = defining_config(parsed(), leave_out=("output_dir",))
    assert plain == {
        "trainer": {"max_steps": 10},
        "stages": [{"name": "sst2", "max_steps": None}, {"name": "mrpc", "max_steps": 5}],
    }
    moved = defining_config(parsed(devices=4, enable_progress_bar=False), ("output_dir",))
    assert first_difference(plain, moved) is None


def test_the_first_difference_names_its_full_key_with_list_indexes():
    old = defining_config(parsed())
    new = defining_config(parsed())
    new["stages"][1]["max_steps"] = 7
    assert first_difference(old, new) == ("stages[1].max_steps", 5, 7)
    new["stages"].append({"name": "rte"})
    assert first_difference(old, new)[0] == "stages[1].max_steps"  # the first, in order
    new["stages"][1]["max_steps"] = 5
    assert first_difference(old, new)[0] == "stages[2]"  # another number of stages


def test_another_config_is_refused_at_the_given_key():
    old, new = defining_config(parsed()), defining_config(parsed(max_epochs=3))
    with pytest.raises(ConfigError) as refused:
        refuse_another_config(old, new, "the run in x", "do y", where="output_dir")
    assert str(refused.value) == (
        "the run in x was started with another config: trainer.max_epochs was unset, now 3; "
        "continuing would carry its progress into results under the new settings: do y "
        "(output_dir)"
    )
    refuse_another_config(old, defining_config(parsed()), "the run in x", "do y", "output_dir")


def test_functions_and_objects_are_recorded_by_names_that_every_process_shares():
    from functools import partial

    from lsframe.modules.optimizer_setup import default_optimizer

    config = Namespace(model=Namespace(optimizer=default_optimizer, other=partial(max, 1)))
    plain = defining_config(config)
    assert plain["model"]["optimizer"] == "lsframe.modules.optimizer_setup.default_optimizer"
    assert " at 0x" not in plain["model"]["other"]


def data_config(data_dir: Path, output_dir: Path) -> Namespace:
    return Namespace(
        trainer=Namespace(max_steps=10),
        stages=[Namespace(name="sst2", data=Namespace(data_dir=str(data_dir)))],
        output_dir=str(output_dir),
    )


def glue_folder(folder: Path, text: str = "sentence\tlabel\na\t1\n") -> Path:
    (folder / "SST-2").mkdir(parents=True)
    (folder / "SST-2" / "train.tsv").write_text(text)
    return folder


def test_a_sequence_resumes_from_its_data_moved_and_refuses_other_data(tmp_path):
    """A preempted job that resumes on another node finds its data at another path."""
    out = tmp_path / "out"
    out.mkdir()
    first = glue_folder(tmp_path / "node_a" / "glue")
    check_same_sequence(data_config(first, out), write=True)  # no progress: records
    recorded = json.loads((out / CONFIG_FILE).read_text())
    assert list(recorded[PATHS_KEY]) == [str(first)]
    (out / STATE_FILE).write_bytes(b"progress")

    moved = tmp_path / "node_b" / "glue"
    shutil.copytree(first, moved)
    check_same_sequence(data_config(moved, out))  # the same files elsewhere: resumes

    other = glue_folder(tmp_path / "node_c" / "glue", "sentence\tlabel\na\t1\nb\t0\n")
    with pytest.raises(
        ConfigError,
        match=r"data_dir was \"\.\.\..*node_a/glue\", now \"\.\.\..*node_c/glue\" \(other content\)",
    ):
        check_same_sequence(data_config(other, out))
    with pytest.raises(ConfigError, match=r"trainer\.max_steps was 10, now 11"):
        config = data_config(moved, out)
        config.trainer.max_steps = 11
        check_same_sequence(config)


def test_fingerprints_follow_content_not_location_and_leave_bare_words_alone(tmp_path):
    a = glue_folder(tmp_path / "a")
    b = glue_folder(tmp_path / "b")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a / "SST-2" / "train.tsv") == fingerprint(b / "SST-2" / "train.tsv")
    (b / "SST-2" / "dev.tsv").write_text("x")
    assert fingerprint(a) != fingerprint(b)
    recorded = with_fingerprints({"task": "SST-2", "here": ".", "data": str(a), "n": 3})
    assert list(recorded[PATHS_KEY]) == [str(a)]  # not the task name, not the working folder


def test_a_folder_too_large_to_list_quickly_gets_no_fingerprint(tmp_path, monkeypatch):
    import lsframe.run_config as run_config

    folder = glue_folder(tmp_path / "glue")
    (folder / "SST-2" / "dev.tsv").write_text("x")
    monkeypatch.setattr(run_config, "_MAX_FILES", 1)
    assert fingerprint(folder) is None
    assert with_fingerprints({"data": str(folder)})[PATHS_KEY] == {}  # compared as a string


def test_a_file_edited_at_the_same_path_is_another_config_and_a_folder_that_grew_is_not(
    tmp_path,
):
    # the lr_distribution file changed from head: 3 to head: 10 between a kill and the rerun:
    # stage 1 trained under the new value, after stage 0 under the old
    distribution = tmp_path / "dist.yaml"
    distribution.write_text("head: 3\n")
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    (data / "RTE" / "train.tsv").write_text("a\t1\n")
    current = {"model": {"lr_distribution": str(distribution)}, "data_dir": str(data)}
    saved = with_fingerprints(current)
    (data / "QNLI").mkdir()  # another task's folder: the run reads RTE alone
    (data / "QNLI" / "dev.tsv").write_text("b\t0\n")
    refuse_another_config(dict(saved), current, "the run", "remedy", "output_dir")
    distribution.write_text("head: 10\n")
    with pytest.raises(
        ConfigError, match=r"model\.lr_distribution was .*dist\.yaml.*\(other content\)"
    ):
        refuse_another_config(dict(saved), current, "the run", "remedy", "output_dir")


def test_a_list_that_grew_names_its_first_new_item():
    # a sequence extended by a stage showed the two lists, identical once cut to 60 characters
    old = {"stages": [{"name": "sst2"}, {"name": "mrpc"}]}
    new = {"stages": [{"name": "sst2"}, {"name": "mrpc"}, {"name": "rte"}]}
    assert first_difference(old, new) == ("stages[2]", None, {"name": "rte"})
    assert first_difference(new, old) == ("stages[2]", {"name": "rte"}, None)
    with pytest.raises(ConfigError, match=r'stages\[2\] was unset, now \{"name": "rte"\}'):
        refuse_another_config(old, new, "the run", "remedy", "output_dir")
    # a stage inserted first, or one removed in the middle, was named as the last one
    inserted = {"stages": [{"name": "rte"}, {"name": "sst2"}, {"name": "mrpc"}]}
    assert first_difference(old, inserted) == ("stages[0].name", "sst2", "rte")
    assert first_difference(old, {"stages": [{"name": "mrpc"}]}) == (
        "stages[0].name",
        "sst2",
        "mrpc",
    )


def test_the_file_a_section_was_read_from_is_no_setting(tmp_path):
    # `model: model.yaml`: a comment added to model.yaml, or the same run started from another
    # folder, refused the resume as "model.__path__ ... (other content)"
    (tmp_path / "model.yaml").write_text("init_args: {lr: 0.1}\n")
    config = parsed()
    config.model = Namespace(__path__="model.yaml", init_args=Namespace(lr=0.1))
    config.stages[0].data = Namespace(__path__="data.yaml", init_args=Namespace(seed=1))
    recorded = defining_config(config)
    assert recorded["model"] == {"init_args": {"lr": 0.1}}
    assert recorded["stages"][0]["data"] == {"init_args": {"seed": 1}}
    older = with_fingerprints(
        {**recorded, "model": {"__path__": str(tmp_path / "model.yaml"), **recorded["model"]}}
    )
    (tmp_path / "model.yaml").write_text("# a comment\ninit_args: {lr: 0.1}\n")
    refuse_another_config(older, recorded, "the run in x", "do y", "output_dir")
    config.model.init_args.lr = 0.2
    with pytest.raises(ConfigError, match=r"model\.init_args\.lr was 0\.1, now 0\.2"):
        refuse_another_config(older, defining_config(config), "the run in x", "do y", "x")


def test_a_function_is_recorded_with_the_plain_values_it_captured():
    lr = 5e-5
    recorded = defining_config(Namespace(optimizer=lambda p: (p, lr)))["optimizer"]
    assert recorded.endswith("<lambda>(lr=5e-05)")
    # a record of before 2026-12-07 named the function alone: not a difference
    assert first_difference({"o": recorded.split("(")[0]}, {"o": recorded}) is None
    assert first_difference({"o": recorded}, {"o": recorded.replace("5e-05", "0.001")})
