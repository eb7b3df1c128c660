"""The ``checkpoint`` section's callback keeps ``last`` at the latest step, and the CLI's closing
lines read a fit that ran no validation since its resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import helpers
import pytest
import torch
from cli_runs import fit_args, fit_config, lsframe

from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.cli import LSFrameCLI
from lsframe.errors import ConfigError


def fit(tmp_path, lr: float, max_steps: int) -> BestAndLastCheckpoint:
    checkpoint = BestAndLastCheckpoint(
        dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True, save_top_k=1
    )
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=lr))
    trainer = helpers.trainer(
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        enable_checkpointing=True,
        callbacks=[checkpoint],
    )
    trainer.fit(module, helpers.loader(n=64), helpers.loader(n=8))
    return checkpoint


def test_last_follows_every_validation_when_the_monitor_stops_improving(tmp_path):
    # lr 0: val/loss never improves after the first validation, at step 2
    checkpoint = fit(tmp_path, lr=0.0, max_steps=6)
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6


def test_last_is_written_at_the_end_of_training_after_the_last_validation(tmp_path):
    checkpoint = fit(tmp_path, lr=0.0, max_steps=7)  # validations at 2, 4, 6; the end at 7
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.ckpt", checkpoint.best_model_path.rsplit("/", 1)[-1]]
    )


class StepCounting(helpers.ValidatedRegression):
    steps = 0

    def on_train_batch_start(self, batch, batch_idx):
        type(self).steps += 1


def monitored_fit(tmp_path, monitor: str) -> int:
    """A fit of 4 steps with a sanity check, monitoring ``monitor``: the steps it trained."""
    StepCounting.steps = 0
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor=monitor, save_last=True)
    trainer = helpers.trainer(
        max_steps=4, num_sanity_val_steps=1, enable_checkpointing=True, callbacks=[checkpoint]
    )
    module = StepCounting(optimizer=partial(torch.optim.SGD, lr=0.01))
    trainer.fit(module, helpers.loader(n=16), helpers.loader(n=8))
    return StepCounting.steps


def test_a_misspelt_validation_monitor_is_refused_before_the_first_step(tmp_path):
    with pytest.raises(ConfigError) as caught:
        monitored_fit(tmp_path, "val/los")
    assert str(caught.value) == (
        "monitor 'val/los' is not a metric the validation logs; it logs val/loss "
        "(checkpoint.monitor)"
    )
    assert StepCounting.steps == 0 and list(tmp_path.iterdir()) == []


def test_a_monitor_that_training_logs_is_left_to_the_first_validation(tmp_path):
    assert monitored_fit(tmp_path, "train/loss") == 4
    assert monitored_fit(tmp_path, "val/loss") == 4  # the validation's own metric


def test_the_closing_lines_of_a_fit_without_a_validation_since_its_resume(capsys):
    checkpoint = SimpleNamespace(
        best_model_path="runs/x/best.ckpt",
        best_model_score=None,  # what a resume into a new directory leaves before a validation
        monitor="val/acc",
        last_model_path="runs/x/last.ckpt",
    )
    trainer = SimpleNamespace(is_global_zero=True, callback_metrics={}, logger=None, callbacks=[])
    LSFrameCLI.after_fit(SimpleNamespace(trainer=trainer, _lsframe_checkpoint=lambda: checkpoint))
    out = capsys.readouterr().out
    assert "  best checkpoint: runs/x/best.ckpt\n" in out
    assert "  last checkpoint: runs/x/last.ckpt\n" in out


SAVED = ["--model", "preemption_helpers.SavedTinyClassifier"]


def one_epoch_with_hyperparameters(tmp_path: Path) -> Path:
    """A one-epoch ``lsframe fit`` of a module that saves its hyperparameters; its last.ckpt."""
    first = lsframe(tmp_path, fit_args(tmp_path, *SAVED, "--trainer.max_epochs", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    return tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


def test_a_resume_reads_its_checkpoints_tensors_once(tmp_path, monkeypatch):
    from lsframe.__main__ import main

    # its settings are read four times before the fit loads it (its model settings twice, its
    # logger versions, its loader places): each read all of its tensors before
    last, load, reads = one_epoch_with_hyperparameters(tmp_path).resolve(), torch.load, []

    def counting(f, *args, **kwargs):
        name = Path(f if isinstance(f, (str, Path)) else getattr(f, "name", "")).resolve()
        reads.append((name == last, bool(kwargs.get("mmap"))))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    main(fit_args(tmp_path, *SAVED, "--ckpt_path", "last", "--trainer.max_epochs", "2"))
    assert reads.count((True, False)) == 1  # the fit's own load
    assert reads.count((True, True)) >= 1


def refusal(last: Path, saved: str, given: str, key: str) -> str:
    """The one line refusing a resume whose config sets ``model.init_args.<key>`` otherwise."""
    return (
        f"lsframe fit: error: the checkpoint {last} was saved with {saved} here, the config sets "
        f"{given}: a resumed fit continues the checkpoint's model and optimizer; leave the "
        "setting as it was, or export the weights (lsframe export) and start a new fit from "
        f"them (model.init_args.{key})"
    )


def test_a_fit_resumed_from_a_checkpoint_file_refuses_a_model_setting_it_would_drop(tmp_path):
    saved, last = SAVED, one_epoch_with_hyperparameters(tmp_path)
    other = [
        *saved,
        "--model.init_args.optimizer",
        "lsframe.optim.SGDSLS",
        "--ckpt_path",
        str(last),
    ]
    refused = lsframe(tmp_path, fit_args(tmp_path, *other))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == refusal(
        last, "'lsframe.optim.SaLSA'", "'lsframe.optim.SGDSLS'", "optimizer.class_path"
    )
    resumed = lsframe(tmp_path, fit_args(tmp_path, *saved, "--ckpt_path", str(last)))  # as it was
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_a_fit_resumed_with_ckpt_path_last_refuses_a_changed_setting_as_a_named_file_does(
    tmp_path,
):
    saved, last = SAVED, one_epoch_with_hyperparameters(tmp_path)
    before = last.read_bytes()
    first_steps = torch.load(last, weights_only=False)["global_step"]
    changed = [*saved, "--model.init_args.optimizer.init_args.c", "0.3", "--ckpt_path", "last"]
    refused = lsframe(tmp_path, fit_args(tmp_path, *changed, "--trainer.max_epochs", "2"))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == refusal(
        last, "0.5", "0.3", "optimizer.init_args.c"
    )
    assert last.read_bytes() == before  # refused before any step: nothing written
    # a setting the checkpoint saved as null (a scheduler added here) is a change too
    scheduler = ["--model.init_args.lr_scheduler", "lsframe.optim.WarmupCosineLR"]
    added = lsframe(tmp_path, fit_args(tmp_path, *saved, *scheduler, "--ckpt_path", "last"))
    assert added.returncode == 2, added.stderr[-3000:]
    assert added.stderr.strip().splitlines()[-1] == refusal(
        last, "None", "'lsframe.optim.WarmupCosineLR'", "lr_scheduler.class_path"
    )
    as_it_was = [*saved, "--ckpt_path", "last", "--trainer.max_epochs", "2"]
    resumed = lsframe(tmp_path, fit_args(tmp_path, *as_it_was))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 2 * first_steps  # epoch 2 ran


def test_validating_at_each_epochs_end_still_keeps_the_best_and_a_current_last(tmp_path):
    checkpoint = BestAndLastCheckpoint(
        dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True, save_top_k=1
    )
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = helpers.trainer(max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, helpers.loader(n=8), helpers.loader(n=8))  # 2 steps an epoch
    assert checkpoint.best_model_score is not None
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    # Lightning 2.6's own on_train_end wrote last.ckpt although it says checkpointing is off
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=0.01))
    trainer = helpers.trainer(fast_dev_run=True, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(module, helpers.loader(n=16), helpers.loader(n=8))
    assert trainer.global_step == 1 and not (tmp_path / "ckpts").exists()


def test_a_sequential_stage_checkpoint_given_to_validate_points_to_export(tmp_path):
    from lsframe.checkpoints import read_lightning_checkpoint
    from lsframe.errors import DataError
    from lsframe.sequence_state import CONFIG_FILE

    stage = tmp_path / "stage_1.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, stage)
    with pytest.raises(DataError, match="not a Lightning checkpoint") as alone:
        read_lightning_checkpoint(stage)
    assert "lsframe export" not in str(alone.value)  # no sequence beside it: any file
    (tmp_path / CONFIG_FILE).write_text("{}")
    with pytest.raises(DataError, match=f"`lsframe export {stage} <output_dir>`"):
        read_lightning_checkpoint(stage)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip archive", "legacy format"])
def test_a_checkpoints_settings_are_read_from_either_format_of_torch_save(tmp_path, zipped):
    from lsframe.checkpoints import read_lightning_checkpoint

    # the settings' read maps a zip archive's tensors; the legacy format cannot be mapped
    path = tmp_path / "old.ckpt"
    saved = {"state_dict": {"w": torch.arange(3.0)}, "pytorch-lightning_version": "2.6"}
    torch.save({**saved, "loops": {"x": 1}}, path, _use_new_zipfile_serialization=zipped)
    read = read_lightning_checkpoint(path)
    assert read["loops"] == {"x": 1} and torch.equal(read["state_dict"]["w"], torch.arange(3.0))


def test_continuing_a_csv_logged_run_keeps_the_metrics_logged_before_it(tmp_path):
    # Lightning's CSVLogger deleted the continued run's metrics.csv; the closing lines offered
    # TensorBoard for a CSV run
    import yaml

    config = fit_config(tmp_path / "runs")
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"},
    }
    (tmp_path / "csv.yaml").write_text(yaml.safe_dump(config))
    first = lsframe(tmp_path, ["fit", "--config", str(tmp_path / "csv.yaml")])
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "tiny" / "version_0"
    before = (run / "metrics.csv").read_text()
    assert f"  logs: {run}" in first.stdout and "TensorBoard" not in first.stdout
    more = ["--trainer.max_epochs", "2", "--ckpt_path", "last"]
    second = lsframe(tmp_path, ["fit", "--config", str(tmp_path / "csv.yaml"), *more])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the metrics logged before the resume are kept in metrics.1.csv" in second.stdout
    assert (run / "metrics.1.csv").read_text() == before
    assert (run / "metrics.csv").is_file()


def test_last_holds_the_weights_swa_averaged_at_the_end_of_training(tmp_path):
    # SWA put its average into the module at its train end without a step: last.ckpt (and an
    # export of it) kept the un-averaged weights, and the average was lost with the process
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    module = helpers.TinyRegression(optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1, annealing_epochs=1)
    helpers.trainer(max_epochs=3, callbacks=[swa, checkpoint], enable_checkpointing=True).fit(
        module, helpers.loader(16, 4)
    )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert saved.keys() == module.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())


def test_periodic_checkpoints_of_a_closure_module_do_not_tell_the_user_to_change_its_step(
    tmp_path, recwarn
):
    # Lightning's 13-line advice to save the state before optimizer.step() in training_step
    from lightning.pytorch.callbacks import ModelCheckpoint

    periodic = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    helpers.trainer(max_steps=2, callbacks=[periodic], enable_checkpointing=True).fit(
        helpers.TinyRegression(), helpers.loader(8, 4)
    )
    assert len(list(tmp_path.glob("*.ckpt"))) == 2
    assert not [w for w in recwarn if "pre-optimization state" in str(w.message)]


@pytest.mark.parametrize("shared", [False, True])
def test_continuing_a_run_of_several_loggers_continues_each(shared, tmp_path):
    # only the first logger continued its version_0; the others began version_1, version_2 ...;
    # then one logging beside it (version_1 of one folder) was moved into the first's version,
    # and a logger without init_args crashed the resume
    import yaml

    config = fit_config(tmp_path / "runs")
    config["trainer"]["max_epochs"] = 1
    names = ("tiny", "tiny") if shared else ("tb", "csv")
    config["trainer"]["logger"] = [
        {"class_path": f"lightning.pytorch.loggers.{kind}Logger",
         "init_args": {"save_dir": str(tmp_path / "runs"), "name": name}}
        for kind, name in zip(("TensorBoard", "CSV"), names)
    ] + [{"class_path": "helpers.NoArgumentsLogger"}]  # fmt: skip
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    first = lsframe(tmp_path, ["fit", "--config", str(tmp_path / "two.yaml")])
    assert first.returncode == 0, first.stderr[-3000:]
    csv = tmp_path / "runs" / names[1] / ("version_1" if shared else "version_0")
    before = (csv / "metrics.csv").read_text()
    more = ["--trainer.max_epochs", "2", "--ckpt_path", "last"]
    second = lsframe(tmp_path, ["fit", "--config", str(tmp_path / "two.yaml"), *more])
    assert second.returncode == 0, second.stderr[-3000:]
    for name in set(names):
        folders = sorted(p.name for p in (tmp_path / "runs" / name).iterdir())
        assert folders == (["version_0", "version_1"] if shared else ["version_0"])
    assert (csv / "metrics.1.csv").read_text() == before and (csv / "metrics.csv").is_file()


def test_a_fit_removes_the_half_written_checkpoints_of_a_killed_run_of_its_folder(tmp_path):
    # a kill during best-step4.ckpt's write left its temporary (a checkpoint's size) for good:
    # the resumed run saved other best steps and never wrote that name again
    stale = tmp_path / ".best-step4.ckpt.tmp-cvr5ua8s"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / ".keep").write_text("not a write of lsframe's")
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    helpers.trainer(max_steps=1, callbacks=[checkpoint], enable_checkpointing=True).fit(
        helpers.TinyRegression(), helpers.loader(8, 4)
    )
    assert not stale.exists() and (tmp_path / ".keep").exists()
    assert (tmp_path / "last.ckpt").is_file()
