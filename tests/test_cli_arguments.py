"""The command line's linked arguments and trainer options: the task sets the label count, options
a module owns are refused at the trainer's key, bad values are one line, image models take their
classes from the data, the progress bar shows small step sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsframe.__main__ import main
from lsframe.cli import LSFrameCLI
from lsframe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GLUE_MINILM = ROOT / "configs" / "glue" / "minilm.yaml"
STSB = "sentence1\tsentence2\tscore\n" + "".join(
    f"A cat sat number {i}.\tA cat sat {i}.\t{i * 0.8:.1f}\n" for i in range(6)
)


def test_stsb_fits_without_num_labels_the_task_sets_it(minilm, tmp_path, capsys):
    (tmp_path / "glue" / "STS-B").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "glue" / "STS-B" / f"{split}.tsv").write_text(STSB)
    runs = tmp_path / "runs"
    main(
        ["fit", "--config", str(GLUE_MINILM), "--data.init_args.task_name", "stsb"]
        + ["--data.init_args.data_dir", str(tmp_path / "glue"), "--trainer.max_epochs", "1"]
        + ["--trainer.limit_train_batches", "1", "--trainer.num_sanity_val_steps", "0"]
        + ["--data.init_args.max_length", "16", "--trainer.logger.init_args.save_dir", str(runs)]
        + ["--trainer.enable_progress_bar", "false"]
    )
    assert "val/pearson = " in capsys.readouterr().out
    (last,) = runs.rglob("last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["num_labels"] == 1
    assert saved["state_dict"]["model.classifier.weight"].shape[0] == 1


def test_the_rte_labels_reach_the_model_config(minilm, shared_data):
    cli = LSFrameCLI(
        args=["--config", str(GLUE_MINILM), "--data.init_args.data_dir", str(shared_data / "glue")],
        run=False,
    )
    assert cli.model.num_labels == 2
    assert cli.model.model.config.id2label == {0: "entailment", 1: "not_entailment"}


def test_enable_checkpointing_false_keeps_no_checkpoint_instead_of_failing(minilm, shared_data):
    # Lightning refused the flag beside the forced checkpoint section, after the model loaded
    cli = LSFrameCLI(
        args=["--config", str(GLUE_MINILM), "--data.init_args.data_dir", str(shared_data / "glue")]
        + ["--trainer.enable_checkpointing", "false"],
        run=False,
    )
    (checkpoint,) = cli.trainer.checkpoint_callbacks
    assert checkpoint.save_top_k == 0 and checkpoint.save_last is False
    # a checkpoint callback of the user's own beside it is a contradiction, as in Lightning
    with pytest.raises(ConfigError, match=r"trainer.callbacks\[0\] is a ModelCheckpoint"):
        LSFrameCLI(
            args=["--config", str(GLUE_MINILM)]
            + ["--data.init_args.data_dir", str(shared_data / "glue")]
            + ["--trainer.enable_checkpointing", "false"]
            + ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"],
            run=False,
        )


def one_error_line(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` for a bad input: its exit status and its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return exit_info.value.code, err.rstrip("\n")


def glue_fit(shared_data: Path, tmp_path: Path, *options: str) -> list[str]:
    """``fit`` on the GLUE MiniLM config with ``options``, logging under ``tmp_path / "runs"``."""
    argv = ["fit", "--config", str(GLUE_MINILM), "--data.init_args.data_dir"]
    argv += [str(shared_data / "glue"), *options]
    return argv + ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]


def test_a_num_labels_that_contradicts_the_linked_task_is_one_line(shared_data, tmp_path, capsys):
    status, line = one_error_line(
        glue_fit(shared_data, tmp_path, "--model.init_args.num_labels", "3"), capsys
    )
    assert status == 2
    assert line == (
        "lsframe fit: error: num_labels is 3 but the data (GlueDataModule) has 2: set it to 2 "
        "(model.init_args.num_labels)"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("given", ["flag", "yaml"])
@pytest.mark.parametrize(
    "option, value", [("gradient_clip_val", "0.5"), ("accumulate_grad_batches", "4")]
)
def test_trainer_clipping_and_accumulation_name_the_module_option(
    option, value, given, shared_data, tmp_path, capsys
):
    if given == "flag":
        argv = glue_fit(shared_data, tmp_path, f"--trainer.{option}", value)
    else:
        (tmp_path / "trainer.yaml").write_text(f"trainer:\n  {option}: {value}\n")
        argv = glue_fit(shared_data, tmp_path, "--config", str(tmp_path / "trainer.yaml"))
    status, line = one_error_line(argv, capsys)
    assert status == 2
    assert line.startswith(f"lsframe fit: error: trainer.{option} does not apply")
    assert f"set model.init_args.{option}: {value} instead (trainer.{option})" in line
    assert not (tmp_path / "runs").exists()


def test_trainer_clipping_is_refused_by_python_m_lsframe(shared_data, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lsframe"]
        + glue_fit(shared_data, tmp_path, "--trainer.gradient_clip_val", "1.0"),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "lsframe fit: error: trainer.gradient_clip_val does not apply to lsframe's modules, "
        "which step the optimizer themselves (one closure per step): set "
        "model.init_args.gradient_clip_val: 1.0 instead (trainer.gradient_clip_val)"
    ]


def test_a_bad_dtype_is_refused_at_its_key_before_loading(shared_data, tmp_path, capsys):
    status, line = one_error_line(
        glue_fit(shared_data, tmp_path, "--model.init_args.dtype", "float8"), capsys
    )
    assert status == 2
    assert line == (
        "lsframe fit: error: dtype must be one of 'auto', 'float32', 'float16', 'bfloat16' (or "
        "null), got 'float8' (model.init_args.dtype)"
    )


def test_an_image_model_takes_its_classes_and_channels_from_the_data(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("cat", "dog", "owl"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / split / name / "x.png")
    cli = LSFrameCLI(
        args=[
            "--model", "lsframe.modules.ImageClassificationModule",
            "--model.init_args.model_name", "resnet18",
            "--data", "lsframe.data.ImageFolderDataModule",
            "--data.init_args.root", str(tmp_path),
            "--data.init_args.image_size", "8",
            "--trainer.logger", "false",
        ],
        run=False,
    )  # fmt: skip
    assert cli.datamodule.num_classes == 3
    assert cli.model.num_classes == 3 and cli.model.model.get_classifier().out_features == 3
    assert cli.model.in_chans == cli.datamodule.in_chans


def test_the_rich_progress_bar_shows_a_small_step_size_in_significant_digits():
    pytest.importorskip("rich")
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

    from lsframe.loggers import readable_progress_bar

    default, chosen = (
        RichProgressBar(),
        RichProgressBar(theme=RichProgressBarTheme(metrics_format=".2e")),
    )
    for bar, expected in ((default, ".3g"), (chosen, ".2e")):
        trainer = Trainer(callbacks=[bar], logger=False, enable_checkpointing=False)
        readable_progress_bar(trainer)
        assert bar.theme.metrics_format == expected
    assert f"{1.71e-4:{default.theme.metrics_format}}" == "0.000171"
    assert RichProgressBar().theme.metrics_format == ".3f"  # other bars keep Lightning's default


def printed_config(argv: list[str], capsys, from_sys_argv: bool = False) -> dict:
    """The config ``--print_config`` prints for ``argv``, given to LSFrameCLI or, as the
    console script does, in ``sys.argv``."""
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        if from_sys_argv:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(sys, "argv", ["lsframe", *argv, "--print_config"])
                LSFrameCLI(args=None)
        else:
            LSFrameCLI(args=[*argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("from_sys_argv", [False, True], ids=["args", "sys.argv"])
def test_a_null_reaches_an_argument_of_the_optimizer_inside_the_module(from_sys_argv, capsys):
    optimizer = "--model.init_args.optimizer.init_args"
    argv = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    argv += [f"{optimizer}.long_run_steps", "null", f"{optimizer}.max_step_size=~"]
    argv += [f"{optimizer}.max_change", "1.5"]  # the dotted keys after the rewrite still apply
    config = printed_config(argv, capsys, from_sys_argv)["model"]["init_args"]["optimizer"]
    assert config["class_path"] == "lsframe.optim.SlopeTrackingAdam"  # merged, not replaced
    assert config["init_args"]["long_run_steps"] is None
    assert config["init_args"]["max_step_size"] is None
    assert config["init_args"]["max_change"] == 1.5
    assert config["init_args"]["burn_in"] is True  # the other defaults stay


def test_a_nested_null_is_given_as_init_args_and_every_other_argument_is_kept_in_order():
    from lsframe.cli import nested_nulls_as_init_args

    argv = ["fit", "--model.init_args.optimizer.init_args.a", "null", "--trainer.logger.x", "~"]
    argv += ["--model.init_args.lr_scheduler.init_args.b=NULL", "--model.init_args.c", "null"]
    argv += ["--model.init_args.optimizer.init_args.d", "none", "--e.init_args.f.init_args.g"]
    assert nested_nulls_as_init_args(argv) == [
        "fit",
        "--model.init_args.optimizer",
        '{"init_args": {"a": null}}',
        "--trainer.logger.x",  # not a class inside a class
        "~",
        "--model.init_args.lr_scheduler",
        '{"init_args": {"b": null}}',
        "--model.init_args.c",  # one class level down: jsonargparse parses it
        "null",
        "--model.init_args.optimizer.init_args.d",  # not a YAML null: the parser judges it
        "none",
        "--e.init_args.f.init_args.g",  # no value
    ]


@pytest.mark.parametrize(
    "options",
    [
        ["--model.optimizer.long_run_steps", "null"],
        ["--model.init_args.optimizer.long_run_steps=~"],
        ["--model.optimizer.init_args.long_run_steps", "NULL"],
        # the class given on the command line, not in the config file
        ["--model.optimizer", "lsframe.optim.SlopeTrackingAdam"]
        + ["--model.optimizer.long_run_steps", "null"],
    ],
    ids=["shorthand", "no inner init_args", "no outer init_args", "class on the command line"],
)
def test_a_null_in_the_shorthand_without_init_args_reaches_the_optimizer_inside_the_module(
    options, capsys
):
    config_file = "quickstart_adamw.yaml" if len(options) > 2 else "quickstart.yaml"
    argv = ["fit", "--config", str(ROOT / "configs" / config_file), *options]
    config = printed_config(argv, capsys)["model"]["init_args"]["optimizer"]
    assert config["class_path"] == "lsframe.optim.SlopeTrackingAdam"
    assert config["init_args"]["long_run_steps"] is None
    assert config["init_args"]["burn_in"] is True  # the other defaults stay


def test_a_shorthand_null_is_rewritten_only_below_a_class_inside_a_class_given_before_it():
    from lsframe.config_nulls import nested_nulls_as_init_args

    model = {"class_path": "a.Model", "init_args": {"optimizer": {"class_path": "b.Opt"}}}
    argv = ["fit", "--model.optimizer.a", "null", "--config", json.dumps({"model": model})]
    argv += ["--model.optimizer.b", "null", "--model.config.c", "null", "--model.d", "null"]
    argv += ["--data", '{"class_path": "c.Data"}', "--data.e.f", "null"]
    argv += ["--data.e", "lsframe.optim.SGDSLS", "--data.e.g", "null"]
    assert nested_nulls_as_init_args(argv) == [
        "fit",
        "--model.optimizer.a",  # no class given yet: the parser judges it
        "null",
        "--config",
        json.dumps({"model": model}),
        "--model.init_args.optimizer",
        '{"init_args": {"b": null}}',
        "--model.config.c",  # not a class: a dict argument, say
        "null",
        "--model.d",  # one class level down: jsonargparse parses it
        "null",
        "--data",
        '{"class_path": "c.Data"}',
        "--data.e.f",
        "null",
        "--data.e",
        "lsframe.optim.SGDSLS",
        "--data.init_args.e",  # a class given on the command line
        '{"init_args": {"g": null}}',
    ]


@pytest.mark.parametrize(
    "name, expected", [("max_change", "a number"), ("betas", "a list of 2 values")]
)
def test_a_null_for_a_number_or_a_tuple_is_refused_at_its_key_from_the_command_line_or_a_config(
    name, expected, shared_data, tmp_path, capsys
):
    key = f"model.init_args.optimizer.init_args.{name}"
    expected = f"lsframe fit: error: {name} cannot be null: expected {expected} ({key})"
    status, line = one_error_line(glue_fit(shared_data, tmp_path, f"--{key}", "null"), capsys)
    assert (status, line) == (2, expected)
    shorthand = f"--model.optimizer.{name}"
    status, line = one_error_line(glue_fit(shared_data, tmp_path, shorthand, "null"), capsys)
    assert (status, line) == (2, expected)
    piece = tmp_path / "optimizer.yaml"
    piece.write_text(
        "model:\n  init_args:\n    optimizer:\n      class_path: lsframe.optim.SlopeTrackingAdam\n"
        f"      init_args:\n        {name}: null\n"
    )
    status, line = one_error_line(glue_fit(shared_data, tmp_path, "--config", str(piece)), capsys)
    assert (status, line) == (2, expected)
    assert not (tmp_path / "runs").exists()


def test_a_null_is_refused_by_plain_annotations_and_left_to_optional_ones_and_classes():
    from typing import Any, Literal

    from lsframe.config_nulls import null_refused_as

    refused = {
        float: "a number",
        tuple[float, float, float]: "a list of 3 values",
        tuple[int, ...]: "a list",
        dict[str, float]: "a mapping",
        Literal["min", "agree"]: "one of 'min', 'agree'",
        int | str: "an integer or a string",
    }
    assert {hint: null_refused_as(hint) for hint in refused} == refused
    admitted = [float | None, Literal["min", None], Any, None, torch.nn.Module]
    assert [null_refused_as(hint) for hint in admitted] == [None] * len(admitted)


def test_the_step_limits_of_a_config_are_each_fit_s_own_max_steps_or_the_trainer_s():
    from lsframe.config_checks import step_limits

    assert step_limits({"trainer": {"max_steps": 40}}) == [40]
    assert step_limits({"trainer": {"max_steps": -1}}) == []  # Lightning's "no limit"
    stages = [{"name": "a"}, {"name": "b", "max_steps": 3}, {"name": "c", "max_steps": -1}]
    assert step_limits({"trainer": {"max_steps": 40}, "stages": stages}) == [3, 40]
    pairs = [[{"max_steps": 5}, {"max_steps": None}]]  # a search's pair: b takes the trainer's
    assert step_limits({"trainer": {"max_steps": 40}, "pairs": pairs}) == [5, 40]


def test_a_block_longer_than_a_config_built_model_s_positions_is_refused_at_its_key():
    from types import SimpleNamespace

    from lsframe.config_checks import check_module
    from lsframe.errors import ConfigError

    config = {"model_type": "gpt2", "vocab_size": 256, "n_positions": 64}
    with pytest.raises(ConfigError) as error:
        check_module("model", {"config": config}, [("data", SimpleNamespace(block_size=128))])
    assert str(error.value) == (
        "block_size 128 is longer than the model's 64 positions "
        "(model.init_args.config.n_positions) (data.init_args.block_size)"
    )
    # runs past its trained length: not refused (a real rotary model: GPT-2 has no rope_theta)
    rotary = {"model_type": "llama", "vocab_size": 256, "max_position_embeddings": 64,
              "rope_theta": 10000.0}  # fmt: skip
    check_module("model", {"config": rotary}, [("data", SimpleNamespace(block_size=128))])
