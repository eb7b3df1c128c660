"""Time to target: how many AdamW steps each optimizer needs to reach the best AdamW run's score.

Run through ``benchmarks/step_cost.py --time-to-target`` (``--task sst2|mrpc``): AdamW at each
grid lr (10 % warmup + cosine) and the LR-free optimizers train ``--steps`` steps each, the dev
accuracy evaluated every ``--eval-every`` steps (not timed). Target: the best grid point's final
dev accuracy; each run's training seconds until it first reaches it, next to the whole grid's.
Those seconds are wall times of runs that trained one after another, so on a shared machine they
are not evidence; the columns in **AdamW steps** are: a run's step at the target times its step
time over AdamW's, measured in one interleaved run (``--cost-from``: step-cost tables of the
same model, each optimizer's ratio from the first that timed it; a table's shorter window when
the runs are that short, else its whole run), against the best grid run's step at the target and
the grid's steps in all ("–" where no table timed the optimizer over that many steps).

With ``--seeds`` (default 0) each seed is one paired experiment: the seed draws the classifier
head, the dropout masks and the order of the training batches. On each seed the target is the
final accuracy of the best grid point (by its mean final accuracy over the seeds), and every
optimizer's step at the target, its AdamW steps and seconds are that seed's; the table shows
their upper medians over the seeds (a seed that never reached the target counts as infinitely
late, so a median is "not reached" when half or more of the seeds missed), and the seeds that
reached it. One MRPC run moves by about 0.05 in accuracy with float rounding alone, so one seed
is not evidence there.

Finished runs go to ``<out>.runs.jsonl``; a rerun with the same settings resumes from it, on any
machine: the steps depend on it at most by rounding (an AdamW run ended at the same accuracy on
an Intel and an AMD CPU; a line search's decisions can amplify rounding). Each run logs its
machine; where the runs come from more than one, the seconds columns stay empty ("–").

    python -m benchmarks.step_cost --time-to-target --task sst2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    append_run,
    autocast,
    device_name,
    glue_examples,
    load_runs,
    loader,
    mean_std,
    to_device,
    tokenizer,
)
from benchmarks.specs import build, cost_twin, same_runs_note, with_same_runs
from benchmarks.step_cost import (
    MAX_LENGTH,
    TITLE,
    make_model,
    table,
    train_batches,
)


def time_to_target(history: Sequence[dict], target: float) -> dict | None:
    """The first evaluation of ``history`` (in step order; ``step``, ``seconds``, ``metric``)
    whose metric reaches ``target`` (``metric ≥ target``), or None when none does."""
    return next((point for point in history if point["metric"] >= target), None)


def adamw_steps_to_target(step: int | None, spec: str, costs: dict[str, float]) -> float | None:
    """The cost of reaching a target at optimizer step ``step`` in AdamW steps: ``step`` times
    the spec's step time over AdamW's (``costs``); None when the target was not reached or the
    spec's cost was not measured."""
    if step is None or spec not in costs:
        return None
    return step * costs[spec]


def cost_ratios(path: Path, steps: int) -> dict[str, float]:
    """Each optimizer's total step time over AdamW's in the step-cost result ``path`` (its JSON),
    over the table's shorter window when a run of ``steps`` fits in it, else over its whole run;
    a row timed over fewer than ``steps`` steps (an every-step searcher's short run) is left out.
    Tables of the first format (one ratio per row, ``ratio_to_adamw`` over ``steps``) are read as
    a whole run. Empty, with a warning, when the file does not exist.

    Raises:
        SystemExit: ``path`` is not a step-cost table, or it timed fewer than ``steps`` steps.
    """
    if not path.exists():
        print(f"step_cost: no step-cost table {path}: its optimizers' AdamW steps stay empty")
        return {}
    try:
        rows = [_windows(row) for row in json.loads(path.read_text())["rows"]]
        whole = rows[0]["whole"]["steps"]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        message = f"step_cost: --cost-from {path} is not a step-cost table ({error!r})"
        raise SystemExit(message) from None
    if steps > whole:
        raise SystemExit(
            f"step_cost: --cost-from {path} timed {whole} steps, fewer than these runs' {steps}"
        )
    ratios = {}
    for row in rows:
        fits = [w for w in (row.get("first"), row["whole"]) if w and steps <= w["steps"]]
        if fits:
            ratios[row["optimizer"]] = fits[0]["total"]
    return ratios


