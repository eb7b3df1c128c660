"""Observability: TensorBoard's HPARAMS tab gets the final and best validation metrics, the step
size shows in the progress bar, ``sequential`` and ``search`` take any Lightning logger, and the
search plots Optuna's parameter importances."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import TinyRegression, loader
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from preemption_helpers import Blobs
from preemption_helpers import TinyClassifier as BlobClassifier
from test_sequential import TRAINER, Task, TinyClassifier

from lsframe.callbacks import HParamsMetrics
from lsframe.errors import ConfigError
from lsframe.optim import SaLSA
from lsframe.sequential import SequenceRunner, Stage

CSV = "lightning.pytorch.loggers.CSVLogger"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


class SavedClassifier(BlobClassifier):
    """The blob classifier with saved hyperparameters (what HPARAMS lists as parameters)."""

    def __init__(self, note: float = 0.25, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters("note")


def event_data(log_dir: Path) -> tuple[dict[str, list[float]], dict]:
    """The scalars of a TensorBoard run directory, and its hparams plugin data by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(log_dir))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    try:
        contents = events.PluginTagToContent("hparams")
    except KeyError:  # no HPARAMS entry in this run
        contents = {}
    plugin = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in contents.items()}
    return scalars, plugin


def session_starts(log_dir: Path) -> int:
    """How many HPARAMS entries (session start infos) the run directory's event files hold."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    count = 0
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary"):
                count += sum(v.tag == "_hparams_/session_start_info" for v in event.summary.value)
    return count


def metric_tags(plugin: dict) -> set[str]:
    return {info.name.tag for info in plugin["_hparams_/experiment"].experiment.metric_infos}


def read_csv(path: Path) -> dict[str, list[float]]:
    """Column → the non-empty values of a CSVLogger's metrics.csv."""
    columns: dict[str, list[float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value != "":
                    columns.setdefault(key, []).append(float(value))
    return columns


# ------------------------------------------------------------------------------------ HPARAMS
def test_hparams_tab_carries_the_final_and_best_validation_metrics(tmp_path):
    # Lightning's default default_hp_metric=True: the placeholder -1 is replaced by the best score
    logger = TensorBoardLogger(tmp_path, name="", version="run")
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="val/acc", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=logger,
        callbacks=[checkpoint, HParamsMetrics(), HParamsMetrics()],  # the second does nothing
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    module = SavedClassifier(note=0.5, optimizer=partial(torch.optim.SGD, lr=0.05))
    trainer.fit(module, datamodule=Blobs())
    scalars, plugin = event_data(Path(logger.log_dir))
    final = float(trainer.callback_metrics["val/acc"])
    assert len(scalars["val/acc"]) == 3  # one validation per epoch
    assert scalars["final/val/acc"] == [pytest.approx(final)] == [scalars["val/acc"][-1]]
    assert scalars["best/val/acc"] == [pytest.approx(float(checkpoint.best_model_score))]
    assert scalars["best/val/acc"][0] == pytest.approx(max(scalars["val/acc"]))
    assert scalars["hp_metric"] == scalars["best/val/acc"]  # no -1 placeholder at the start
    assert metric_tags(plugin) == {"final/val/acc", "best/val/acc", "hp_metric"}
    params = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert params["note"].number_value == 0.5
    assert session_starts(Path(logger.log_dir)) == 1
    assert logger._default_hp_metric  # the logger's own setting is back after the fit


def test_a_resumed_fit_without_a_validation_keeps_the_last_ones_final_metrics(tmp_path):
    # a preempted run resumed for its last steps, with no validation left, logged no final/val
    # in HPARAMS and printed none: TensorBoard's comparison on final/val/acc lost the run
    def fit(max_epochs: int, limit_val_batches: float, version: str, **kwargs) -> pl.Trainer:
        logger = TensorBoardLogger(tmp_path, name="", version=version)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=max_epochs,
            limit_val_batches=limit_val_batches,
            logger=logger,
            callbacks=[HParamsMetrics()],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        module = SavedClassifier(optimizer=partial(torch.optim.SGD, lr=0.05))
        trainer.fit(module, datamodule=Blobs(), **kwargs)
        return trainer

    first = fit(2, 1.0, "first")
    first.save_checkpoint(tmp_path / "two_epochs.ckpt")
    validated = float(first.callback_metrics["val/acc"])
    fit(3, 0, "resumed", ckpt_path=tmp_path / "two_epochs.ckpt")  # no validation in epoch 3
    scalars, plugin = event_data(tmp_path / "resumed")
    assert "val/acc" not in scalars and scalars["final/val/acc"] == [pytest.approx(validated)]
    assert "final/val/acc" in metric_tags(plugin)


def test_final_and_best_metrics_share_the_other_scalars_x_axis_under_accumulation(tmp_path):
    # with accumulate_grad_batches 2 the final/ and best/ points sat at the optimizer step
    # count (half the batch axis every other scalar uses): mid-run, before the validation
    # they report
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="run", default_hp_metric=False)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt", monitor="val/acc", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=logger,
        callbacks=[checkpoint, HParamsMetrics()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    module = BlobClassifier(optimizer=partial(torch.optim.SGD, lr=0.05), accumulate_grad_batches=2)
    trainer.fit(module, datamodule=Blobs())
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert trainer.global_step < steps["train/loss"][-1]  # the axis counts batches, not steps
    last = max(max(s) for tag, s in steps.items() if not tag.startswith(("final/", "best/")))
    assert steps["val/acc"][-1] == last  # the last validation ends the fit
    # the fit's end: the point after its last batch's scalars
    assert steps["best/val/acc"] == steps["final/val/acc"] == [last + 1]


def test_every_evaluation_sets_last_metrics_are_final_metrics():
    # MNLI's val_mismatched/ was printed at the fit's end but left out of HPARAMS
    trainer = pl.Trainer(accelerator="cpu", logger=False)
    trainer.callback_metrics.update(
        {"val/acc": torch.tensor(0.5), "val_mismatched/acc": torch.tensor(0.25)}
    )
    trainer.callback_metrics["train/loss"] = torch.tensor(1.0)
    metrics = HParamsMetrics.metrics(trainer)
    assert metrics == {"final/val/acc": 0.5, "final/val_mismatched/acc": 0.25}


def blob_fit_config(tmp_path: Path) -> Path:
    """A 2-epoch ``lsframe fit`` config of the blob classifier, logging to ``tmp_path/runs``."""
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": TENSORBOARD,
                "init_args": {"save_dir": str(tmp_path / "runs")},
            },
        },
        "model": {"class_path": "preemption_helpers.TinyClassifier"},
        "data": {"class_path": "preemption_helpers.Blobs"},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_cli_fills_hparams_by_default(tmp_path, capsys):
    from lsframe.__main__ import main

    runs, path = tmp_path / "runs", blob_fit_config(tmp_path)
    main(["fit", "--config", str(path)])
    scalars, plugin = event_data(runs / "lsframe" / "version_0")
    assert {"final/val/acc", "best/val/acc"} <= metric_tags(plugin)
    assert scalars["final/val/acc"] == [scalars["val/acc"][-1]]
    assert scalars["best/val/acc"] == [max(scalars["val/acc"])]
    printed = capsys.readouterr().out
    assert f"val/acc = {scalars['final/val/acc'][0]:.4f}" in printed


