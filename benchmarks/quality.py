"""Quality of each optimizer with its defaults vs an AdamW learning-rate grid and LR-free peers.

MiniLM-L6 fine-tuning on a GLUE training slice (dynamic padding), then the dev metric over the
whole dev set. ``--setting`` picks issue 18's settings: ``S`` (the P0 small setting: first 500
training examples, batch 32, 5 epochs, max length 128) or ``M`` (first 2,000, batch 16, 3
epochs, max length 128); without it, ``--train-limit``, ``--batch-size``, ``--epochs`` and
``--max-length`` (default: 2,000, 16, 1, 64). The table gives the dev set's majority-class level
and, per row, the paired difference to the best AdamW grid point (same seeds) and how many seeds
learn (dev metric at least 0.02 above the majority class). Rows (``--optimizers``): every
lsframe line search with its defaults (no schedule; ``name+robust``: its robust preset), AdamW at
{1e-5, 2e-5, 5e-5, 1e-4} with 10 % warmup + cosine decay, Prodigy and DAdaptAdam (lr 1.0, same
schedule), and AdamWScheduleFree at the grid's best learning rate (chosen per task on the mean
dev metric, as a user would after running the grid). "train loss" is the mean training loss
over the last 20 % of the run. The table holds every run logged with the same settings, so
invocations with other rows or seeds add up. Each finished run is appended to ``<out>.runs.jsonl``, with
its per-step losses, step sizes and line-search diagnostics (``per_step``, see
:class:`benchmarks.common.StepDiagnostics`); a later invocation with the same ``--out`` reuses
the runs found there (add seeds in several sittings). ``--device cuda`` runs on the GPU (table
``<name>_gpu``); ``--bf16`` runs every forward under bf16 autocast (a line search switches it off
for the losses it compares, :mod:`lsframe.optim._precision`), with the weights, the optimizers'
state and the updates in fp32 (table ``<name>_bf16_<cpu|gpu>``; its runs are logged apart).
A row ``<spec>^heldout`` runs issue 18's held-out pilot on top of ``<spec>``
(:mod:`benchmarks.heldout`); ``<spec>^late_half`` and ``<spec>^late_double`` scale its step sizes
by 0.5 or 2 from the second pass on, a diagnostic of where in a run the step size decides.

    python -m benchmarks.quality --task sst2 --train-limit 2000 --max-length 64 --seeds 0 1 2
    python -m benchmarks.quality --setting S --task rte --seeds 0 1 2 3 4 --optimizers adamw@1e-4
    python -m benchmarks.quality --setting M --task sst2 --device cuda --bf16 --optimizers salsa
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import (
    DEV_SPLIT,
    append_run,
    autocast,
    beside,
    checked_device,
    classifier,
    default_device,
    glue_examples,
    load_runs,
    loader,
    logged_machines,
    logged_torch,
    mean_std,
    positive_int,
    step_size,
    to_device,
    tokenizer,
    warn_if_bf16_emulated,
    write_results,
)
from benchmarks.heldout import PASS_FACTORS, HeldOutHalving, PassFactor, keep_back, split_spec
from benchmarks.pairing import best_point, paired_differences
from benchmarks.specs import (
    DEFAULT_MODES,
    build,
    check_specs,
    same_runs_note,
    with_same_runs,
)
from lsframe.data.glue import GLUE_TASKS, glue_task
from lsframe.errors import LsframeError
from lsframe.optim import line_searches

GRID = ["adamw@1e-5", "adamw@2e-5", "adamw@5e-5", "adamw@1e-4"]
PEERS = ["prodigy", "dadaptadam"]
#: the data settings without ``--setting``
DEFAULTS = {"train_limit": 2000, "batch_size": 16, "epochs": 1, "max_length": 64}
SETTINGS = {  # issue 18: train_limit, batch_size, epochs, max_length
    "S": dict(train_limit=500, batch_size=32, epochs=5, max_length=128),
    "M": dict(train_limit=2000, batch_size=16, epochs=3, max_length=128),
}


def run_steps(examples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of a run: ``epochs`` passes over ``examples`` in batches of
    ``batch_size``, the last batch of each pass partial."""
    return epochs * math.ceil(examples / batch_size)


