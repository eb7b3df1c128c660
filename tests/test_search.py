"""The learning-rate distribution search: trials, resume from storage, best distribution, errors."""

from __future__ import annotations

import json
import os
import signal

import lightning.pytorch as pl
import pytest
import yaml
from search_helpers import make, search, two_tasks
from sequence_helpers import Task, TinyClassifier

from lsframe.errors import ConfigError
from lsframe.search import DistributionSearch, SearchOptions, part_groups_by_depth
from lsframe.sequence_checks import higher_is_better
from lsframe.sequential import Stage

pytest.importorskip("optuna")


def test_a_three_trial_search_completes_resumes_and_writes_the_best_distribution(tmp_path, capsys):
    calls = []
    best = search(tmp_path, 3, calls, lr_low=1e-4, lr_high=0.1).run()
    assert calls == [0, 1, 2]
    values = [t["value"] for t in json.loads((tmp_path / "trials.json").read_text())]
    written_at = tmp_path / "best_distribution.yaml"
    assert f"(objective {max(values):.4f}): {written_at}" in capsys.readouterr().out
    search(tmp_path, 3, [], lr_low=1e-4, lr_high=0.1).run()  # finished: says so, runs nothing
    assert "the study has its 3 trials (search.n_trials: 3)" in capsys.readouterr().out
    assert sorted(best) == ["head", "layers_0"]  # Net's two parts: body, classifier
    trials = json.loads((tmp_path / "trials.json").read_text())
    values = [t["value"] for t in trials]
    written = yaml.safe_load((tmp_path / "best_distribution.yaml").read_text())
    assert written == best == trials[values.index(max(values))]["distribution"]
    assert all(0.0 <= v <= 2.0 for v in values)
    assert (tmp_path / "search.png").exists()
    assert (tmp_path / "trial_0" / "pair_0" / "accuracy_matrix.json").exists()
    assert not list(tmp_path.rglob("*.ckpt"))  # a finished trial keeps no model weights
    # the study is in the journal: asking for 4 trials runs exactly one more
    more = []
    search(tmp_path, 4, more, lr_low=1e-4, lr_high=0.1).run()
    assert more == [3]
    # a new process (a fresh sampler with the same seed) does not repeat the first trial's draw
    drawn = [
        tuple(t["distribution"].values())
        for t in json.loads((tmp_path / "trials.json").read_text())
    ]
    assert len(drawn) == 4 and len(set(drawn)) == 4
    # the written distribution trains a module (a fit config's lr_distribution)
    module = TinyClassifier(
        param_grouping="parts", lr_distribution=str(tmp_path / "best_distribution.yaml")
    )
    assert module.lr_distribution


class Interrupt(pl.Callback):
    """Interrupts the second stage of the second trial: Ctrl-C, or a SIGTERM (``kill``)."""

    def __init__(self, how: str) -> None:
        self.how, self.fired, self.fits = how, False, 0

    def on_train_start(self, trainer, *args) -> None:
        self.fits += trainer.datamodule is self.target

    def on_train_batch_start(self, trainer, *args) -> None:
        if not self.fired and trainer.datamodule is self.target and self.fits == 2:
            self.fired = True
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the search's handler raises here
            else:
                raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_trial_is_failed_and_cleaned_then_the_search_goes_on(tmp_path, how, caplog):
    import optuna

    interrupt = Interrupt(how)
    study = search(tmp_path, 2)
    interrupt.target = study.pairs[0][1].data
    study.trainer_kwargs["callbacks"] = [interrupt]
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="optuna"):
        study.run()
    # the command's one line says it; Optuna's report and its traceback would come on top
    assert [r for r in caplog.records if "Trial 0 failed" in r.getMessage()] == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert not list(tmp_path.rglob("*.ckpt"))  # stage A's checkpoint is gone
    assert not (tmp_path / "trial_1").exists()  # the failed trial's partial logs too
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    )
    finished, failed = optuna.load_study(study_name="lr_distribution", storage=storage).trials
    assert failed.state == optuna.trial.TrialState.FAIL  # not RUNNING for ever
    # the outputs are written after every finished trial: a search cut short has them
    assert [t["number"] for t in json.loads((tmp_path / "trials.json").read_text())] == [0]
    best = yaml.safe_load((tmp_path / "best_distribution.yaml").read_text())
    assert best == finished.user_attrs["distribution"]
    calls = []
    search(tmp_path, 2, calls).run()  # a rerun does not count the failed trial
    assert calls == [2]
    states = [t["state"] for t in json.loads((tmp_path / "trials.json").read_text())]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_study_goes_on_only_under_the_config_it_was_started_with(tmp_path):
    first = {"search": {"lr_low": 1e-4, "lr_high": 0.1}, "pairs": ["a", "b"]}
    search(tmp_path, 1, defining=first, lr_low=1e-4, lr_high=0.1).run()
    more = []
    search(tmp_path, 2, more, defining=first, lr_low=1e-4, lr_high=0.1).run()
    assert more == [1]
    other = {"search": {"lr_low": 1e-3, "lr_high": 0.1}, "pairs": ["a", "b"]}
    with pytest.raises(ConfigError) as refused:
        search(tmp_path, 3, defining=other, lr_low=1e-3, lr_high=0.1).run()
    assert refused.value.where == "search.study_name"
    assert refused.value.message.startswith(
        f"the study 'lr_distribution' in {tmp_path / 'journal.log'} was started with another "
        "config: search.lr_low was 0.0001, now 0.001;"
    )
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 2  # nothing more ran


