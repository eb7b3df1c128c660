"""What a search does when a trial or a file goes wrong: a diverging trial is failed and the
search goes on, a torn journal is refused before it is written to, outputs are written whole,
and studies of different seeds draw apart."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
from search_helpers import search
from sequence_helpers import TRAINER, Task, TinyClassifier

from lsframe.errors import ConfigError
from lsframe.search import DistributionSearch, SearchOptions
from lsframe.sequential import Stage

optuna = pytest.importorskip("optuna")


class PoisonFits(pl.Callback):
    """Makes the inputs of the first batch of the fits numbered in ``fits`` (from 1) NaN: that
    fit's loss is not finite (each trial runs two fits, stage a then stage b)."""

    def __init__(self, fits: set[int] | None) -> None:
        self.fits, self.started = fits, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and (self.fits is None or self.started in self.fits):
            batch[0][0, 0] = float("nan")


def poisoned_search(
    tmp_path, n_trials: int, poison: set[int] | None, calls: list
) -> DistributionSearch:
    pairs = [[Stage("a", Task(0, 1)), Stage("b", Task(1, 2))]]
    trainer = dict(TRAINER, max_epochs=1, logger=False, callbacks=[PoisonFits(poison)])
    options = SearchOptions(n_trials=n_trials, output_dir=str(tmp_path), base_lr=0.05)

    def make(distribution):
        return TinyClassifier(param_grouping="parts", lr_distribution=distribution or None)

    study = DistributionSearch(make, pairs, trainer, options)
    objective = study.objective
    study.objective = lambda trial: calls.append(trial.number) or objective(trial)
    return study


def test_a_trial_whose_loss_turns_non_finite_is_failed_in_one_line_and_the_search_goes_on(
    tmp_path, capsys, caplog
):
    # it ended the command (exit 1, Optuna's traceback), left its folder, and each rerun met
    # the next diverging sample the same way
    calls = []
    with caplog.at_level("WARNING", logger="optuna"):
        best = poisoned_search(tmp_path, 3, {3}, calls).run()  # trial 1's first fit
    assert calls == [0, 1, 2]  # the diverged trial counts toward n_trials
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert [t["state"] for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1]["diverged"].startswith("non-finite training loss")
    assert best in (trials[0]["distribution"], trials[2]["distribution"])
    assert not (tmp_path / "trial_1").exists() and (tmp_path / "trial_2").exists()
    err = capsys.readouterr().err
    assert "lsframe search: trial 1 diverged in pair 0: non-finite training loss" in err
    assert "Traceback" not in err + caplog.text and "Trial 1 failed" not in caplog.text


def test_a_search_where_every_trial_diverges_ends_with_one_line_at_the_range(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match=r"no trial of the study completed \(2 diverged") as e:
        poisoned_search(tmp_path, 2, None, calls).run()
    assert calls == [0, 1] and e.value.where == "search.lr_high"


def test_a_process_whose_trials_diverged_while_another_s_still_runs_says_so_and_is_no_error(
    tmp_path, capsys
):
    # with several processes, diverged trials filled n_trials while another process's trial
    # was still running: this one ended with "lower search.lr_high", status 2
    from lsframe.search_study import PROCESS_ATTR, process_name

    study = poisoned_search(tmp_path, 2, None, [])
    other = study._study().ask()  # another process's trial, still running
    other.set_user_attr(PROCESS_ATTR, process_name())
    assert study.run() == {}
    out = capsys.readouterr().out
    assert "no trial has completed yet; 1 still run in other processes" in out


def test_a_journal_whose_last_record_is_torn_is_refused_before_anything_is_appended(tmp_path):
    poisoned_search(tmp_path, 1, set(), []).run()
    journal = tmp_path / "journal.log"
    torn = journal.read_bytes()[:-40]  # a full disk or a crash in the middle of an append
    journal.write_bytes(torn)
    calls = []
    with pytest.raises(ConfigError, match="ends in a partial record") as refused:
        poisoned_search(tmp_path, 2, set(), calls).run()
    assert refused.value.where == "search.storage" and calls == []
    assert journal.read_bytes() == torn  # Optuna would have appended its next record to it


