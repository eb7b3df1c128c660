"""The checks of a sequence's config before anything is built: each bad stage is refused at
its own key (``stages[i].<key>``), in one line."""

from __future__ import annotations

import pytest
from bad_input_helpers import glue, sequence, write
from sequence_helpers import Task, TinyClassifier

from lsframe.errors import ConfigError
from lsframe.sequential import SequenceRunner, Stage, build_parser, check_sequence_config


def checked(config: dict, tmp_path) -> None:
    """``config`` written to a file, parsed as ``lsframe sequential`` parses it, and checked."""
    path = write(tmp_path / "c.yaml", config)
    check_sequence_config(build_parser().parse_args(["--config", str(path)]))


@pytest.mark.parametrize(
    ("name", "unit"), [("max_steps", "optimizer steps"), ("max_epochs", "epochs")]
)
def test_a_stage_that_would_train_nothing_is_refused_at_its_key(name, unit, minilm, tmp_path):
    # a stage of 0 steps ran, was reported in the matrix as trained, and EWC skipped its task
    glue(tmp_path)
    config = sequence()(tmp_path)
    config["stages"][1][name] = 0
    with pytest.raises(ConfigError) as refused:
        checked(config, tmp_path)
    assert str(refused.value) == (
        f"expected -1 (no limit) or a number of {unit} >= 1, got 0 (stages[1].{name})"
    )
    config["stages"][1][name] = 1
    checked(config, tmp_path)
    with pytest.raises(ConfigError) as refused:  # from Python too, before anything runs
        SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1), **{name: 0})])
    assert refused.value.where == f"stages[0].{name}"


def test_a_trainer_section_of_no_epoch_is_refused_as_one_of_no_step_is(minilm, tmp_path):
    glue(tmp_path)
    config = sequence(trainer__max_epochs=0, trainer__max_steps=-1)(tmp_path)
    with pytest.raises(ConfigError) as refused:
        checked(config, tmp_path)
    assert str(refused.value) == (
        "expected -1 (no limit) or a number of epochs >= 1, got 0 (trainer.max_epochs)"
    )


@pytest.mark.parametrize("missing", [["data"], ["name"], ["name", "data"]])
def test_a_stage_without_its_task_name_or_data_is_refused_at_that_stage(missing, tmp_path):
    # was "the following arguments are required: data (stages)": which of the stages?
    from lsframe.errors import UsageError
    from lsframe.sequential import main

    glue(tmp_path)
    config = sequence()(tmp_path)
    config["stages"].append(dict(config["stages"][1], name="rte"))
    for key in missing:
        del config["stages"][1][key]
    path = write(tmp_path / "c.yaml", config)
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text[:2] == "- "]
    with pytest.raises(UsageError) as refused:
        main(["--config", str(path)])
    assert str(refused.value) == (
        f"the following arguments are required: {', '.join(missing)} "
        f"(stages[1].{missing[0]} in {path}:{starts[1]})"
    )
