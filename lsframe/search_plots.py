"""The search's plots: the best distribution with the search history (``search.png``), and
Optuna's parameter-importance plot (``param_importances.png``)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any


def save_figure(figure: Any, path: str | Path) -> None:
    """``figure`` as a PNG at ``path``, replaced whole (:func:`write_atomically`): a reader, or
    another process of the search writing it too, never sees half of one."""
    import io

    from lsframe.checkpoint_io import write_atomically

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_atomically(path, buffer.getbuffer())


def _pyplot() -> Any | None:
    """matplotlib's pyplot on the Agg backend; None without matplotlib (the search extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def importance_evaluator(optuna: Any) -> Any | None:
    """PED-ANOVA (Optuna >= 3.6, no extra dependency; Optuna 5's default), else fANOVA when
    scikit-learn is installed (Optuna's default before 5), else None."""
    ped_anova = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
    if ped_anova is not None:
        return ped_anova()
    if importlib.util.find_spec("sklearn") is not None:
        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    return None


def plot_param_importances(study: Any, path: Path, labels: dict[str, str] | None = None) -> bool:
    """Optuna's parameter-importance plot of the complete trials (how much each part's learning
    rate mattered to the objective) as a PNG; True when written. ``labels`` renames parameters
    on the axis (``lr_0`` → ``lr_0 (embeddings, layers_0)``). Skipped (False, and any older
    file removed) with fewer than two complete trials or fewer than two learning rates (one
    rate has importance 1 by definition), or without matplotlib or an evaluator
    (:func:`importance_evaluator`)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = {name for t in complete for name in t.params}
    evaluator = importance_evaluator(optuna)
    if len(complete) < 2 or len(names) < 2 or evaluator is None:
        path.unlink(missing_ok=True)
        return False
    plt = _pyplot()
    if plt is None:
        return False
    # rc_context: Optuna switches the process's matplotlib style to ggplot
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # its backend
        axes = optuna.visualization.matplotlib.plot_param_importances(study, evaluator=evaluator)
        axes.set_title("", loc="left")  # above the figure: long part labels push the axes right
        if labels:
            ticks = [tick.get_text() for tick in axes.get_yticklabels()]
            axes.set_yticks(axes.get_yticks(), [labels.get(t, t) for t in ticks])
        figure = axes.get_figure()
        figure.suptitle(f"learning-rate importances ({len(complete)} complete trials)")
        figure.tight_layout()
        save_figure(figure, path)
        plt.close(figure)
    return True


def best_so_far(values: list[float], metric: str = "acc") -> list[float]:
    """The best of ``values[: i + 1]`` for each ``i``: the highest, or the lowest for a
    lower-is-better ``metric`` (the loss)."""
    from lsframe.sequence_checks import higher_is_better

    better = max if higher_is_better(metric) else min
    out: list[float] = []
    for value in values:
        out.append(better(out[-1], value) if out else value)
    return out


def plot_search(
    best: dict[str, float], trials: list[dict], base_lr: float, path: Path, metric: str = "acc"
) -> None:
    """Bar chart of the best learning rate per part, and objective per trial with the best so
    far (the lowest for a lower-is-better ``metric``, the loss)."""
    plt = _pyplot()
    if plt is None:  # the plot is optional: matplotlib comes with the search extra
        return
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    parts = list(best)
    left.bar(range(len(parts)), [best[p] * base_lr for p in parts])
    left.axhline(base_lr, color="grey", linestyle="--", label=f"flat {base_lr:g}")
    left.set_xticks(range(len(parts)), parts, rotation=45, ha="right")
    left.set_yscale("log")
    left.set_ylabel("learning rate")
    left.set_title("best distribution")
    left.legend()
    # a pruned trial's value is its mean over the first pairs only: shown, not ranked
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        done = [t for t in trials if t["state"] == state and t["value"] is not None]
        if done:
            right.plot([t["number"] for t in done], [t["value"] for t in done], marker, label=state)
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    running = best_so_far([t["value"] for t in complete], metric)
    right.step([t["number"] for t in complete], running, "-", where="post", label="best")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("trial")
    right.set_ylabel(f"{metric} A after B + {metric} B")
    right.set_title("search history")
    right.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