def most_steps(setting: str) -> int:
    """The most optimizer steps a run of ``setting`` takes (a task with fewer training examples
    than its limit takes fewer)."""
    values = SETTINGS[setting]
    return run_steps(values["train_limit"], values["batch_size"], values["epochs"])


LEARNS_BY = 0.02  # a run "learns" when its dev metric beats the majority class by this much


def best_grid_point(rows: list[dict], metric: str) -> str | None:
    """The point of the AdamW grid (:data:`GRID`; a pilot such as ``adamw@3e-4`` is none) with
    the highest mean ``metric`` over its logged seeds; None before any is logged. Every table,
    claim and README summary pairs against this one."""
    return best_point(rows, metric, GRID)


def evaluate(run, data, task: str, args) -> dict[str, float]:
    run.eval()
    preds, labels = [], []
    with torch.no_grad(), autocast(args.device, args.bf16):
        for batch in data:
            batch = to_device(batch, args.device)
            labels.append(batch.pop("labels"))
            preds.append(run.model(**batch).logits.argmax(-1))
    run.train()
    pred, label = torch.cat(preds).cpu(), torch.cat(labels).cpu()
    scores = {"acc": float((pred == label).float().mean())}
    if "f1" in glue_task(task).metrics:
        tp = float(((pred == 1) & (label == 1)).sum())
        scores["f1"] = 2 * tp / max(1.0, float((pred == 1).sum() + (label == 1).sum()))
    return scores