def _windows(row: dict) -> dict:
    """A step-cost row with its ``first`` and ``whole`` windows (``steps``, ``total``)."""
    if "whole" in row:
        return row
    whole = {"steps": row["steps"], "total": row["ratio_to_adamw"]}  # the first format
    return {"optimizer": row["optimizer"], "whole": whole}


def merged_costs(paths: Sequence[str], steps: int) -> tuple[dict[str, float], dict[str, str]]:
    """The cost ratios of several step-cost tables (:func:`cost_ratios`), each optimizer's from
    the first table that timed it, with that table's path. Each ratio comes from one interleaved
    run, so ratios of different tables (machines, dates) are each against their own AdamW."""
    costs: dict[str, float] = {}
    sources: dict[str, str] = {}
    for path in paths:
        for spec, ratio in cost_ratios(Path(path), steps).items():
            if spec not in costs:
                costs[spec], sources[spec] = ratio, path
    return costs, sources


def costs_at_other_starts(
    specs: Sequence[str], costs: dict[str, float], sources: dict[str, str]
) -> None:
    """Give each of ``specs`` that no table timed the cost of its :func:`cost_twin`, a timed
    spec that differs from it in its start alone, where the optimizer takes no forward trial:
    its step does the same work at any step size. Updates both in place; the source says "at
    another start"."""
    for spec in specs:
        twin = cost_twin(spec, [t for t in costs if t in sources])
        if twin is not None:
            costs[spec] = costs[twin]
            sources[spec] = (
                f"{sources[twin]} (timed as {twin}: the same work per step at any start)"
            )


def cost_sources(rows: Sequence[dict], sources: dict[str, str]) -> str:
    """Which step-cost table each of ``rows``' optimizers took its cost from."""
    by_table: dict[str, list[str]] = {}
    for r in rows:
        by_table.setdefault(sources.get(r["optimizer"], ""), []).append(r["optimizer"])
    parts = [f"{', '.join(specs)}: {table}" for table, specs in by_table.items() if table]
    if "" in by_table:
        parts.append(f"{', '.join(by_table[''])}: not timed")
    return "; ".join(parts) or "no optimizer timed"


def grid_target(finals: dict[str, float]) -> tuple[str, float]:
    """The grid point with the best final metric and that metric (ties: the first listed)."""
    best = max(finals, key=lambda spec: finals[spec])
    return best, finals[best]


def evaluate(model: nn.Module, batches: list[dict]) -> float:
    """Accuracy of ``model`` on ``batches`` (eval mode, no gradients)."""
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            correct += int((model(**inputs).logits.argmax(-1) == batch["labels"]).sum())
            total += batch["labels"].numel()
    return correct / total


