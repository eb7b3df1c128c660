"""A tiny search the search tests share: two tasks, one pair, a two-part classifier."""

from __future__ import annotations

from sequence_helpers import TRAINER, Task, TinyClassifier

from lsframe.search import DistributionSearch, SearchOptions
from lsframe.sequential import Stage


def make(distribution):
    return TinyClassifier(param_grouping="parts", lr_distribution=distribution or None)


def two_tasks() -> list[list[Stage]]:
    return [[Stage("a", Task(0, 1)), Stage("b", Task(1, 2))]]


def search(
    tmp_path, n_trials, calls=None, logger=False, defining=None, runner_kwargs=None, **options
):
    pairs = two_tasks()
    trainer = dict(TRAINER, max_epochs=2, logger=logger)
    opts = SearchOptions(n_trials=n_trials, output_dir=str(tmp_path), base_lr=0.05, **options)
    study = DistributionSearch(make, pairs, trainer, opts, runner_kwargs, defining=defining)
    if calls is not None:
        objective = study.objective
        study.objective = lambda trial: calls.append(trial.number) or objective(trial)
    return study