def test_studies_of_neighbouring_seeds_share_no_draws():
    from lsframe.search_study import trial_seed

    # trial k of seed 1 drew exactly what trial k + 1 of seed 0 drew
    seeds = {(s, n): trial_seed(s, n) for s in (0, 1) for n in range(10)}
    assert len(set(seeds.values())) == len(seeds)
    assert trial_seed(0, 3) == trial_seed(0, 3)  # the same trial draws the same in any process


def test_the_search_plot_is_written_whole(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lsframe import search_plots

    written = []
    monkeypatch.setattr(
        "lsframe.checkpoint_io.write_atomically",
        lambda path, data: written.append((str(path), bytes(data[:8]))),
    )
    trial = {"number": 0, "state": "COMPLETE", "value": 1.0, "distribution": {"head": 1.0}}
    search_plots.plot_search({"head": 1.0}, [trial], 0.05, tmp_path / "search.png", "acc")
    assert written == [(str(tmp_path / "search.png"), b"\x89PNG\r\n\x1a\n")]
    assert not (tmp_path / "search.png").exists()  # savefig wrote straight to the path


def test_a_trial_left_running_by_a_killed_process_is_failed_and_its_folder_removed(tmp_path):
    # kill -9 left the trial RUNNING in trials.json for good, and its stage checkpoint on disk
    import subprocess
    import sys

    import optuna

    from lsframe.search_study import PROCESS_ATTR, fail_dead_trials, process_name

    study = search(tmp_path, 1)._study()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    host = process_name().rsplit(":", 1)[0]
    killed, live = study.ask(), study.ask()
    killed.set_user_attr(PROCESS_ATTR, f"{host}:{dead}")
    live.set_user_attr(PROCESS_ATTR, process_name())  # another search process, still running
    (tmp_path / f"trial_{killed.number}" / "pair_0").mkdir(parents=True)
    (tmp_path / f"trial_{killed.number}" / "pair_0" / "stage_0.ckpt").write_bytes(b"x")
    calls = []
    search(tmp_path, 1, calls).run()  # the rerun fails the killed trial, then runs a new one
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {
        killed.number: optuna.trial.TrialState.FAIL,
        live.number: optuna.trial.TrialState.RUNNING,
        calls[0]: optuna.trial.TrialState.COMPLETE,
    }
    assert not (tmp_path / f"trial_{killed.number}" / "pair_0" / "stage_0.ckpt").exists()
    assert fail_dead_trials(study, tmp_path) == []  # nothing left to fail


def test_a_dead_trial_is_told_by_its_start_time_and_namespace_and_failed_once(tmp_path):
    # a pid reused by another process is not the owner; a pid of another PID namespace on this
    # host name (a container) means another process; two searches restarted together both saw
    # the killed process's trials, and the second to fail one crashed
    import optuna

    from lsframe.search_study import (
        PROCESS_ATTR,
        PROCESS_START_ATTR,
        fail_dead_trials,
        open_study,
        process_name,
        process_start,
    )

    study = open_study(SearchOptions(output_dir=str(tmp_path)), pairs=1, defining=None)
    namespace, started = process_start().rsplit("/", 1)
    reused, container, live, raced = (study.ask() for _ in range(4))
    for trial in (reused, container, live, raced):
        trial.set_user_attr(PROCESS_ATTR, process_name())  # this pid, alive
    reused.set_user_attr(PROCESS_START_ATTR, f"{namespace}/{int(started) - 1}")
    container.set_user_attr(PROCESS_START_ATTR, f"pid:[1]/{int(started) - 1}")
    live.set_user_attr(PROCESS_START_ATTR, process_start())
    raced.set_user_attr(PROCESS_START_ATTR, f"{namespace}/{int(started) - 1}")
    listed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    study.tell(raced.number, state=optuna.trial.TrialState.FAIL)  # by the other process

    class Stale:  # what this process listed before the other one told
        def get_trials(self, **_):
            return listed

        tell = study.tell

    assert fail_dead_trials(Stale(), tmp_path) == [reused.number]
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    running = {container.number: "RUNNING", live.number: "RUNNING"}
    assert states == {reused.number: "FAIL", raced.number: "FAIL", **running}
