"""A SequenceRunner run again in the same process after a stage failed part-way (a notebook's
rerun of the cell): it goes on as the uninterrupted sequence, or says why it cannot; a finished
one run again logs nothing twice; heads that could not be a task's own are refused as the runner
is built; each task is evaluated on the GPU its stage trained on."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from sequence_helpers import TinyClassifier, runner

from lsframe.errors import ConfigError
from lsframe.sequential import SequenceRunner


class FailsOnce(pl.Callback):
    """Raises once, at optimizer step ``step`` of the ``fit``-th fit: a stage that fails after
    it trained (an out-of-memory error, a bad batch)."""

    def __init__(self, fit: int, step: int = 3) -> None:
        self.fit, self.step, self.fits, self.done = fit, step, 0, False

    def on_train_start(self, trainer, pl_module) -> None:
        self.fits += 1

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.fits == self.fit and trainer.global_step == self.step and not self.done:
            self.done = True
            raise RuntimeError("out of memory")

    def state_dict(self) -> dict:
        return {}


def test_a_rerun_after_a_later_stage_failed_part_way_ends_as_the_sequence_through(tmp_path):
    # the failed stage's half-trained head was kept (self.heads) and trained on: its final
    # weights were 1.18 away from the sequence run through, R[1][0] 0.9375 against 0.875
    torch.manual_seed(0)
    through = runner(tmp_path / "through")
    result = through.run()
    torch.manual_seed(0)
    again = runner(tmp_path / "again", callbacks=[FailsOnce(fit=2)])
    with pytest.raises(RuntimeError, match="out of memory"):
        again.run()
    assert again.run().matrix == result.matrix
    for (name, a), b in zip(
        through.module.state_dict().items(), again.module.state_dict().values()
    ):
        assert torch.equal(a, b), name
    for task in ("a", "b"):
        assert torch.equal(through.heads[task].weight, again.heads[task].weight), task


def test_a_rerun_after_the_first_stage_failed_part_way_is_refused_in_one_line(tmp_path):
    # it trained on from the weights the failed attempt left (0.49 away), nothing saved holding
    # the ones it started from
    torch.manual_seed(0)
    failed = runner(tmp_path, callbacks=[FailsOnce(fit=1)])
    with pytest.raises(RuntimeError, match="out of memory"):
        failed.run()
    message = r"first stage \(a\) stopped after 3 optimizer steps, and its model holds that"
    with pytest.raises(RuntimeError, match=message):
        failed.run()
    assert not (tmp_path / "sequence_state.pt").exists()
    torch.manual_seed(0)
    assert None not in runner(tmp_path).run().matrix[1]  # a new model and runner start afresh


def test_a_separate_head_must_be_a_module_with_parameters():
    # head_attr "body.1" (a Tanh): every task trained one shared classifier while the run
    # reported a head per task
    stages = runner("unused").stages
    with pytest.raises(ConfigError, match="'body.1' is a Tanh with no trainable parameters") as e:
        SequenceRunner(TinyClassifier(), stages, head_attr="body.1")
    assert e.value.where == "head_attr"
    SequenceRunner(TinyClassifier(), stages, head_attr="body.1", heads="shared")  # not copied


def test_a_finished_sequence_run_again_logs_its_summary_once(tmp_path):
    # the rerun added a second events file to summary/: every R/<task> point and the HPARAMS
    # entry showed twice in TensorBoard
    torch.manual_seed(0)
    result = runner(tmp_path).run()
    logged = sorted(p.name for p in (tmp_path / "summary").rglob("*") if p.is_file())
    assert any(name.startswith("events.out.tfevents") for name in logged)
    again = runner(tmp_path).run()
    assert again.matrix == result.matrix
    assert sorted(p.name for p in (tmp_path / "summary").rglob("*") if p.is_file()) == logged
    (tmp_path / "accuracy_matrix.json").write_text("{")  # cut short: the summary logs again
    runner(tmp_path).run()
    files = [p for p in (tmp_path / "summary").rglob("events.out.tfevents*")]
    assert len(files) == 2 and (tmp_path / "accuracy_matrix.json").read_text().startswith("{\n")


def test_each_task_is_evaluated_on_the_gpu_the_stage_trained_on(tmp_path, monkeypatch):
    # devices=1 evaluated on GPU 0 a sequence trained with trainer.devices [1]; Lightning makes
    # the fit's GPU the current one
    built = []

    class Evaluator:
        def __init__(self, **kwargs) -> None:
            built.append(kwargs)

        def validate(self, *args, **kwargs) -> list[dict]:
            return [{"val/acc": 1.0}]

    run = runner(tmp_path)
    monkeypatch.setattr("lsframe.sequential.pl.Trainer", Evaluator)
    run._evaluate(run.stages[0])
    assert built[-1]["devices"] == 1  # the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    run.trainer_kwargs["accelerator"] = "gpu"
    run._evaluate(run.stages[0])
    assert built[-1]["devices"] == [1]


def test_a_stage_started_again_after_it_stopped_logs_to_a_folder_of_its_own(tmp_path, capsys):
    # the rerun wrote its event file beside the stopped attempt's: TensorBoard read one run
    # whose train/loss went 0..4, then 0..15 again
    stopped = runner(tmp_path, callbacks=[FailsOnce(fit=2)])
    with pytest.raises(RuntimeError, match="out of memory"):
        stopped.run()
    stage = tmp_path / "stage_1_b"
    first = sorted(p.name for p in stage.glob("events.out.tfevents.*"))
    assert len(first) == 1
    stopped.run()
    kept = tmp_path / "stage_1_b.stopped-1"
    assert sorted(p.name for p in kept.glob("events.out.tfevents.*")) == first
    assert [p.name not in first for p in stage.glob("events.out.tfevents.*")] == [True]
    assert f"the logs of the attempt that stopped are kept in {kept}" in capsys.readouterr().out
    assert not (tmp_path / "stage_0_a.stopped-1").exists()  # a finished stage's logs stay