def test_a_resumed_fit_cli_without_a_validation_prints_the_last_ones_metrics(tmp_path, capsys):
    from lsframe.__main__ import main

    path = blob_fit_config(tmp_path)
    main(["fit", "--config", str(path)])
    first = capsys.readouterr().out
    validated = next(line for line in first.splitlines() if "val/acc =" in line)
    more = ["--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0"]
    main(["fit", "--config", str(path), *more, "--ckpt_path", "last"])
    printed = capsys.readouterr().out.split("lsframe: fit finished")[1]
    assert "  the last validation, at step 24:" in printed and validated in printed


# ------------------------------------------------------------------------------- progress bar
def test_the_accepted_step_size_of_the_first_group_shows_in_the_progress_bar():
    module = TinyRegression(param_grouping="decay", optimizer=SaLSA)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    trainer.fit(module, loader())
    group = trainer.optimizers[0].param_groups[0]
    shown = trainer.progress_bar_callback.get_metrics(trainer, module)
    assert shown["step_size/decay"] == pytest.approx(group["lr"])
    assert group["lr"] != 1.0  # the searched step size, not SaLSA's starting value
    assert trainer.progress_bar_metrics["step_size/decay"] == pytest.approx(group["lr"])
    # the other groups are logged, not shown
    assert "step_size/no_decay" in trainer.logged_metrics
    assert "step_size/no_decay" not in trainer.progress_bar_metrics


# --------------------------------------------------------------------- any logger: sequential
def two_stage_runner(tmp_path: Path, logger) -> SequenceRunner:
    stages = [Stage("a", Task(0, seed=1)), Stage("b", Task(1, seed=2))]
    trainer = dict(TRAINER, max_epochs=2, log_every_n_steps=1, logger=logger)
    return SequenceRunner(TinyClassifier(), stages, trainer, output_dir=tmp_path)