def test_tied_groups_share_one_learning_rate_and_each_trial_logs_to_tensorboard(tmp_path):
    study = search(tmp_path, 1, logger=True, groups=1)
    best = study.run()
    assert len(set(best.values())) == 1
    for stage in ("stage_0_a", "stage_1_b"):
        assert list((tmp_path / "trial_0" / "pair_0" / stage).glob("events.out.tfevents.*"))
    assert part_groups_by_depth(list("abcdefghij"), 3) == [
        list("abcd"),
        list("efg"),
        list("hij"),
    ]


def test_more_search_groups_than_the_model_has_parts_names_the_parts_and_num_parts():
    with pytest.raises(ConfigError) as refused:
        part_groups_by_depth(["embeddings", "layers_0", "head"], 5, num_parts=10)
    assert refused.value.where == "search.groups"
    assert str(refused.value) == (
        "search.groups must be in [1, 3], got 5: the model splits into 3 parts at num_parts 10 "
        "(embeddings, layers_0, head) (search.groups)"
    )


def test_bad_search_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="pairs"):
        DistributionSearch(make, [[Stage("a", Task(0, 1))]], {}, SearchOptions())
    with pytest.raises(ValueError, match="lr_low < lr_high"):
        search(tmp_path, 1, lr_low=1e-3, lr_high=1e-4)
    with pytest.raises(ValueError, match=r"search.groups must be in \[1, 2\]"):
        search(tmp_path, 1, groups=5)
    # the optimizer's lr is read from the module, also when the config leaves it to a default
    pairs = two_tasks()
    with pytest.raises(ValueError, match="base_lr is 0.01 but the model's optimizer lr is 0.05"):
        DistributionSearch(make, pairs, {}, SearchOptions(base_lr=0.01))
    # a line search has no lr to match: its multipliers scale the searched step size
    from lsframe.optim import SaLSA

    def line_search(distribution):
        return TinyClassifier(
            param_grouping="parts", lr_distribution=distribution or None, optimizer=SaLSA
        )

    assert DistributionSearch(line_search, pairs, {}, SearchOptions(base_lr=0.01)).parts


@pytest.mark.parametrize(
    ("class_path", "init_args", "refused"),
    [
        ("torch.optim.AdamW", {"lr": 5e-5}, True),
        ("torch.optim.AdamW", {"lr": 1e-4}, False),
        ("torch.optim.SGD", {"lr": 5e-5, "momentum": 0.9}, True),
        ("lsframe.optim.SaLSA", {}, False),  # a line search: base_lr is only a unit
        ("lsframe.optim.PLASLS", {}, False),  # built on a part, as the config check builds it
    ],
)
def test_base_lr_is_checked_against_the_configured_optimizer_before_the_model_loads(
    class_path, init_args, refused
):
    from lsframe.search import check_base_lr

    model = {"init_args": {"optimizer": {"class_path": class_path, "init_args": init_args}}}
    if refused:
        with pytest.raises(ConfigError, match="base_lr is 0.0001 but .* lr is 5e-05") as error:
            check_base_lr(model, SearchOptions(base_lr=1e-4))
        assert error.value.where == "search.base_lr"
    else:
        check_base_lr(model, SearchOptions(base_lr=1e-4))
    check_base_lr({"init_args": {}}, SearchOptions(base_lr=1e-4))  # the default: on the module


