"""How far the fresh losses fall over a run's first pass, from the quality benchmark's run logs.

On the first pass over a finite training set every batch is one the model has not trained on,
so the loss a step computes before it moves is a held-out loss, free of charge. The question
behind this table: does the first pass say which runs gain from smaller steps on the repeated
passes (RTE in setting M) and which do not (RTE in S, SST-2 in M)?

For each logged run with per-step losses, over its first pass (the warmup included: each
loss is still taken before the model trained on its batch), an ordinary least-squares line
through the losses gives the fall over those ``n`` steps, ``−slope · n``, with its standard error from the
residuals; ``t`` is the slope over its standard error (a significance test that the losses
fall) and ``upper`` the one-sided 95 % bound on the fall, ``fall + 1.645 · se`` (an equivalence
test: the first pass fell by less than ``upper``). Nothing is run: the table reads
``quality_{m,s}_<task>_cpu.runs.jsonl``.

    python -m benchmarks.first_pass_losses
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import load_runs, write_results

RESULTS = Path(__file__).parent / "results"
TASKS = ("sst2", "mrpc", "rte", "qnli")
ONE_SIDED_95 = 1.645


def loss_trend(losses: Sequence[float]) -> dict[str, float]:
    """The least-squares line through ``losses`` (one per step): the mean, the residuals'
    standard deviation, the fall over the steps (``−slope · n``) with its standard error, the
    slope's t statistic and the one-sided 95 % upper bound on the fall."""
    n = len(losses)
    if n < 3:
        raise ValueError(f"a trend needs 3 losses or more, got {n}")
    mean_x, mean_y = (n - 1) / 2, sum(losses) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(losses)) / sxx
    residuals = [y - mean_y - slope * (x - mean_x) for x, y in enumerate(losses)]
    sd = math.sqrt(sum(r * r for r in residuals) / (n - 2))
    se = sd / math.sqrt(sxx)
    fall, fall_se = -slope * n, se * n
    t = slope / se if se > 0 else math.copysign(math.inf, slope) if slope else 0.0
    upper = fall + ONE_SIDED_95 * fall_se
    return {"mean": mean_y, "sd": sd, "fall": fall, "fall_se": fall_se, "t": t, "upper": upper}


def first_pass(run: dict) -> list[float]:
    """The losses of a logged run's first pass, one per step."""
    losses = run["per_step"]["loss"]
    if isinstance(losses, dict):  # per group: the losses are the run's, every group logs them
        losses = next(iter(losses.values()))
    return [float(v) for v in losses[: len(losses) // run["epochs"]]]


def rows_for(setting: str, task: str, results: Path = RESULTS) -> list[dict]:
    """One row per logged run of ``setting`` and ``task`` that has per-step losses."""
    log = results / f"quality_{setting.lower()}_{task}_cpu.runs.jsonl"
    rows = []
    for run in load_runs(log):
        if "loss" not in run.get("per_step", {}):
            continue
        losses = first_pass(run)
        row = {"setting": setting, "task": task, "optimizer": run["optimizer"]}
        row.update(seed=run["seed"], steps=len(losses), metric=run["acc"], **loss_trend(losses))
        rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> str:
    head = "| setting | task | row | seed | steps | mean loss | residual sd | fall ± se | t | "
    head += "upper 95 % | dev acc |\n|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['task']} | `{r['optimizer']}` | {r['seed']} | {r['steps']} "
            f"| {r['mean']:.3f} | {r['sd']:.3f} | {r['fall']:+.3f} ± {r['fall_se']:.3f} "
            f"| {r['t']:+.1f} | {r['upper']:+.3f} | {r['metric']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "first_pass_losses_cpu")
    args = parser.parse_args(argv)
    rows = [row for setting in "SM" for task in TASKS for row in rows_for(setting, task)]
    meta = (
        "# The fresh losses over the first pass, from the quality run logs\n\n"
        "`fall`: the least-squares fall of the loss over those steps; `t`: the slope over its "
        "standard error (negative: falling); `upper 95 %`: the one-sided bound on the fall. "
        "Only runs that logged their per-step losses are here."
    )
    write_results(args.out, meta, table(rows), rows)


if __name__ == "__main__":
    main()
