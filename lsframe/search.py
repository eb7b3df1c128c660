"""BERTcL's search (P3): Bayesian optimisation of per-part learning rates against forgetting.

``python -m lsframe search --config configs/search/<x>.yaml`` runs an Optuna study. Each trial
samples one learning rate per part (log-uniform in ``[lr_low, lr_high]``, by default
``[1e-7, 1e-3]``; or one per group of parts with ``groups: K``), builds a fresh module with that
distribution (``param_grouping: parts``; multipliers relative to ``base_lr``, which must be the
learning rate the module's optimizer is configured with), and fine-tunes it on every task pair
``A → B`` of ``pairs`` with :class:`lsframe.sequential.SequenceRunner`. Objective (P3): mean
over pairs of ``acc_A(after B) + acc_B``. After each pair the running mean is reported, so the
pruner (Hyperband by default) can stop poor trials early.

The study lives in ``storage`` (an Optuna journal file by default, safe for several processes
that run the same command at once: each process stops when the study holds ``n_trials``
finished trials), so an interrupted search resumes where it stopped. SIGTERM, SIGUSR1 and Ctrl-C
(:mod:`lsframe.preemption`) let the running trial finish its current optimizer step, then mark it
FAIL (not counted, its ``trial_<n>/`` removed; a rerun draws a new trial) and exit with status
128 + the signal number after one line; a signal between trials stops before the next one. A
process killed with SIGKILL leaves its trial RUNNING, which the study then ignores. A trial whose
loss turns non-finite (``nonfinite_loss="raise"``: a sampled rate too high) is marked FAIL in one
line and its folder removed; it counts toward ``n_trials`` and the search goes on. The study
records the config it was started with and refuses to go on under another one (other bounds,
groups, pairs or model; more trials, another sampler or seed are fine). Written to
``output_dir`` after every trial that ends (so a search cut short has them): ``trial_<n>/``
(each trial's logs and accuracy matrices: TensorBoard by default, any Lightning logger from
``trainer.logger``, see :mod:`lsframe.loggers`),
``best_distribution.yaml`` (part → multiplier; use it as a module's ``lr_distribution``),
``trials.json``, ``search.png`` (the best distribution across parts and the search history) and,
once two trials are complete and there are two learning rates or more,
``param_importances.png`` (Optuna's parameter-importance plot, :func:`plot_param_importances`).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lsframe.checkpoint_io import write_atomically
from lsframe.cli_usage import parse_or_raise
from lsframe.config_checks import check_config
from lsframe.config_nodes import dump_enums_as_values
from lsframe.config_stacking import fresh_class_arguments
from lsframe.errors import ConfigError, NonFiniteLossError
from lsframe.loggers import logger_specs
from lsframe.modules import ClosureModule
from lsframe.parts import split_into_parts
from lsframe.preemption import Preempted, catch_signals, stop_if_received
from lsframe.run_config import defining_config
from lsframe.search_options import (
    SearchOptions,
    base_lr_problem,
    check_base_lr,
    part_groups_by_depth,
)
from lsframe.search_plots import plot_param_importances, plot_search
from lsframe.search_study import (
    DIVERGED_ATTR,
    PROCESS_ATTR,
    PROCESS_START_ATTR,
    RUN_SETTINGS,
    TrialDiverged,
    check_storage,
    fail_dead_trials,
    finished_trials,
    open_study,
    process_name,
    process_start,
    quiet_about_interrupts,
    stop_at,
    stop_on_signal,
)
from lsframe.sequence_checks import (
    check_metric,
    check_output_dir,
    check_stages,
    check_task_labels,
    higher_is_better,
)
from lsframe.sequential import SequenceRunner, Stage


class DistributionSearch:
    """The study; ``make_module(distribution)`` builds a fresh module for one trial."""

    def __init__(
        self,
        make_module: Callable[[dict[str, float]], ClosureModule],
        pairs: list[list[Stage]],
        trainer: dict[str, Any] | None = None,
        options: SearchOptions | None = None,
        runner_kwargs: dict[str, Any] | None = None,
        defining: dict[str, Any] | None = None,
    ) -> None:
        self.make_module, self.pairs = make_module, pairs
        # the config the study is recorded with (lsframe.run_config); None: not checked
        self.defining = defining
        self.trainer_kwargs = dict(trainer or {})
        self.options = options or SearchOptions()
        self.runner_kwargs = dict(runner_kwargs or {})
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError("pairs: give task pairs [A, B] (two stages each)")
        if not 0 < self.options.lr_low < self.options.lr_high:
            raise ValueError("search: need 0 < lr_low < lr_high")
        logger_specs(self.trainer_kwargs.get("logger"))  # a bad logger fails before any trial
        probe = make_module({})
        problem = base_lr_problem(probe.optimizer_factory(probe.param_groups()), self.options)
        if problem:
            raise ValueError(problem)
        self.parts = [p.name for p in split_into_parts(probe.model, self.options.num_parts)]
        self.chunks = part_groups_by_depth(self.parts, self.options.groups, self.options.num_parts)
        self.output_dir = Path(self.options.output_dir)

    @property
    def metric(self) -> str:
        """The metric each pair's score sums (the runner's ``metric``, default ``acc``)."""
        return self.runner_kwargs.get("metric", "acc")

    def _study(self) -> Any:
        return open_study(
            self.options, len(self.pairs), self.defining, higher_is_better(self.metric)
        )

    def distribution(self, lrs: dict[str, float]) -> dict[str, float]:
        """Multipliers for every part from the sampled learning rate of each chunk."""
        out = {}
        for i, chunk in enumerate(self.chunks):
            for part in chunk:
                out[part] = lrs[f"lr_{i}"] / self.options.base_lr
        return out

    def objective(self, trial: Any) -> float:
        import optuna

        lrs = {
            f"lr_{i}": trial.suggest_float(
                f"lr_{i}", self.options.lr_low, self.options.lr_high, log=True
            )
            for i in range(len(self.chunks))
        }
        distribution = self.distribution(lrs)
        trial.set_user_attr("distribution", distribution)
        trial.set_user_attr(PROCESS_ATTR, process_name())
        trial.set_user_attr(PROCESS_START_ATTR, process_start())
        scores = []
        for k, pair in enumerate(self.pairs):
            out = self.output_dir / f"trial_{trial.number}" / f"pair_{k}"
            # a signal: the step finishes, no checkpoint (trials never resume), one line
            preemption = {
                "command": "lsframe search",
                "where": f" in trial {trial.number} (pair {k})",
                "save": False,
                "resume_hint": f"trial {trial.number} is marked FAIL; run the same command to "
                "go on with a new trial",
            }
            runner = SequenceRunner(
                self.make_module(distribution),
                pair,
                dict(self.trainer_kwargs),
                output_dir=out,
                preemption=preemption,
                **self.runner_kwargs,
            )
            try:
                matrix = runner.run().matrix
            except SystemExit as error:  # Preempted, or Lightning's answer to a raised Ctrl-C
                # the trial is marked FAIL and never resumes: its partial logs would only sit
                # beside the finished trials' as if they were results
                shutil.rmtree(out.parent, ignore_errors=True)
                raise KeyboardInterrupt(f"trial {trial.number} interrupted") from error
            except NonFiniteLossError as error:  # a sampled distribution that diverges
                shutil.rmtree(out.parent, ignore_errors=True)
                diverged = TrialDiverged(trial, k, error)
                print(f"lsframe search: {diverged}; it is marked FAIL", file=sys.stderr)
                raise diverged from error
            finally:
                # stage checkpoints only serve resuming this sequence; trials never resume
                for leftover in [*out.glob("stage_*.ckpt"), out / "sequence_state.pt"]:
                    leftover.unlink(missing_ok=True)
            scores.append(matrix[1][0] + matrix[1][1])
            trial.report(sum(scores) / len(scores), step=k + 1)
            if k + 1 < len(self.pairs) and trial.should_prune():
                raise optuna.TrialPruned()
        return sum(scores) / len(scores)

    def run(self) -> dict[str, float]:
        import optuna

        study = self._study()
        for number in fail_dead_trials(study, self.output_dir):
            print(
                f"lsframe search: trial {number} was left running by a process that ended; "
                "it is marked FAIL and its folder removed"
            )
        done = finished_trials(study)
        if done >= self.options.n_trials:
            print(
                f"lsframe search: the study has its {done} trials (search.n_trials: "
                f"{self.options.n_trials}); raise n_trials to run more"
            )
        else:
            stop = stop_at(self.options.n_trials)
            with catch_signals("lsframe search"), quiet_about_interrupts():
                study.optimize(
                    self.objective,
                    callbacks=[stop, stop_on_signal, self._written],
                    catch=(TrialDiverged,),
                )
                # a signal after a trial's last step (it finished): stop before the next one
                if finished_trials(study) < self.options.n_trials:
                    hint = "finished trials are kept; run the same command to go on"
                    stop_if_received("lsframe search", "between trials", hint)
        self._write(study)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if running:  # other processes' trials: theirs may still complete
                print(
                    f"lsframe search: no trial has completed yet; {len(running)} still run in "
                    f"other processes, which write {self.output_dir / 'best_distribution.yaml'}"
                )
                return {}
            diverged = sum(DIVERGED_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False))
            raise ConfigError(
                f"no trial of the study completed ({diverged} diverged: a non-finite loss); "
                "lower search.lr_high, or raise search.n_trials",
                where="search.lr_high",
            )
        best = study.best_trial
        print(
            f"lsframe search: best trial {best.number} (objective {best.value:.4f}): "
            f"{self.output_dir / 'best_distribution.yaml'}"
        )
        return best.user_attrs["distribution"]

    def _written(self, study: Any, trial: Any) -> None:
        """Optuna's callback after every trial that ends (not one a signal stops): the outputs
        as they stand, so a search cut short has them up to its last finished trial."""
        self._write(study)

    def _write(self, study: Any) -> None:
        """``trials.json``; and, once a trial is complete, ``best_distribution.yaml`` and the
        plots (each file replaced whole, so a reader never sees half of one)."""
        import optuna
        import yaml

        trials = [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "distribution": t.user_attrs.get("distribution"),
                **(
                    {"diverged": t.user_attrs[DIVERGED_ATTR]}
                    if DIVERGED_ATTR in t.user_attrs
                    else {}
                ),
            }
            for t in study.get_trials(deepcopy=False)
        ]
        write_atomically(self.output_dir / "trials.json", json.dumps(trials, indent=1).encode())
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return
        best = study.best_trial.user_attrs["distribution"]
        text = "# best per-part learning-rate multipliers (lsframe search); "
        text += f"base_lr {self.options.base_lr:g}, objective {study.best_value:.4f}\n"
        text += yaml.safe_dump(best, sort_keys=False)
        write_atomically(self.output_dir / "best_distribution.yaml", text.encode())
        plot_search(best, trials, self.options.base_lr, self.output_dir / "search.png", self.metric)
        labels = {f"lr_{i}": f"lr_{i} ({', '.join(c)})" for i, c in enumerate(self.chunks)}
        plot_param_importances(study, self.output_dir / "param_importances.png", labels)


def main(argv: list[str]) -> dict[str, float]:
    """``python -m lsframe search --config <yaml>`` (``--help`` lists every key)."""
    parser = ArgumentParser(
        prog="lsframe search", description=__doc__.split("\n\n")[0], exit_on_error=False
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int, default=0)
    parser.add_class_arguments(pl.Trainer, "trainer", instantiate=False)
    parser.add_subclass_arguments(ClosureModule, "model", required=True)
    parser.add_argument("--pairs", type=list[list[Stage]], required=True)
    parser.add_argument("--heads", type=Literal["separate", "shared"], default="separate")
    parser.add_argument("--head_attr", type=str, default="classifier")
    parser.add_argument("--metric", type=str, default="acc")
    parser.add_dataclass_arguments(SearchOptions, "search")
    config = parse_or_raise(parser, fresh_class_arguments(argv))
    options = SearchOptions(**vars(config.search))
    if (config.model.get("init_args") or {}).get("lr_distribution") is not None:
        raise ConfigError(  # each trial's own sample replaced it without a word
            "the search samples each trial's distribution (search.lr_low, search.lr_high); "
            "remove lr_distribution, or fine-tune with it in lsframe fit or sequential",
            where="model.init_args.lr_distribution",
        )
    logger_specs(config.trainer.get("logger"))  # a recipe each stage builds (lsframe.loggers)
    if config.trainer.get("callbacks"):
        raise ConfigError(
            "the search runs plain fine-tuning; remove them", where="trainer.callbacks"
        )
    if not config.pairs:
        raise ConfigError("give at least one task pair [A, B]", where="pairs")
    for i, pair in enumerate(config.pairs):
        check_stages(pair, f"pairs[{i}]", length=2)
    check_output_dir(options.output_dir, "search.output_dir")
    check_storage(options.storage)
    checked = config.clone()  # as each trial builds the module: parts, its own distribution
    checked.model.init_args.param_grouping = "parts"
    checked.model.init_args.lr_distribution = None
    metrics = (config.model.get("init_args") or {}).get("metrics")
    data = check_config(checked, stage="fit", task_heads=True)
    by_pair: dict[str, list[tuple[str, Any]]] = {}  # "pairs[0][1].init_args.data": pair 0
    for key, datamodule in data:
        by_pair.setdefault(key.split("]")[0], []).append((key, datamodule))
    check_task_labels(config.heads, config.model, list(by_pair.values()))
    check_metric(config.metric, data, metrics)
    check_base_lr(checked.model, options)
    model_config = config.model

    model_parser = ArgumentParser()
    model_parser.add_subclass_arguments(ClosureModule, "model")

    def make_module(distribution: dict[str, float]) -> ClosureModule:
        pl.seed_everything(config.seed_everything, verbose=False)  # same initial head per trial
        spec = model_config.clone()
        spec.init_args.param_grouping = "parts"
        spec.init_args.num_parts = options.num_parts
        spec.init_args.lr_distribution = distribution or None
        return model_parser.instantiate_classes(Namespace(model=spec)).model

    pl.seed_everything(config.seed_everything)
    dump_enums_as_values()
    pairs = parser.instantiate_classes(config).pairs
    trainer_kwargs = {k: v for k, v in vars(config.trainer).items() if v is not None}
    search = DistributionSearch(
        make_module,
        pairs,
        trainer_kwargs,
        options,
        runner_kwargs={
            "heads": config.heads,
            "head_attr": config.head_attr,
            "metric": config.metric,
        },
        defining=defining_config(config, RUN_SETTINGS),
    )
    try:
        return search.run()
    except KeyboardInterrupt as error:
        if isinstance(error.__cause__, Preempted):  # its line is printed: 128 + signal
            raise SystemExit(error.__cause__.code) from None
        print(
            "lsframe search: interrupted; the running trial is marked FAIL. Run the same command "
            "to go on.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