def test_sequential_writes_to_a_csv_logger_beside_tensorboard(tmp_path):
    logger = [
        {"class_path": CSV, "init_args": {"save_dir": "ignored", "flush_logs_every_n_steps": 1}},
        {"class_path": TENSORBOARD, "init_args": {"save_dir": "ignored"}},
    ]
    result = two_stage_runner(tmp_path, logger).run()
    assert not (tmp_path / "ignored").exists()  # the sequence's logs live in output_dir
    stage = read_csv(tmp_path / "stage_1_b" / "metrics.csv")
    assert len(stage["train/loss"]) == 8  # 2 epochs x 4 batches
    assert len(stage["step_size/decay"]) == 8
    summary = read_csv(tmp_path / "summary" / "metrics.csv")
    assert summary["R/a"] == pytest.approx([result.matrix[0][0], result.matrix[1][0]])
    assert summary["R/b"] == pytest.approx([result.matrix[1][1]])
    assert summary["sequence/forgetting"] == pytest.approx([result.summaries()["forgetting"]])
    hparams = yaml.safe_load((tmp_path / "summary" / "hparams.yaml").read_text())
    assert hparams["tasks"] == "a -> b" and hparams["heads"] == "separate"
    # TensorBoard's summary: HPARAMS against the final row and the summaries
    scalars, plugin = event_data(tmp_path / "summary")
    assert {"R/a", "R/b", "sequence/forgetting"} <= metric_tags(plugin)
    assert scalars["sequence/forgetting"] == [pytest.approx(result.summaries()["forgetting"])]


def test_sequential_cli_takes_the_logger_from_its_yaml(tmp_path):
    from lsframe.__main__ import main

    config = {
        "output_dir": str(tmp_path / "out"),
        "heads": "shared",
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": "."}},
        },
        "model": {"class_path": "preemption_helpers.TinyClassifier"},
        "stages": [
            {"name": "one", "data": {"class_path": "preemption_helpers.Blobs"}},
            {
                "name": "two",
                "data": {"class_path": "preemption_helpers.Blobs", "init_args": {"seed": 4}},
            },
        ],
    }
    path = tmp_path / "sequence.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["sequential", "--config", str(path)])
    out = tmp_path / "out"
    matrix = json.loads((out / "accuracy_matrix.json").read_text())["matrix"]
    assert read_csv(out / "stage_0_one" / "metrics.csv")["train/loss"]
    assert read_csv(out / "summary" / "metrics.csv")["R/two"] == [matrix[1][1]]
    assert not list(out.rglob("events.out.tfevents.*"))  # CSV only: no TensorBoard files


def test_a_logger_instance_is_refused_with_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"builds its own.*\(trainer\.logger\)"):
        two_stage_runner(tmp_path, CSVLogger(tmp_path))
    with pytest.raises(ConfigError, match=r"not a Lightning Logger \(trainer\.logger\[0\]\)"):
        two_stage_runner(tmp_path, [{"class_path": "torch.nn.Linear"}])


# ------------------------------------------------------------------------------------ search
def small_search(tmp_path: Path, n_trials: int, logger, **options):
    from lsframe.search import DistributionSearch, SearchOptions

    def make(distribution):
        return TinyClassifier(param_grouping="parts", lr_distribution=distribution or None)

    pairs = [[Stage("a", Task(0, 1)), Stage("b", Task(1, 2))]]
    trainer = dict(TRAINER, max_epochs=1, log_every_n_steps=1, logger=logger)
    opts = SearchOptions(n_trials=n_trials, output_dir=str(tmp_path), base_lr=0.05, **options)
    return DistributionSearch(make, pairs, trainer, opts)


def test_search_logs_to_csv_and_plots_the_parameter_importances(tmp_path):
    pytest.importorskip("optuna")
    pytest.importorskip("matplotlib")
    logger = {"class_path": CSV, "init_args": {"save_dir": "."}}
    small_search(tmp_path, 1, logger, lr_low=1e-3, lr_high=0.1).run()
    plot = tmp_path / "param_importances.png"
    assert not plot.exists()  # one complete trial: no importances yet
    small_search(tmp_path, 3, logger, lr_low=1e-3, lr_high=0.1).run()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "search.png").exists()
    for trial in range(3):
        pair = tmp_path / f"trial_{trial}" / "pair_0"
        assert read_csv(pair / "stage_1_b" / "metrics.csv")["train/loss"]
        assert "sequence/forgetting" in read_csv(pair / "summary" / "metrics.csv")
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_search_with_one_learning_rate_writes_no_importance_plot(tmp_path):
    pytest.importorskip("optuna")
    small_search(tmp_path, 2, False, groups=1).run()
    assert (tmp_path / "trials.json").exists()
    assert not (tmp_path / "param_importances.png").exists()
