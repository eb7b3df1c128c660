"""``validate``/``test``/``predict`` of a checkpoint on another task's data: another number of
classes is refused before the model loads; other class names are said in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lsframe.cli_resume import check_checkpoint_head
from lsframe.errors import ConfigError

MRPC = ("not_equivalent", "equivalent")
RTE = ["entailment", "not_entailment"]


def checkpoint(tmp_path, task: str, label_names: tuple[str, ...]) -> str:
    path = tmp_path / "model.ckpt"
    hparams = {"_class_path": "lsframe.modules.SequenceClassificationModule"}
    hparams.update(num_labels=len(label_names), label_names=label_names)
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": hparams,
            "datamodule_hyper_parameters": {"task_name": task},
        },
        path,
    )
    return str(path)


def data(task: str, label_names: list[str] | None) -> list[tuple[str, SimpleNamespace]]:
    count = None if label_names is None else len(label_names)
    module = SimpleNamespace(hparams={"task_name": task}, label_names=label_names, num_labels=count)
    return [("data", module)]


def test_other_class_names_are_said_in_one_line_and_the_evaluation_runs(tmp_path, capsys):
    path = checkpoint(tmp_path, "mrpc", MRPC)
    check_checkpoint_head(path, data("rte", RTE), "lsframe validate")
    err = capsys.readouterr().err
    assert err == (
        f"lsframe validate: the checkpoint {path} was fine-tuned on mrpc with label_names "
        "['not_equivalent', 'equivalent']; the data (rte) has ['entailment', 'not_entailment']: "
        "class i of the checkpoint is scored as class i of the data\n"
    )


def test_another_number_of_classes_is_refused_at_ckpt_path(tmp_path):
    path = checkpoint(tmp_path, "mnli", ("entailment", "neutral", "contradiction"))
    with pytest.raises(ConfigError, match="num_labels 3; the data \\(rte\\) has 2") as refused:
        check_checkpoint_head(path, data("rte", RTE), "lsframe predict")
    assert refused.value.where == "ckpt_path"


def test_the_same_task_or_data_without_class_names_says_nothing(tmp_path, capsys):
    path = checkpoint(tmp_path, "mrpc", MRPC)
    check_checkpoint_head(path, data("mrpc", list(MRPC)), "lsframe test")
    check_checkpoint_head(path, data("custom", None), "lsframe test")
    check_checkpoint_head("last", data("rte", RTE), "lsframe test")  # resolved elsewhere
    assert capsys.readouterr().err == ""