def train_to_target(
    spec: str, args: argparse.Namespace, tok: Any, data: tuple, seed: int = 0
) -> dict:
    """``spec`` for ``--steps`` steps on the cached training batches (of ``seed``), from a head
    and dropout stream drawn from ``seed``, the dev accuracy every ``--eval-every`` steps and at
    the end: its evaluation history with the training seconds, and its per-step diagnostics
    (``per_step``, as in the quality runs' log: :class:`benchmarks.common.StepDiagnostics`)."""
    batches, per_pass, dev = data
    run = build(spec, make_model(args.model, len(tok), seed).to(args.device), args.steps)
    sync: Callable[[], None] = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    seconds, eval_forwards, history = 0.0, 0, []
    for i, batch in enumerate(batches, start=1):
        if (i - 1) % per_pass == 0:
            run.start_pass((i - 1) // per_pass)
        sync()
        t0 = time.perf_counter()
        with autocast(args.device, args.bf16):
            run.step(batch)
        sync()
        seconds += time.perf_counter() - t0
        if i % args.eval_every == 0 or i == len(batches):
            before = run.forwards.count
            run.eval()
            with autocast(args.device, args.bf16):
                metric = evaluate(run.model, dev)
            run.train()
            eval_forwards += run.forwards.count - before
            history.append({"step": i, "seconds": seconds, "metric": metric})
    return {
        "optimizer": spec,
        "train_seconds": seconds,
        "final_metric": history[-1]["metric"],
        "forwards_per_step": (run.forwards.count - eval_forwards) / len(batches),
        "history": history,
        "per_step": run.diagnostics.columns,  # step sizes; a line search's trials, alignments
    }


def upper_median(values: Sequence[float | None]) -> float | None:
    """The upper median of ``values``, where None (a seed that never reached the target) counts
    as infinitely late; None when the median is such a seed."""
    middle = statistics.median_high([math.inf if v is None else v for v in values])
    return None if math.isinf(middle) else middle


def seed_summary(spec: str, runs: Sequence[dict], targets: Sequence[float], costs: dict) -> dict:
    """``spec``'s runs on the seeds (in the order of ``targets``, each seed's target) as one row:
    each seed's step, seconds and AdamW steps at its target, and their upper medians."""
    per_seed = []
    for run, target in zip(runs, targets):
        hit = time_to_target(run["history"], target)
        step = None if hit is None else hit["step"]
        per_seed.append(
            {
                "seed": run.get("seed", 0),
                "final_metric": run["final_metric"],
                "step_at_target": step,
                "time_to_target": None if hit is None else hit["seconds"],
                "adamw_steps_to_target": adamw_steps_to_target(step, spec, costs),
            }
        )
    row = {
        "optimizer": spec,
        "seeds": [p["seed"] for p in per_seed],
        "reached": sum(p["step_at_target"] is not None for p in per_seed),
        "final_metric": statistics.fmean(r["final_metric"] for r in runs),
        "best_metric": statistics.fmean(max(p["metric"] for p in r["history"]) for r in runs),
        "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
        "forwards_per_step": statistics.fmean(r["forwards_per_step"] for r in runs),
        "per_seed": per_seed,
        "device": "; ".join(sorted({r.get("device", "not logged") for r in runs})),
    }
    for key in ("step_at_target", "time_to_target", "adamw_steps_to_target"):
        row[key] = upper_median([p[key] for p in per_seed])
    if len(runs) == 1:
        row["history"] = runs[0]["history"]
    return row


def logged_or_trained(args: argparse.Namespace, specs: list[str], settings: dict) -> dict:
    """Every (spec, seed) run of ``args.seeds``: from ``<out>.runs.jsonl`` where logged with
    ``settings`` (runs logged before seeds were recorded are seed 0; a run logged under the spec
    that was the same run, :func:`~benchmarks.specs.logged_as`, counts), else trained and
    logged."""
    log = Path(f"{args.out}.runs.jsonl")
    logged = with_same_runs(load_runs(log, settings), specs, lambda run: run["steps"])
    done = {(r["optimizer"], r.get("seed", 0)): r for r in logged}
    missing = [(spec, seed) for seed in args.seeds for spec in specs if (spec, seed) not in done]
    if missing:
        tok = tokenizer()
        length = MAX_LENGTH[args.model]
        dev_examples = glue_examples(args.task, "dev", args.dev_limit)
        dev = [to_device(b, args.device) for b in loader(dev_examples, tok, length, 64, 0, False)]
        for seed in dict.fromkeys(seed for _, seed in missing):
            data = (*train_batches(args, tok, args.steps, args.task, seed), dev)
            for spec in specs:
                if (spec, seed) not in done:
                    run = train_to_target(spec, args, tok, data, seed) | settings
                    done[spec, seed] = run | {"seed": seed, "device": device_name(args.device)}
                    append_run(log, done[spec, seed], args.device)
    return done


def time_to_target_runs(args: argparse.Namespace) -> tuple[str, str, list[dict]]:
    keys = ("model", "task", "steps", "eval_every", "dev_limit", "bf16")
    settings = {k: getattr(args, k) for k in keys}  # not the machine (docstring)
    specs = [f"adamw@{lr:g}" for lr in args.grid] + args.lr_free
    done = logged_or_trained(args, specs, settings)
    seeds = args.seeds
    runs = {spec: [done[spec, seed] for seed in seeds] for spec in specs}
    grid_specs = specs[: len(args.grid)]
    finals = {s: statistics.fmean(r["final_metric"] for r in runs[s]) for s in grid_specs}
    best, target = grid_target(finals)
    targets = [r["final_metric"] for r in runs[best]]  # each seed's own
    costs, sources = merged_costs(args.cost_from, args.steps)
    costs_at_other_starts(specs, costs, sources)
    costs |= {spec: 1.0 for spec in grid_specs}  # AdamW's step is the unit
    rows = [seed_summary(spec, runs[spec], targets, costs) | settings for spec in specs]
    for r in rows:
        r["grid"] = r["optimizer"] in grid_specs  # the claim reader's grid
    best_row = rows[grid_specs.index(best)]
    best_step = best_row["step_at_target"]  # on each seed the best run reaches its own final
    grid_seconds = sum(r["train_seconds"] for r in rows if r["grid"])
    grid_steps = len(grid_specs) * args.steps
    machines = sorted({run.get("device", "not logged") for spec in specs for run in runs[spec]})
    one_machine = len(machines) == 1  # else seconds of different machines: not compared
    several = len(seeds) > 1
    cells = []
    for r in rows:
        hit, cost = r["time_to_target"], r["adamw_steps_to_target"]
        reached = "not reached" if hit is None else f"{hit:.1f}"
        if hit is not None and not several:
            reached += f" (step {r['step_at_target']})"
        share = "–" if hit is None else f"{hit / grid_seconds:.2f}"
        in_steps = ["–"] * 3
        if cost is not None:
            in_steps = [f"{cost:.0f}", f"{cost / best_step:.2f}", f"{cost / grid_steps:.2f}"]
        finals = [p["final_metric"] for p in r["per_seed"]]
        final = mean_std(finals) if several else f"{r['final_metric']:.4f}"
        cells.append([r["optimizer"], final, f"{r['best_metric']:.4f}", *in_steps])
        cells[-1] += [f"{r['train_seconds']:.1f}", reached, share] if one_machine else ["–"] * 3
        cells[-1].append(f"{r['forwards_per_step']:.2f}")
        if several:
            cells[-1].append(f"{r['reached']}/{len(seeds)}")
    header = ["optimizer", "final dev acc", "best dev acc", "AdamW steps to target"]
    header += ["x best AdamW", "x grid steps", "train s", "s to target", "x grid s", "fwd/step"]
    header += ["seeds at target"] if several else []
    seconds = (
        f"the whole AdamW grid trained {grid_seconds:.0f} s, the best run reached the target "
        f"after {best_row['time_to_target']:.0f} s (step {best_step}); training time only "
        "(evaluation excluded)"
        if one_machine
        else f"the best run reached the target at step {best_step}; no seconds columns: the "
        f"runs come from {len(machines)} machines"
    )
    grid = f"grid {', '.join(map(str, args.grid))}, 10 % warmup + cosine"
    target_text = (
        f"target {target:.4f} = final accuracy of the best AdamW grid point {best} ({grid})"
        if not several
        else f"seeds {', '.join(map(str, seeds))}, each its own experiment: targets "
        f"{', '.join(f'{t:.4f}' for t in targets)} = that seed's final accuracy of the best AdamW "
        f"grid point {best} ({grid}; best mean final {target:.4f}); steps, seconds and AdamW "
        "steps are upper medians over the seeds (a seed that missed counts as infinitely late), "
        "train seconds and accuracies means"
    )
    meta = (
        f"Time to target, {args.task.upper()} dev accuracy (first {args.dev_limit or 'all'} dev "
        f"examples, every {args.eval_every} steps), {TITLE[args.model]}, batch 16, max length "
        f"{MAX_LENGTH[args.model]}, {args.steps} steps per run; {target_text}; {seconds}; "
        "AdamW steps: step at the target × step time over AdamW's from one interleaved run per "
        f"step-cost table ({cost_sources(rows[len(grid_specs) :], sources)}); the seconds "
        "columns are sequential runs' wall times; "
        f"device {'; '.join(machines)}; bf16 {args.bf16}; torch {torch.__version__}"
    )
    same = same_runs_note(run for spec in specs for run in runs[spec])
    return meta + (f"; {same}" if same else ""), table(header, cells), rows