def test_search_cli_on_the_real_encoder(minilm, shared_data, tmp_path):
    from pathlib import Path

    from lsframe.search import main

    root = Path(__file__).resolve().parents[1] / "configs" / "search"
    config = yaml.safe_load((root / "minilm_sst2_mrpc.yaml").read_text())
    config["pairs"] = config["pairs"][:1]
    for stage in config["pairs"][0]:
        stage["data"]["init_args"].update(
            data_dir=str(shared_data / "glue"), train_subsample=16, val_limit=16, max_length=32
        )
    config["trainer"]["limit_train_batches"] = 2
    config["search"].update(n_trials=2, output_dir=str(tmp_path))
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    best = main(["--config", str(small)])
    assert len(best) == 8  # MiniLM-L6: embeddings, six layers, head
    assert len(set(best.values())) == 4  # four tied groups
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 2
    assert len(list(tmp_path.glob("trial_*/pair_0/stage_*/events.out.tfevents.*"))) == 4
    # the CLI records the study's config: other bounds are refused before any trial
    with pytest.raises(ConfigError, match="search.lr_high was 0.001, now 0.002"):
        main(["--config", str(small), "--search.n_trials", "3", "--search.lr_high", "2e-3"])
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 2


@pytest.mark.parametrize("pair", [None, "pair_sst2_mrpc", "pair_mrpc_sst2"])
def test_search_configs_parse(capsys, pair):
    from pathlib import Path

    from lsframe.__main__ import main

    root = Path(__file__).resolve().parents[1] / "configs" / "search"
    argv = ["search", "--config", str(root / "minilm_sst2_mrpc.yaml")]
    if pair is not None:  # a one-pair study stacked on the two-pair config
        argv += ["--config", str(root / f"{pair}.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert len(printed["pairs"]) == (2 if pair is None else 1)
    if pair is not None:
        first, second = pair.split("_")[1:]
        assert [stage["init_args"]["name"] for stage in printed["pairs"][0]] == [first, second]
        assert printed["search"]["output_dir"] == f"runs/search/{pair}"


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("nosuchdialect://host/db", "does not open"),  # the URL's dialect has no driver
        ("sqlite:////nowhere-at-all/s.db", "does not exist"),
    ],
)
def test_a_storage_that_does_not_open_is_refused_at_its_key(storage, message, tmp_path):
    from lsframe.search_study import check_storage, open_study

    options = SearchOptions(output_dir=str(tmp_path), storage=storage)
    with pytest.raises(ConfigError, match=message) as error:
        check_storage(storage)
        open_study(options, pairs=1, defining=None)
    assert error.value.where == "search.storage"


def test_a_search_on_the_loss_minimizes_it(tmp_path):
    # metric: loss was maximized: the trial with the higher validation loss was the best
    from lsframe.search_study import open_study

    for metric, direction in (("acc", "MAXIMIZE"), ("loss", "MINIMIZE")):
        options = SearchOptions(output_dir=str(tmp_path / metric))
        study = open_study(options, pairs=1, defining=None, maximize=higher_is_better(metric))
        assert study.direction.name == direction
        searched = search(tmp_path / f"search_{metric}", 1, runner_kwargs={"metric": metric})
        assert searched._study().direction.name == direction  # the search asks for it
    # a loss study created before (maximized) is not continued the other way without a word
    old = SearchOptions(output_dir=str(tmp_path / "acc"))
    with pytest.raises(ConfigError, match="created to maximize its objective .* minimize it"):
        open_study(old, pairs=1, defining=None, maximize=False)
    # a study recorded with metric acc, reopened with loss: the changed setting is named
    recorded = SearchOptions(output_dir=str(tmp_path / "recorded"))
    open_study(recorded, pairs=1, defining={"metric": "acc"}, maximize=True)
    with pytest.raises(ConfigError, match='metric was "acc", now "loss"'):
        open_study(recorded, pairs=1, defining={"metric": "loss"}, maximize=False)


