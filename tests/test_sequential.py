"""The sequential runner: stage order, the accuracy matrix, heads, EWC across stages, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import small_sequence_config
from sequence_helpers import TRAINER, Task, TinyClassifier, runner

from lsframe.callbacks import EWC
from lsframe.errors import ConfigError
from lsframe.sequential import SequenceResult, SequenceRunner, Stage


def test_matrix_is_filled_stage_by_stage_with_each_tasks_own_head(tmp_path):
    run = runner(tmp_path)
    calls = []
    evaluate = run._evaluate
    run._evaluate = lambda stage: calls.append((len(calls), stage.name)) or evaluate(stage)
    result = run.run()
    assert [name for _, name in calls] == ["a", "a", "b"]  # after stage 0: a; after 1: a, b
    assert result.matrix[0][1] is None and None not in result.matrix[1]
    assert result.matrix[0][0] > 0.9 and result.matrix[1][1] > 0.9
    # R[1][0] used task a's head on the final backbone
    run._use_head("a")
    assert run._evaluate(run.stages[0]) == pytest.approx(result.matrix[1][0])
    assert not torch.equal(run.heads["a"].weight, run.heads["b"].weight)
    saved = json.loads((tmp_path / "accuracy_matrix.json").read_text())
    assert saved["matrix"] == result.matrix and "forgetting" in saved["summaries"]
    assert (tmp_path / "summary").is_dir() and (tmp_path / "stage_1_b").is_dir()


def test_summaries_follow_their_definitions():
    result = SequenceResult(
        ["a", "b", "c"], [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.5, 0.9]], "acc"
    )
    summary = result.summaries()
    assert summary["average_final"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert summary["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert summary["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)


def test_ewc_carries_over_and_leaves_separate_heads_out(tmp_path):
    ewc = EWC(ewc_lambda=10.0)
    runner(tmp_path, callbacks=[ewc]).run()
    assert len(ewc.tasks) == 2
    assert all(not n.startswith("classifier.") for n in ewc.tasks[0]["fisher"])
    assert "body.0.weight" in ewc.tasks[0]["fisher"]


def test_an_interrupted_sequence_resumes_after_the_last_finished_stage(tmp_path):
    ewc = EWC(ewc_lambda=10.0)
    with pytest.raises(RuntimeError, match="interrupted"):
        runner(tmp_path, broken=True, callbacks=[ewc]).run()
    first_row = json.loads(json.dumps(torch.load(tmp_path / "sequence_state.pt")["matrix"]))
    resumed_ewc = EWC(ewc_lambda=10.0)
    resumed = runner(tmp_path, callbacks=[resumed_ewc])
    fits = []
    original = resumed._trainer
    resumed._trainer = lambda stage, i: fits.append(stage.name) or original(stage, i)
    result = resumed.run()
    assert fits == ["b"] and result.matrix[0] == first_row[0]
    assert len(resumed_ewc.tasks) == 2  # task a's Fisher came back from the stage checkpoint


def test_separate_heads_under_lora_are_refused_as_peft_trains_its_own_copy_of_the_head():
    # the swap replaced model.classifier, while peft's modules_to_save copy trained and
    # predicted: every task shared one head and the accuracy matrix was meaningless
    pytest.importorskip("peft")
    from lsframe.modules.peft import apply_lora

    module = TinyClassifier()
    module.model = apply_lora(module.model, {"r": 2, "target_modules": ["body.0"]}, "SEQ_CLS")
    with pytest.raises(ConfigError, match="under model.lora the head that trains") as refused:
        SequenceRunner(module, [Stage("a", Task(0, 1))])
    assert refused.value.where == "heads"
    SequenceRunner(module, [Stage("a", Task(0, 1))], heads="shared")


def test_bad_sequences_are_named(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1)), Stage("a", Task(1, 2))])
    with pytest.raises(ValueError, match="trainer.logger"):
        SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1))], {"logger": object()})
    with pytest.raises(ConfigError) as refused:
        SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1))], head_attr="classifer")
    assert str(refused.value) == (
        "Net has no submodule 'classifer'; its submodules: body, classifier (head_attr)"
    )


def test_sequential_cli_on_the_real_encoder_with_ewc(minilm, shared_data, tmp_path, capsys):
    import yaml

    from lsframe.__main__ import main

    root = Path(__file__).resolve().parents[1] / "configs"
    config = small_sequence_config("minilm_sst2_mrpc", shared_data / "glue")
    config["trainer"].update(limit_train_batches=2)
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    main(
        ["sequential", "--config", str(small), "--config", str(root / "callbacks" / "ewc.yaml")]
        + ["--output_dir", str(out)]
    )
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["sst2", "mrpc"] and saved["matrix"][0][1] is None
    assert all(0.0 <= v <= 1.0 for v in saved["matrix"][1])
    assert (out / "stage_1.ckpt").exists()
    # a rerun resumes (nothing left to train) where only the settings of where it runs change
    main(["sequential", "--config", str(small), "--config", str(root / "callbacks" / "ewc.yaml")]
         + ["--output_dir", str(out), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert json.loads((out / "accuracy_matrix.json").read_text()) == saved
    # the model after stage 1 exports with MRPC's head, as lsframe fit's checkpoints do
    main(["export", str(out / "stage_1.ckpt"), str(tmp_path / "exported")])
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    stage = torch.load(out / "stage_1.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(exported.classifier.weight, stage["model.classifier.weight"])
    # and names the classes of its stage's task, as an exported fit does
    assert exported.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    main(["export", str(out / "stage_0.ckpt"), str(tmp_path / "exported_0")])
    first = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported_0")
    assert first.config.id2label == {0: "negative", 1: "positive"}
    # without the EWC callback it would have written the EWC run's matrix as its own
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["sequential", "--config", str(small), "--output_dir", str(out)])
    line = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and "\n" not in line
    assert line.startswith(
        f"lsframe sequential: error: the sequence in {out} was started with another config: "
        "trainer.callbacks was [{"
    )
    assert line.endswith(
        ", now unset; continuing would carry its progress into results under the new settings: "
        "rerun it with that config to resume, or choose another output_dir (output_dir)"
    )
    assert json.loads((out / "accuracy_matrix.json").read_text()) == saved


def test_sequential_configs_parse(capsys):
    from lsframe.__main__ import main

    for config in sorted(
        (Path(__file__).resolve().parents[1] / "configs" / "sequential").glob("*.yaml")
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["sequential", "--config", str(config), "--print_config"])
        assert exit_info.value.code in (0, None)
        assert "stages:" in capsys.readouterr().out


def test_a_sequence_resumed_between_stages_goes_on_as_the_uninterrupted_one(tmp_path):
    # shuffled batches: the resumed stage must draw the same orders, so the generators' states
    # where the next stage starts come back with the sequence state (the command seeds anew)
    pl.seed_everything(0, verbose=False)
    whole = runner(tmp_path / "whole", shuffle=True)
    whole.run()
    pl.seed_everything(0, verbose=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        runner(tmp_path / "split", broken=True, shuffle=True).run()
    pl.seed_everything(0, verbose=False)
    resumed = runner(tmp_path / "split", shuffle=True)
    resumed.run()
    for (name, a), b in zip(
        whole.module.state_dict().items(), resumed.module.state_dict().values()
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("logger", [None, False], ids=["tensorboard", "no logger"])
def test_lightning_checkpoints_within_a_stage_are_written_when_asked_for(tmp_path, logger):
    stages = [Stage("a", Task(0, seed=1)), Stage("b", Task(1, seed=2), max_epochs=2)]
    trainer = dict(TRAINER, enable_checkpointing=True, logger=logger)
    SequenceRunner(TinyClassifier(), stages, trainer, output_dir=tmp_path).run()
    # one per stage, in the stage's folder (the setting used to be dropped; without a logger
    # they went to the working directory, every stage into one folder)
    assert len(list(tmp_path.glob("stage_0_a/checkpoints/*.ckpt"))) == 1
    assert len(list(tmp_path.glob("stage_1_b/checkpoints/*.ckpt"))) == 1


@pytest.mark.parametrize(
    "changes",
    [{"metric": "loss"}, {"metric": "f1", "model__init_args__metrics": ["acc", "f1"]}],
    ids=["the loss", "one of the model's metrics"],
)
def test_a_metric_the_validation_logs_passes_the_checks(changes, tmp_path):
    from bad_input_helpers import glue, sequence, write

    from lsframe.sequential import build_parser, check_sequence_config

    glue(tmp_path)
    config = write(tmp_path / "c.yaml", sequence(**changes)(tmp_path))
    check_sequence_config(build_parser().parse_args(["--config", str(config)]))


def test_sequential_under_two_process_cpu_ddp_writes_each_file_once(minilm, shared_data, tmp_path):
    # every rank runs the sequence; both wrote stage_0.ckpt and removed each other's temporary
    import subprocess
    import sys

    import yaml

    config = small_sequence_config("minilm_sst2_mrpc", shared_data / "glue")
    config["trainer"].update(limit_train_batches=2, enable_progress_bar=False)
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "lsframe", "sequential", "--config", str(small)]
        + ["--output_dir", str(out), *ddp],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["sst2", "mrpc"] and all(0.0 <= v <= 1.0 for v in saved["matrix"][1])
    assert sorted(p.name for p in out.glob("stage_*.ckpt")) == ["stage_0.ckpt", "stage_1.ckpt"]
    assert not list(out.glob(".*.tmp-*"))


def test_a_sequence_run_from_python_refuses_to_resume_under_other_settings(tmp_path):
    # a notebook rerun with another λ in the same folder resumed the first run's progress and
    # printed its matrix as the new run's result
    with pytest.raises(RuntimeError, match="interrupted"):
        runner(tmp_path, broken=True, callbacks=[EWC(ewc_lambda=10.0)]).run()
    assert (tmp_path / "runner_config.json").is_file()
    with pytest.raises(ConfigError, match=r"callbacks\[0\]\[1\]\.ewc_lambda was 10\.0, now 100\.0"):
        runner(tmp_path, callbacks=[EWC(ewc_lambda=100.0)]).run()
    with pytest.raises(ConfigError, match=r"metric was \"acc\", now \"loss\""):
        runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0)], metric="loss").run()
    result = runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0)]).run()  # the same: resumes
    assert None not in result.matrix[1]
    again = runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0)]).run()  # finished: nothing to run
    assert again.matrix == result.matrix


def test_the_same_callbacks_run_again_after_a_failure_resume_what_they_learned_is_no_setting(
    tmp_path,
):
    # EWC's tasks, ModelCheckpoint's best path and EarlyStopping's wait count change as they
    # train: a notebook rerun of the same runner, or a new runner around the same callbacks,
    # was refused as "another config"
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [EWC(ewc_lambda=10.0), EarlyStopping("train/loss", patience=100), ModelCheckpoint()]
    first = runner(tmp_path, broken=True, callbacks=callbacks)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.run()
    assert callbacks[0].tasks  # stage a's penalty was learned
    first.stages[1].data.broken = False  # the cause fixed
    result = first.run()
    assert None not in result.matrix[1]
    assert first.run().matrix == result.matrix  # finished: nothing to run
    again = runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0), *callbacks[1:]]).run()
    assert again.matrix == result.matrix
    with pytest.raises(ConfigError, match=r"callbacks\[1\]\[1\]\.patience was 100, now 3"):
        changed = [callbacks[0], EarlyStopping("train/loss", patience=3), callbacks[2]]
        runner(tmp_path, callbacks=changed).run()
    callbacks[0].ewc_lambda = 100.0  # a setting changed on the kept object is seen
    with pytest.raises(ConfigError, match=r"callbacks\[0\]\[1\]\.ewc_lambda was 10\.0, now 100"):
        runner(tmp_path, callbacks=callbacks).run()


def test_a_runner_record_of_2026_12_06_with_every_public_attribute_still_resumes(tmp_path):
    # that day's record kept each callback's public plain attributes, EWC's tasks among them
    with pytest.raises(RuntimeError, match="interrupted"):
        runner(tmp_path, broken=True, callbacks=[EWC(ewc_lambda=10.0)]).run()
    path = tmp_path / "runner_config.json"
    record = json.loads(path.read_text())
    record["callbacks"][0][1]["tasks"] = []
    del record["format"]  # that day's record had none
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"ewc_lambda was 10\.0, now 100\.0"):
        runner(tmp_path, callbacks=[EWC(ewc_lambda=100.0)]).run()
    assert None not in runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0)]).run().matrix[1]


def test_a_finished_sequence_run_again_says_it_has_finished(tmp_path, capsys):
    runner(tmp_path).run()
    capsys.readouterr()
    runner(tmp_path).run()
    out = capsys.readouterr().out
    assert f"the sequence in {tmp_path} has finished its stages" in out
    assert "resuming after" not in out


def test_a_stage_s_rich_progress_bar_shows_a_small_step_size_in_significant_digits(tmp_path):
    # only fit's bar had .3g: a stage showed a step size of 5e-5 as 0.000
    pytest.importorskip("rich")
    from lightning.pytorch.callbacks import RichProgressBar

    bar = RichProgressBar()
    trainer = dict(TRAINER, enable_progress_bar=True, callbacks=[bar])
    run = SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1))], trainer, output_dir=tmp_path)
    assert run._trainer(run.stages[0], 0).progress_bar_callback.theme.metrics_format == ".3g"


class SavedTinyClassifier(TinyClassifier):
    def __init__(self, optimizer) -> None:
        super().__init__(optimizer=optimizer)
        self.save_hyperparameters()


def test_settings_in_a_function_s_scope_a_dict_or_a_private_attribute_are_recorded():
    # a notebook rerun with another lr in a lambda, another accumulation schedule or SWA rate
    # resumed the first run's progress
    from lightning.pytorch.callbacks import GradientAccumulationScheduler, StochasticWeightAveraging

    from lsframe.run_config import first_difference
    from lsframe.sequence_state import runner_record

    def record(lr: float, schedule: dict, swa: float) -> dict:
        module = SavedTinyClassifier(optimizer=lambda p: torch.optim.AdamW(p, lr=lr))
        callbacks = [GradientAccumulationScheduler(schedule), StochasticWeightAveraging(swa)]
        return runner_record(module, [Stage("a", Task(0, 1))], {}, callbacks)

    first = record(5e-5, {0: 2}, 0.01)
    assert first_difference(first, record(5e-5, {0: 2}, 0.01)) is None
    assert "lr=5e-05" in first_difference(first, record(1e-3, {0: 2}, 0.01))[1]
    assert first_difference(first, record(5e-5, {0: 8}, 0.01))[0] == "callbacks[0][1].scheduling.0"
    assert first_difference(first, record(5e-5, {0: 2}, 0.5))[0] == "callbacks[1][1].swa_lrs"


@pytest.mark.parametrize("command", ["sequential", "search"])
def test_a_config_without_a_model_section_is_refused_in_one_line(command, tmp_path):
    # the first check after parsing read config.model: an AttributeError traceback
    import importlib

    from bad_input_helpers import glue, write
    from bad_input_helpers import search as search_config
    from bad_input_helpers import sequence as sequence_config

    from lsframe.errors import UsageError

    glue(tmp_path)
    config = (sequence_config() if command == "sequential" else search_config())(tmp_path)
    del config["model"]
    path = write(tmp_path / "c.yaml", config)
    main = importlib.import_module(f"lsframe.{command}").main
    with pytest.raises(UsageError, match="the following arguments are required: model"):
        main(["--config", str(path)])


def test_an_on_exception_checkpoint_is_refused_before_anything_is_built(tmp_path):
    # Lightning resumed every stage's fit from its file: an earlier sequence's, in a new one
    from bad_input_helpers import glue, sequence, write
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    from lsframe.sequential import build_parser, check_sequence_config

    glue(tmp_path)
    config = sequence()(tmp_path)
    saving = {"class_path": "lightning.pytorch.callbacks.OnExceptionCheckpoint"}
    saving["init_args"] = {"dirpath": str(tmp_path / "exc")}
    config["trainer"]["callbacks"] = [saving]
    parsed = build_parser().parse_args(["--config", str(write(tmp_path / "c.yaml", config))])
    with pytest.raises(ConfigError, match="OnExceptionCheckpoint: Lightning would resume") as err:
        check_sequence_config(parsed)
    assert err.value.where == "trainer.callbacks[0]"
    saving = {"callbacks": [OnExceptionCheckpoint(dirpath=tmp_path / "exc")]}
    with pytest.raises(ConfigError, match="the runner keeps its own stage checkpoints"):
        SequenceRunner(TinyClassifier(), [Stage("a", Task(0, 1))], saving)


def test_the_summarys_hparams_name_the_callbacks_settings(tmp_path):
    # runs with and without EWC, or with another lambda, looked the same in the HPARAMS tab
    params = runner(tmp_path, callbacks=[EWC(ewc_lambda=10.0)])._summary_params()
    assert params["EWC.ewc_lambda"] == 10.0 and params["tasks"] == "a -> b"
