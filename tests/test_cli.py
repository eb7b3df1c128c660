"""The command line: configs parse, errors name what is wrong, the quickstart runs end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsframe.__main__ import main
from lsframe.cli import LSFrameCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    c
    for c in (ROOT / "configs").rglob("*.yaml")
    if c.parent.name not in ("trainer", "callbacks", "sequential", "search", "optimizers")
)
PIECES = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
CALLBACK_PIECES = sorted((ROOT / "configs" / "callbacks").glob("*.yaml"))
OPTIMIZER_PIECES = sorted((ROOT / "configs" / "optimizers").glob("*.yaml"))


@pytest.mark.parametrize(
    "config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS]
)
def test_every_config_parses(config, capsys):
    # --print_config validates every key and class_path without instantiating (no download)
    with pytest.raises(SystemExit) as exit_info:
        LSFrameCLI(args=["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


@pytest.mark.parametrize("piece", PIECES, ids=[p.stem for p in PIECES])
def test_trainer_pieces_stack_on_an_experiment_config(piece, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LSFrameCLI(
            args=[
                "fit",
                "--config",
                str(ROOT / "configs" / "glue" / "minilm.yaml"),
                "--config",
                str(piece),
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    import yaml

    trainer = yaml.safe_load(printed)["trainer"]
    for key, value in yaml.safe_load(piece.read_text())["trainer"].items():
        assert trainer[key] == value, key


def stacked_on_glue(piece, capsys) -> dict:
    """The config ``--print_config`` prints for ``piece`` stacked on configs/glue/minilm.yaml."""
    import yaml

    with pytest.raises(SystemExit):
        LSFrameCLI(
            args=["fit", "--config", str(ROOT / "configs" / "glue" / "minilm.yaml")]
            + ["--config", str(piece), "--print_config"]
        )
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("piece", CALLBACK_PIECES, ids=[p.stem for p in CALLBACK_PIECES])
def test_callback_pieces_stack_on_an_experiment_config(piece, capsys):
    import yaml

    printed = stacked_on_glue(piece, capsys)["trainer"]["callbacks"]
    wanted = yaml.safe_load(piece.read_text())["trainer"]["callbacks"]
    assert [c["class_path"] for c in printed] == [c["class_path"] for c in wanted]
    for got, want in zip(printed, wanted):
        assert want["init_args"].items() <= got["init_args"].items()


@pytest.mark.parametrize("piece", OPTIMIZER_PIECES, ids=[p.stem for p in OPTIMIZER_PIECES])
def test_optimizer_pieces_stack_and_hold_the_registrys_presets(piece, capsys):
    import yaml

    from lsframe import optim

    model = stacked_on_glue(piece, capsys)["model"]["init_args"]
    name, _, preset = piece.stem.partition("_robust")
    record = optim.info(name)
    assert model["optimizer"]["class_path"] == f"lsframe.optim.{record.cls.__name__}"
    scheduler = model["lr_scheduler"]
    if name == "slope_tracking_adam":  # its defaults were measured with 10 % warmup + cosine
        assert scheduler["class_path"] == "lsframe.optim.WarmupCosineLR"
        assert scheduler["init_args"]["warmup_ratio"] == 0.1
    else:
        assert scheduler is None
    assert (model["param_grouping"] == "parts") == (record.param_grouping == "parts")
    given = yaml.safe_load(piece.read_text())["model"]["init_args"]["optimizer"]
    expected = record.preset("robust") if piece.stem.endswith("_robust") else {}
    assert given.get("init_args", {}) == expected  # the YAML states the registry's preset
    for key, value in expected.items():
        assert model["optimizer"]["init_args"][key] == value


@pytest.mark.parametrize("piece", OPTIMIZER_PIECES, ids=[p.stem for p in OPTIMIZER_PIECES])
def test_an_optimizer_piece_on_another_optimizers_config_runs_with_its_own_defaults(piece, capsys):
    # jsonargparse kept AdamW's lr 5e-5 and weight_decay 0.01 for any class that takes them
    import inspect

    import yaml

    from lsframe import optim

    name = piece.stem.partition("_robust")[0]
    record = optim.info(name)
    others = [p for p in OPTIMIZER_PIECES if optim.info(p.stem.partition("_robust")[0]) != record]
    for base in ("quickstart_adamw.yaml", str(others[0])):
        with pytest.raises(SystemExit):
            LSFrameCLI(
                args=["fit", "--config", str(ROOT / "configs" / base), "--config", str(piece)]
                + ["--print_config"]
            )
        model = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        defaults = {
            key: parameter.default
            for key, parameter in inspect.signature(record.cls).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        expected = {**defaults, **(record.preset("robust") if "_robust" in piece.stem else {})}
        printed = model["optimizer"]["init_args"]
        assert {k: printed[k] for k in ("lr", "weight_decay")} == {
            k: expected[k] for k in ("lr", "weight_decay")
        }, base
        assert (model["param_grouping"] == "parts") == (record.param_grouping == "parts"), base
    # a setting after the piece still wins
    with pytest.raises(SystemExit):
        LSFrameCLI(
            args=["fit", "--config", str(ROOT / "configs" / "quickstart_adamw.yaml")]
            + ["--config", str(piece), "--model.init_args.optimizer.init_args.lr", "0.25"]
            + ["--print_config"]
        )
    assert (
        yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optimizer"]["init_args"][
            "lr"
        ]
        == 0.25
    )


@pytest.mark.parametrize(
    ("piece", "lr"),
    [
        ("model: {init_args: {optimizer: lsframe.optim.AdamSLS}}", 0.1),  # a bare class
        ("model: {init_args: {optimizer: {class_path: AdamSLS}}}", 0.1),  # a short name
        ("model: {optimizer: {class_path: lsframe.optim.AdamSLS}}", 0.1),  # no init_args level
        # the same class spelled otherwise is no change: the earlier lr stays
        ("model: {init_args: {optimizer: {class_path: torch.optim.adamw.AdamW}}}", 5e-5),
    ],
)
def test_every_spelling_of_a_class_change_in_a_later_file_starts_it_afresh(
    piece, lr, tmp_path, capsys
):
    import yaml

    path = tmp_path / "piece.yaml"
    path.write_text(piece + "\n")
    with pytest.raises(SystemExit):
        LSFrameCLI(
            args=["fit", "--config", str(ROOT / "configs" / "quickstart_adamw.yaml")]
            + ["--config", str(path), "--print_config"]
        )
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optimizer"]
    assert printed["init_args"]["lr"] == lr


def test_sequential_and_search_stack_their_config_files_the_same_way(capsys):
    import yaml

    from lsframe.__main__ import main

    piece = str(ROOT / "configs" / "optimizers" / "adamsls_robust.yaml")
    for command, config in (
        ("sequential", "sequential/minilm_sst2_mrpc.yaml"),
        ("search", "search/minilm_sst2_mrpc.yaml"),
    ):
        with pytest.raises(SystemExit):
            main([command, "--config", str(ROOT / "configs" / config)] + ["--config", piece]
                 + ["--print_config"])  # fmt: skip
        printed = yaml.safe_load(capsys.readouterr().out)
        optimizer = printed["model"]["init_args"]["optimizer"]
        assert optimizer["class_path"] == "lsframe.optim.AdamSLS", command
        assert optimizer["init_args"]["lr"] == 0.1, command


def test_help_lists_the_subcommands_and_fit_options():
    out = subprocess.run(
        [sys.executable, "-m", "lsframe", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for subcommand in ("fit", "validate", "test", "predict", "sequential", "search", "export"):
        assert subcommand in out
    fit = subprocess.run(
        [sys.executable, "-m", "lsframe", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--model" in fit and "--checkpoint.monitor" in fit


def test_help_names_the_command_a_user_types_not_the_module_file():
    for argv in (["--help"], ["fit", "--help"], ["validate", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "lsframe", *argv], capture_output=True, text=True, check=True
        ).stdout
        usage = next(line for line in out.splitlines() if line.startswith("usage:"))
        assert usage.startswith("usage: lsframe "), (argv, usage)
        assert "__main__" not in out, argv


def test_unknown_optimizer_class_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LSFrameCLI(
            args=[
                "fit",
                "--config",
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model.init_args.optimizer",
                "torch.optim.NoSuchOptimizer",
                "--print_config",
            ]
        )
    assert exit_info.value.code != 0
    assert "torch.optim.NoSuchOptimizer" in capsys.readouterr().err


def test_unknown_config_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "configs" / "quickstart.yaml").read_text()
        + "\n# typo below\n"
        + "trainer_typo: 1\n"
    )
    with pytest.raises(SystemExit):
        LSFrameCLI(args=["fit", "--config", str(bad), "--print_config"])
    assert "trainer_typo" in capsys.readouterr().err


@pytest.mark.parametrize(
    "reference, fragment",
    [
        ("/no/such/model/dir", "/no/such/model/dir"),
        ("package:no_such_package_xyz/model", "no_such_package_xyz"),
    ],
)
def test_missing_model_path_is_named(reference, fragment):
    from lsframe.modules import SequenceClassificationModule

    with pytest.raises(FileNotFoundError, match=fragment):
        SequenceClassificationModule(model_name_or_path=reference)


def scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_adamw_quickstart_logs_the_cosine_learning_rate(minilm, amazon_reviews, tmp_path):
    runs = tmp_path / "runs"
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "quickstart_adamw.yaml"),
            "--trainer.max_steps",
            "4",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--data.init_args.train_limit",
            "64",
            "--data.init_args.max_length",
            "32",
        ]
    )
    logged = scalars(runs / "quickstart_adamw" / "version_0")
    assert logged["train/closure_evals"] == [1.0] * 4
    # the logged lr is the one each step used: cosine over 4 steps (warmup int(0.1 * 4) = 0)
    cosine = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert logged["step_size/decay"] == pytest.approx([5e-5 * m for m in cosine], rel=1e-5)


def metric_table(out: str) -> list[str]:
    """The lines of a validate command's metric table (its progress bar's times vary)."""
    return [line for line in out.split("Validate metric")[1].splitlines() if "it/s" not in line]


def test_quickstart_runs_on_a_slice_logs_and_exports(minilm, amazon_reviews, tmp_path, capsys):
    runs = tmp_path / "runs"
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--trainer.max_steps",
            "4",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.val_check_interval",
            "4",
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--data.init_args.train_limit",
            "64",
            "--data.init_args.val_limit",
            "32",
            "--data.init_args.max_length",
            "48",
        ]
    )
    out = capsys.readouterr().out
    assert "val/acc = " in out and "best checkpoint" in out
    log_dir = runs / "quickstart" / "version_0"
    logged = scalars(log_dir)
    assert len(logged["train/loss"]) == 4
    assert {"step_size/decay", "step_size/no_decay", "val/acc", "val/f1"} <= set(logged)
    # SlopeTrackingAdam: no trial forward, and η from 1e-4, which may not grow in the burn-in
    assert logged["train/closure_evals"] == [1.0] * 4
    assert logged["step_size/decay"][0] == pytest.approx(1e-4)
    assert all(0 < eta <= 1e-4 * (1 + 1e-6) for eta in logged["step_size/decay"])
    best = sorted((log_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (log_dir / "checkpoints" / "last.ckpt").is_file()

    # validate from the best checkpoint, then export it as a Hugging Face model
    def validate(ckpt_path: str) -> None:
        main(
            ["validate", "--config", str(ROOT / "configs" / "quickstart.yaml")]
            + ["--trainer.logger.init_args.save_dir", str(runs)]
            + ["--data.init_args.val_limit", "32", "--data.init_args.max_length", "48"]
            + ["--ckpt_path", ckpt_path]
        )

    validate(str(best[0]))
    evaluated = capsys.readouterr().out
    # a new process's `last`/`best` are the fit's files (Lightning looked in the new version's
    # empty folder, warned, and validated the model with an untrained head)
    for name, expected in (("best", best[0]), ("last", log_dir / "checkpoints" / "last.ckpt")):
        validate(name)
        out = capsys.readouterr().out
        assert f"lsframe validate: --ckpt_path {name}: {expected}" in out
        if name == "best":  # the same file as named above: the same metrics
            assert metric_table(out) == metric_table(evaluated)
    for subcommand in ("test", "predict"):
        main(
            [
                subcommand,
                "--config",
                str(ROOT / "configs" / "quickstart.yaml"),
                "--trainer.logger.init_args.save_dir",
                str(runs),
                "--data.init_args.val_limit",
                "16",
                "--data.init_args.max_length",
                "48",
                "--ckpt_path",
                str(best[0]),
            ]
        )
    out = capsys.readouterr().out
    assert "test/acc" in out
    predictions = sorted(runs.glob("quickstart/version_*/predictions.jsonl"))
    assert len(predictions) == 1 and f"16 predictions written to {predictions[0]}" in out
    lines = [json.loads(line) for line in predictions[0].read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(16))
    assert all(line["label_name"] == ("other", "great")[line["label"]] for line in lines)
    assert all(abs(sum(line["probabilities"]) - 1) < 1e-5 for line in lines)
    main(["export", str(best[0]), str(tmp_path / "hf")])
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lsframe.cli import load_module

    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    module = load_module(str(best[0])).eval()
    batch = tokenizer(["great coffee, would buy again"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, module.model(**batch).logits)