def test_sequence_summaries_of_a_loss_say_a_task_got_worse_as_forgetting():
    from lsframe.sequential import SequenceResult

    # SST-2's loss rose from 0.6934 to 0.7017 after MRPC: forgetting +0.0083, transfer -0.0083
    result = SequenceResult(["sst2", "mrpc"], [[0.6934, None], [0.7017, 0.6]], "loss")
    summaries = result.summaries()
    assert summaries["forgetting"] == pytest.approx(0.0083)
    assert summaries["backward_transfer"] == pytest.approx(-0.0083)
    accuracy = SequenceResult(["sst2", "mrpc"], [[0.9, None], [0.8, 0.7]], "acc").summaries()
    assert accuracy["forgetting"] == pytest.approx(0.1)
    assert accuracy["backward_transfer"] == pytest.approx(-0.1)


def test_a_second_study_in_an_output_dir_holding_another_s_results_is_refused(tmp_path):
    # the remedy "choose another search.study_name" kept the output_dir: the second study
    # replaced the first's best_distribution.yaml and trials.json, and removed its trial folders
    search(tmp_path, 1).run()
    best = (tmp_path / "best_distribution.yaml").read_bytes()
    for legacy in (False, True):  # a folder of before the mark: its journal tells
        if legacy:
            (tmp_path / "study_name.txt").unlink()
        with pytest.raises(ConfigError) as refused:
            search(tmp_path, 1, study_name="second").run()
        assert refused.value.where == "search.study_name"
        assert refused.value.message == (
            f"search.output_dir {tmp_path} holds the results of the study 'lr_distribution'; "
            "another study there would replace them: give this one its own search.output_dir"
        )
    assert (tmp_path / "best_distribution.yaml").read_bytes() == best
    search(tmp_path, 2).run()  # the same study goes on
    search(tmp_path / "second", 1, study_name="second").run()


def test_the_plotted_best_so_far_of_a_loss_search_is_the_lowest():
    # search.png drew the running maximum of the losses, climbing to the worst trial
    from lsframe.search_plots import best_so_far

    values = [0.6959, 0.7086, 1.1892, 0.7157, 0.61]
    assert best_so_far(values, "loss") == [0.6959, 0.6959, 0.6959, 0.6959, 0.61]
    assert best_so_far(values, "acc") == [0.6959, 0.7086, 1.1892, 1.1892, 1.1892]


def test_searches_started_together_all_claim_a_fresh_output_dir(tmp_path):
    # each deleted the others' temporary mark as stale: one of four processes crashed
    import threading

    from lsframe.search_study import STUDY_MARK, claim_output_dir

    for round_ in range(10):
        folder = tmp_path / str(round_)
        folder.mkdir()
        start, failures = threading.Barrier(8), []

        def claim(folder=folder, start=start, failures=failures) -> None:
            start.wait()
            try:
                claim_output_dir(folder, "study", None, None)
            except Exception as error:  # noqa: BLE001 - the test reports it
                failures.append(error)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert [p.name for p in folder.iterdir()] == [STUDY_MARK]  # no temporary left
        assert (folder / STUDY_MARK).read_text() == "study\n"
    with pytest.raises(ConfigError, match="holds the results of the study 'study'"):
        claim_output_dir(tmp_path / "0", "other", None, None)


def test_the_study_mark_has_the_mode_of_the_search_s_other_files(tmp_path):
    # mkstemp made it 0600: in a group-shared output_dir every other member's search crashed
    import stat

    from lsframe.checkpoint_io import file_mode
    from lsframe.search_study import STUDY_MARK, claim_output_dir

    claim_output_dir(tmp_path, "study", None, None)
    assert stat.S_IMODE(os.stat(tmp_path / STUDY_MARK).st_mode) == file_mode()


def test_an_output_dir_that_cannot_be_written_is_refused_at_its_key(tmp_path, monkeypatch):
    # a read-only output_dir (or parent) gave a PermissionError traceback from the claim (the
    # test may run as root, whom no mode stops: os.access says what a user would meet)
    from pathlib import Path

    from lsframe.sequence_checks import check_output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(ConfigError, match=f"{locked} is not writable; give a directory"):
        check_output_dir(locked, "search.output_dir")
    with pytest.raises(ConfigError, match=f"is not writable \\(its parent {locked} is not\\)"):
        check_output_dir(locked / "new" / "deeper", "search.output_dir")
    check_output_dir(tmp_path / "fresh", "search.output_dir")
