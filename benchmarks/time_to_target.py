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
the grid's steps in all ("–" where no table timed the optimizer over that many steps). Finished
runs go to ``<out>.runs.jsonl``; a rerun with the same settings resumes from it, on any machine:
the steps depend on it at most by rounding (an AdamW run ended at the same accuracy on an Intel
and an AMD CPU; a line search's decisions can amplify rounding). Each run logs its machine;
where the runs come from more than one, the seconds columns stay empty ("–").

    python -m benchmarks.step_cost --time-to-target --task sst2 --steps 300
"""

from __future__ import annotations

import argparse
import json
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
    to_device,
    tokenizer,
)
from benchmarks.specs import build
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


def train_to_target(spec: str, args: argparse.Namespace, tok: Any, data: tuple) -> dict:
    """``spec`` for ``--steps`` steps on the cached training batches, the dev accuracy every
    ``--eval-every`` steps and at the end: its evaluation history with the training seconds."""
    batches, per_pass, dev = data
    run = build(spec, make_model(args.model, len(tok)).to(args.device), args.steps)
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
    }


def time_to_target_runs(args: argparse.Namespace) -> tuple[str, str, list[dict]]:
    keys = ("model", "task", "steps", "eval_every", "dev_limit", "bf16")
    settings = {k: getattr(args, k) for k in keys}  # not the machine (docstring)
    log = Path(f"{args.out}.runs.jsonl")
    done = {r["optimizer"]: r for r in load_runs(log, settings)}
    specs = [f"adamw@{lr:g}" for lr in args.grid] + args.lr_free
    if any(spec not in done for spec in specs):
        tok = tokenizer()
        length = MAX_LENGTH[args.model]
        dev_examples = glue_examples(args.task, "dev", args.dev_limit)
        dev = [to_device(b, args.device) for b in loader(dev_examples, tok, length, 64, 0, False)]
        data = (*train_batches(args, tok, args.steps, args.task), dev)
        for spec in specs:
            if spec not in done:
                done[spec] = train_to_target(spec, args, tok, data) | settings
                done[spec]["device"] = device_name(args.device)
                append_run(log, done[spec], args.device)
    rows = [done[spec] for spec in specs]
    grid = rows[: len(args.grid)]
    for r in rows:
        r["grid"] = r in grid  # the claim reader's grid (an adamw@ row may also be a comparator)
    best, target = grid_target({r["optimizer"]: r["final_metric"] for r in grid})
    grid_seconds = sum(r["train_seconds"] for r in grid)
    costs, sources = merged_costs(args.cost_from, args.steps)
    costs |= {r["optimizer"]: 1.0 for r in grid}  # AdamW's step is the unit
    best_step = time_to_target(next(r for r in grid if r["optimizer"] == best)["history"], target)
    best_step = best_step["step"]  # the best run reaches its own final metric
    grid_steps = len(grid) * args.steps
    machines = sorted({r.get("device", "not logged") for r in rows})
    one_machine = len(machines) == 1  # else seconds of different machines: not compared
    cells = []
    for r in rows:
        hit = time_to_target(r["history"], target)
        r["time_to_target"] = None if hit is None else hit["seconds"]
        r["step_at_target"] = None if hit is None else hit["step"]
        reached = "not reached" if hit is None else f"{hit['seconds']:.1f} (step {hit['step']})"
        share = "–" if hit is None else f"{hit['seconds'] / grid_seconds:.2f}"
        best_seen = max(p["metric"] for p in r["history"])
        cost = adamw_steps_to_target(r["step_at_target"], r["optimizer"], costs)
        r["adamw_steps_to_target"] = cost
        in_steps = ["–"] * 3
        if cost is not None:
            in_steps = [f"{cost:.0f}", f"{cost / best_step:.2f}", f"{cost / grid_steps:.2f}"]
        cells.append([r["optimizer"], f"{r['final_metric']:.4f}", f"{best_seen:.4f}"])
        timing = [f"{r['train_seconds']:.1f}", reached, share] if one_machine else ["–"] * 3
        cells[-1] += [*in_steps, *timing]
        cells[-1].append(f"{r['forwards_per_step']:.2f}")
    header = ["optimizer", "final dev acc", "best dev acc", "AdamW steps to target"]
    header += ["x best AdamW", "x grid steps", "train s", "s to target", "x grid s", "fwd/step"]
    best_hit = next(r for r in grid if r["optimizer"] == best)["time_to_target"]
    seconds = (
        f"the whole AdamW grid trained {grid_seconds:.0f} s, the best run reached the target "
        f"after {best_hit:.0f} s (step {best_step}); training time only (evaluation excluded)"
        if one_machine
        else f"the best run reached the target at step {best_step}; no seconds columns: the "
        f"runs come from {len(machines)} machines"
    )
    meta = (
        f"Time to target, {args.task.upper()} dev accuracy (first {args.dev_limit or 'all'} dev "
        f"examples, every {args.eval_every} steps), {TITLE[args.model]}, batch 16, max length "
        f"{MAX_LENGTH[args.model]}, {args.steps} steps per run; target {target:.4f} = final "
        f"accuracy of the best AdamW grid point {best} (grid {', '.join(map(str, args.grid))}, "
        f"10 % warmup + cosine); {seconds}; AdamW steps: step at the target × step time over "
        f"AdamW's from one interleaved run per step-cost table "
        f"({cost_sources(rows[len(grid) :], sources)}); the seconds columns are sequential "
        f"runs' wall times; "
        f"device {'; '.join(machines)}; bf16 {args.bf16}; torch {torch.__version__}"
    )
    return meta, table(header, cells), rows