def one_run(spec: str, seed: int, args, tok, train, dev) -> dict:
    started = time.perf_counter()
    base, mark = split_spec(spec)
    model = classifier(glue_task(args.task).num_labels, seed).to(args.device)
    if mark == "heldout":
        train, kept = keep_back(train)
    data = loader(train, tok, args.max_length, args.batch_size, seed)
    run = build(base, model, args.epochs * len(data))
    scaling = None
    if mark == "heldout":
        scaling = HeldOutHalving(kept, tok, args, seed, run, args.epochs * len(data))
    elif mark:
        scaling = PassFactor(run, PASS_FACTORS[mark], len(data))
    torch.manual_seed(seed)
    losses = []
    for epoch in range(args.epochs):
        run.start_pass(epoch)
        for batch in data:
            with autocast(args.device, args.bf16):
                losses.append(run.step(to_device(batch, args.device)))
            if scaling is not None:
                scaling.after_step(run)
    tail = losses[-max(1, len(losses) // 5) :]
    checks = scaling.batches if scaling is not None else 0  # the held-out forwards
    dev_data = loader(dev, tok, args.max_length, 64, seed, shuffle=False)
    row = {
        "optimizer": spec,
        "seed": seed,
        **run_settings(args),
        "train_loss": sum(tail) / len(tail),
        "nonfinite_steps": sum(1 for x in losses if x != x),
        "forwards_per_step": (run.forwards.count - checks) / len(losses),
        "final_step_size": step_size(run),
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        **evaluate(run, dev_data, args.task, args),
        "per_step": run.diagnostics.columns,  # step sizes; a line search's trials and ratios
        **({"heldout_checks": scaling.checks, "heldout_forwards": checks} if checks else {}),
    }
    append_run(args.log, row, args.device)  # survives an interrupted benchmark
    return row


def run_settings(args) -> dict:
    """What a logged run is reused for: its task and the settings of its data and precision."""
    keys = ("task", "train_limit", "batch_size", "epochs", "max_length", "bf16")
    return {k: getattr(args, k) for k in keys}


def majority_level(dev, metric: str) -> float:
    """The dev metric of always predicting the most frequent dev label."""
    counts = [dev.labels.count(label) for label in set(dev.labels)]
    if metric == "f1":  # predicting the positive class everywhere
        positives = dev.labels.count(1)
        return 2 * positives / (positives + len(dev.labels))
    return max(counts) / len(dev.labels)


def summarise(rows: list[dict], metric: str, majority: float) -> list[dict]:
    """One entry per optimizer: mean ± std of the scores, fwd/step, seconds, learning seeds;
    and, once the AdamW grid is in, the paired difference to its best point (by mean)."""
    table = []
    for spec in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == spec]
        entry = {"optimizer": spec, "seeds": len(mine)}
        for key in ("train_loss", metric, *(["f1"] if metric != "f1" and "f1" in mine[0] else [])):
            values = [r[key] for r in mine]
            entry[key] = statistics.fmean(values)
            entry[key + "_cell"] = mean_std(values)
        entry["forwards_per_step"] = statistics.fmean(r["forwards_per_step"] for r in mine)
        entry["seconds"] = statistics.fmean(r["seconds"] for r in mine)
        entry["learns"] = sum(r[metric] >= majority + LEARNS_BY for r in mine)
        table.append(entry)
    best = best_grid_point(rows, metric)
    if best is not None:
        for entry in table:
            diffs = paired_differences(rows, metric, entry["optimizer"], best)
            entry["paired_cell"] = mean_std(diffs) if diffs else "–"
            entry["paired_against"] = best
    return table


def table_lines(table: list[dict], metric: str) -> list[str]:
    keys = ["train_loss", metric] + (["f1"] if "f1" in table[0] and metric != "f1" else [])
    against = table[0].get("paired_against")
    header = ["optimizer", "seeds", "train loss", f"dev {metric}"] + ["dev f1"] * (len(keys) > 2)
    header += [f"paired Δ vs {against}"] * bool(against) + ["learns", "fwd/step", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table:
        cells = [e["optimizer"], str(e["seeds"])] + [e[k + "_cell"] for k in keys]
        if against:  # no AdamW grid point logged yet: no paired column
            cells.append(e["paired_cell"])
        cells += [f"{e['learns']}/{e['seeds']}", f"{e['forwards_per_step']:.2f}"]
        lines.append("| " + " | ".join(cells + [f"{e['seconds']:.0f}"]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2", choices=sorted(GLUE_TASKS))
    parser.add_argument("--setting", choices=sorted(SETTINGS), default=None)
    for key, default in DEFAULTS.items():  # None: not given (a --setting may then set it)
        flag = "--" + key.replace("_", "-")
        parser.add_argument(flag, type=positive_int, default=None, help=f"default: {default}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=line_searches() + GRID + PEERS)
    parser.add_argument("--no-schedulefree", action="store_true")
    parser.add_argument(
        "--table-only", action="store_true", help="write the table of the logged runs; run none"
    )
    parser.add_argument("--device", default=default_device(), help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast of the forwards")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    checked_device(parser, args.device)
    warn_if_bf16_emulated(args.device, args.bf16)
    fixed = SETTINGS[args.setting] if args.setting else {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if given is not None and key in fixed and given != fixed[key]:
            flag = "--" + key.replace("_", "-")
            parser.error(f"--setting {args.setting} fixes {flag} to {fixed[key]}, got {given}")
        setattr(args, key, fixed.get(key, default) if given is None else given)
    name = f"quality_{args.setting.lower()}_{args.task}" if args.setting else f"quality_{args.task}"
    kind = ("bf16_" if args.bf16 else "") + ("gpu" if args.device == "cuda" else "cpu")
    out = Path(args.out or f"benchmarks/results/{name}_{kind}")
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.optimizers:
        try:
            split_spec(spec)
        except ValueError as error:
            parser.error(f"--optimizers: {error}")
    if not args.table_only:
        check_specs([*args.optimizers, *([] if args.no_schedulefree else ["schedulefree@1e-4"])])
    args.log = beside(out, ".runs.jsonl")
    started = time.time()
    tok = tokenizer()
    try:
        train = glue_examples(args.task, "train", args.train_limit)
        dev = glue_examples(args.task, "dev")
    except LsframeError as error:  # a task without data here: one line
        raise SystemExit(f"quality: {error}") from None
    # runs already in the log with these settings (an earlier, interrupted or partial
    # invocation) are reused; runs logged before the settings were recorded had batch 16 and
    # one epoch, and their file's own limit and length
    old = {**run_settings(args), "batch_size": 16, "epochs": 1, "bf16": False}
    steps = run_steps(len(train.labels), args.batch_size, args.epochs)
    modes = [*DEFAULT_MODES, *args.optimizers]

    def logged_runs() -> list[dict]:
        logged = load_runs(args.log, run_settings(args), logged_before=old)
        return with_same_runs(logged, modes, steps)

    known = {(r["optimizer"], r["seed"]): r for r in logged_runs()}

    def run_or_reuse(spec: str, seed: int) -> dict:
        return known.get((spec, seed)) or one_run(spec, seed, args, tok, train, dev)

    if args.table_only:
        args.optimizers, args.no_schedulefree = [], True
    for spec in args.optimizers:
        for seed in args.seeds:
            known[spec, seed] = run_or_reuse(spec, seed)
    metric = glue_task(args.task).metrics[0]
    majority = majority_level(dev, metric)
    best = best_grid_point(list(known.values()), metric)
    if best is not None and not args.no_schedulefree:
        best = best.split("@")[1]
        for seed in args.seeds:
            known[f"schedulefree@{best}", seed] = run_or_reuse(f"schedulefree@{best}", seed)
    # the table holds every run logged with these settings: invocations with other optimizers
    # or seeds (the presets' 3 seeds beside the main rows' 5) add up, those of another
    # invocation that logged to this file meanwhile ("two at a time") included
    for row in logged_runs():
        known.setdefault((row["optimizer"], row["seed"]), row)
    rows = sorted(known.values(), key=lambda r: r["seed"])
    if not rows:
        raise SystemExit(f"quality: no runs logged with these settings in {args.log}")
    table = summarise(rows, metric, majority)
    rows = [{**row, "majority": majority} for row in rows]  # for the claims that read the JSON
    ran = [row for row in rows if "same_run_as" not in row]  # each run once
    meta = (
        f"GLUE {args.task}{f' (setting {args.setting})' if args.setting else ''}: first "
        f"{args.train_limit} training examples, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"max length {args.max_length}; {split_note(args.task)}dev set {len(dev.labels)} "
        f"examples, majority class "
        f"{metric} {majority:.4f}; seeds {sorted({r['seed'] for r in rows})}; MiniLM-L6; "
        f"{runs_machine(ran, args.table_only, time.time() - started, args.device)}; "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}; torch "
        f"{logged_torch(ran)}. Mean ± std over seeds; paired "
        f"Δ: per-seed difference to the best AdamW grid point; learns: seeds at least "
        f"{LEARNS_BY} above the majority class."
    )
    same = same_runs_note(rows)
    meta += f" Same runs: {same}." if same else ""
    write_results(out, meta, "\n".join(table_lines(table, metric)), rows)


def split_note(task: str) -> str:
    """How a :data:`~benchmarks.common.DEV_SPLIT` task's examples were split, else nothing."""
    if task not in DEV_SPLIT:
        return ""
    return (
        f"a task held out from the defaults' choice, trained on the first {DEV_SPLIT[task]} rows "
        f"of its dev.tsv (no train.tsv here) and evaluated on the rest: "
    )


def runs_machine(rows: list[dict], table_only: bool, wall: float, device: str) -> str:
    """The machine and the threads the logged runs used (older runs did not log theirs), and
    this invocation's wall time unless it only wrote the table."""
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    unlogged = any("threads" not in r for r in rows)
    counts = [str(t) for t in threads] + ["not logged"] * unlogged
    text = f"device {logged_machines(rows, device)}, threads per run: {' / '.join(counts)}"
    return text if table_only else f"{text}; wall {wall:.0f} s"


if __name__ == "__main__":
    main()
