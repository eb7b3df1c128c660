"""``lsframe validate``, ``test`` and ``predict``: without ``--ckpt_path`` a model whose head
loading initialised is named in one line, and Lightning's warnings about a fit's callbacks and
checkpoint folder, which concern a continued fit, stay out of an evaluation."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import helpers
import pytest
import yaml

from lsframe.__main__ import main

NOTE = "no --ckpt_path:"


RTE = "index\tsentence1\tsentence2\tlabel\n" + "".join(
    f"{i}\ta cat sat on the mat\ta cat sat\t{('entailment', 'not_entailment')[i % 2]}\n"
    for i in range(8)
)


@pytest.fixture
def tiny_glue(tmp_path: Path):
    """``run(subcommand, model_dir, *args)``: an ``lsframe`` command on eight written RTE
    examples with a tiny BERT from ``model_dir``, logging to ``tmp_path/runs``."""
    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    for split in ("train", "dev"):
        (glue / "RTE" / f"{split}.tsv").write_text(RTE, encoding="utf-8")

    def run(subcommand: str, model_dir: Path, *args: str) -> None:
        main(
            [
                subcommand,
                "--model",
                "lsframe.modules.SequenceClassificationModule",
                "--model.model_name_or_path",
                str(model_dir),
                "--data",
                "lsframe.data.GlueDataModule",
                "--data.task_name",
                "rte",
                "--data.data_dir",
                str(glue),
                "--data.max_length",
                "32",
                "--trainer.accelerator",
                "cpu",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "runs"),
                *args,
            ]
        )

    return run


def test_an_evaluation_without_ckpt_path_of_a_new_head_says_so_in_one_line(
    tiny_glue, tmp_path, capsys
):
    # validate/test/predict of a hub encoder without --ckpt_path scored its random head, and
    # only transformers' load report, among the start-up output, hinted at it
    encoder = helpers.tiny_bert_dir(tmp_path / "encoder")
    for subcommand in ("validate", "test", "predict"):
        tiny_glue(subcommand, encoder)
        lines = [line for line in capsys.readouterr().err.splitlines() if NOTE in line]
        assert len(lines) == 1 and lines[0].startswith(f"lsframe {subcommand}: {NOTE}")
        assert str(encoder) in lines[0] and "classifier.weight" in lines[0]

    # a model saved with its head is evaluated as loaded without a word
    headed = tmp_path / "headed"
    shutil.copytree(encoder, headed)
    helpers.tiny_bert(vocab=64, positions=32).save_pretrained(headed)
    tiny_glue("validate", headed)
    assert NOTE not in capsys.readouterr().err

    # neither a fit nor an evaluation of its checkpoint
    tiny_glue("fit", encoder, "--trainer.max_steps", "1")
    assert NOTE not in capsys.readouterr().err
    tiny_glue("validate", encoder, "--ckpt_path", "last")
    assert NOTE not in capsys.readouterr().err


def test_evaluating_a_checkpoint_shows_no_warning_about_continuing_its_fit(tiny_glue, tmp_path):
    # validate/test/predict of a checkpoint written with callbacks (DPS, EWC, valley) asked to
    # add them, and every one said the checkpoint folder had changed: both concern a resume
    encoder = helpers.tiny_bert_dir(tmp_path / "encoder")
    callbacks = tmp_path / "callbacks.yaml"
    valley = {
        "class_path": "lsframe.callbacks.ValleyExploration",
        "init_args": {"alpha": 0.5, "beta": 0.01},
    }
    callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [valley]}}))
    tiny_glue("fit", encoder, "--config", str(callbacks), "--trainer.max_steps", "1")
    filters = list(warnings.filters)
    for subcommand in ("validate", "test", "predict"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tiny_glue(subcommand, encoder, "--ckpt_path", "last")
        said = [str(w.message) for w in caught]
        assert not [m for m in said if "callbacks used to create the checkpoint" in m], said
        assert not [m for m in said if "The dirpath has changed" in m], said
    assert warnings.filters == filters  # a fit in the same process still gets them
