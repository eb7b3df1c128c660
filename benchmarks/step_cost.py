"""Step cost of each optimizer against torch AdamW(foreach): time, forwards, memory, time to target.

Settings (``--model``): ``minilm``, the real MiniLM-L6 on SST-2 (batch 16, max length 64, dynamic
padding); ``small-bert``, a BERT from ``BertConfig`` (hidden 128, 2 layers, 2 heads, MiniLM's
vocabulary, random initialisation from seed 0) on the same batches cut to 32 tokens.

Timing (default): each optimizer trains its own copy of the model on the same batches, taking
turns in blocks of ``--block`` steps in one process (the order rotating), so drift in the
machine's speed hits all alike. Per optimizer: total (sum of step times) and median step-time
ratios to AdamW (the first row) over the first ``--first`` steps and over all (the every-step
searchers run ``--short-steps``; † marks a ratio over fewer steps than its column); forwards per
step; mean ms per step of forward+backward (the closure's backward evaluation), trial forwards
(forward-only evaluations), optimizer (the rest of ``optimizer.step``: Python, launches, its own
host syncs) and sync (GPU: waiting in ``torch.cuda.synchronize`` for work the optimizer queued,
before each evaluation and at the end; "–" on CPU). The parts add up to the step time (on GPU a
synchronize ends each evaluation, in its part); the LR scheduler and diagnostics are not timed.
Before the timed steps each optimizer takes two steps on a copy of its run, dropped ("warm-up s":
``+fused`` compiles its kernels there, once per process). ``--memory``: peak memory of each
optimizer alone, 20 steps in a fresh process (max RSS on CPU,
``max_memory_allocated`` on CUDA).

Time to target (``--time-to-target``, ``--task sst2|mrpc``): AdamW at each grid lr (10 % warmup
+ cosine) and the LR-free optimizers train ``--steps`` steps each, the dev accuracy evaluated
every ``--eval-every`` steps (not timed). Target: the best grid point's final dev accuracy; each
run's training seconds until it first reaches it, next to the whole grid's. Those seconds are
wall times of runs that trained one after another, so on a shared machine they are not evidence;
the columns in **AdamW steps** are: a run's step at the target times its step time over AdamW's,
measured in one interleaved run (``--cost-from``, the step-cost table of the same model and
device: the window of the first ``--first`` steps when the runs are that short, else the whole
run), against the best grid run's step at the target and the grid's steps in all ("–" where the
cost table has no row for the optimizer). Finished runs go to ``<out>.runs.jsonl``; a rerun with
the same settings resumes from it.

    python -m benchmarks.step_cost --model minilm --steps 1000 --memory
    python -m benchmarks.step_cost --time-to-target --task sst2 --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    ROOT,
    Run,
    append_run,
    build,
    classifier,
    device_name,
    endless,
    glue_examples,
    load_runs,
    loader,
    step_size,
    tokenizer,
    write_results,
)
from lsframe.optim import info, line_searches, make_closure

MAX_LENGTH = {"minilm": 64, "small-bert": 32}
TITLE = {"minilm": "MiniLM-L6", "small-bert": "small BERT (hidden 128, 2 layers)"}
# the line searches that search with forward trials at every step (not amortised, as SaLSA's)
EVERY_STEP = [n for n in line_searches() if info(n).forward_trials and not info(n).amortized]
# AdamW first (the base of the ratios), lsframe's LR-free default, SaLSA, the other searches
OPTIMIZERS = [
    "adamw-const@5e-5",
    "adamw-fused-const@5e-5",  # torch's fused CPU/GPU kernel: shown beside, not the base
    "slope_tracking_adam",
    "slope_tracking_adam+fused",
    "salsa",
    *EVERY_STEP,
]
GRID = [1e-5, 2e-5, 5e-5, 1e-4]
LR_FREE = ["slope_tracking_adam", "slope_tracking_adam+fused", "salsa"]
PARTS = ("fwd_bwd", "trials", "optimizer", "sync")


def window_ratios(seconds: Sequence[float], base: Sequence[float], k: int) -> dict[str, Any]:
    """A run's step times against the base run's over the first ``k`` steps of both (fewer when
    either has fewer): ``total`` = Σ seconds / Σ base, ``median`` = median / median of the same
    steps, ``steps`` = how many steps were compared.

    Raises:
        ValueError: there is no step to compare.
    """
    n = min(k, len(seconds), len(base))
    if n < 1:
        raise ValueError("no steps to compare")
    ours, theirs = seconds[:n], base[:n]
    return {
        "steps": n,
        "total": sum(ours) / sum(theirs),
        "median": statistics.median(ours) / statistics.median(theirs),
    }


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
    empty, with a warning, when the file does not exist."""
    if not path.exists():
        print(f"step_cost: no step-cost table {path}: the AdamW-steps columns stay empty")
        return {}
    rows = json.loads(path.read_text())["rows"]
    window = "first" if steps <= rows[0]["first"]["steps"] else "whole"
    return {row["optimizer"]: row[window]["total"] for row in rows}


def grid_target(finals: dict[str, float]) -> tuple[str, float]:
    """The grid point with the best final metric and that metric (ties: the first listed)."""
    best = max(finals, key=lambda spec: finals[spec])
    return best, finals[best]


def make_model(setting: str, vocab_size: int, seed: int = 0) -> nn.Module:
    """The two-label classifier of ``setting`` (see the module docstring), in train mode."""
    if setting == "minilm":
        return classifier(2, seed)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    shape = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = BertConfig(vocab_size=vocab_size, intermediate_size=512, num_labels=2, **shape)
    return BertForSequenceClassification(config).train()


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def train_batches(
    args: argparse.Namespace, tok: Any, count: int, task: str = "sst2"
) -> tuple[list[dict], int]:
    """``count`` training batches, cycling over the task's training set, and the number of
    batches in one pass over it."""
    data = loader(glue_examples(task, "train"), tok, MAX_LENGTH[args.model], 16, seed=0)
    batches = endless(data)
    return [to_device(next(batches), args.device) for _ in range(count)], len(data)


def timed_step(run: Run, batch: dict, cuda: bool) -> tuple[float, dict[str, float]]:
    """One step of ``run`` (as :meth:`Run.step`) with its time split into :data:`PARTS` (seconds)
    and its closure evaluations counted (``backward_calls``, ``trial_calls``)."""
    parts = dict.fromkeys(PARTS, 0.0) | {"backward_calls": 0, "trial_calls": 0}

    def sync() -> None:
        if cuda:
            t0 = time.perf_counter()
            torch.cuda.synchronize()
            parts["sync"] += time.perf_counter() - t0

    closure = make_closure(run.model, batch, run.optimizer)

    def timed(backward: bool = True) -> torch.Tensor:
        sync()  # the optimizer's queued kernels are not the closure's
        t0 = time.perf_counter()
        loss = closure(backward=backward)
        if cuda:
            torch.cuda.synchronize()
        parts["fwd_bwd" if backward else "trials"] += time.perf_counter() - t0
        parts["backward_calls" if backward else "trial_calls"] += 1
        return loss

    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    if run.kind == "reference":  # the authors' SaLSA calls ``closure(backwards=False)``
        loss = run.optimizer.step(lambda backwards=False: timed(backwards))
    else:
        loss = run.optimizer.step(timed)
    sync()
    total = time.perf_counter() - start
    parts["optimizer"] = total - parts["fwd_bwd"] - parts["trials"] - parts["sync"]
    run.diagnostics.add(run.optimizer)
    if run.scheduler is not None:
        run.scheduler.step()
    return float(loss), parts | {"total": total}


def timed_steps(args: argparse.Namespace) -> list[dict]:
    tok = tokenizer()
    cached, _ = train_batches(args, tok, args.steps)  # SST-2: 4,210 batches a pass, 1,000 timed
    runs = [
        build(s, make_model(args.model, len(tok)).to(args.device), args.steps)
        for s in args.optimizers
    ]

    def steps_of(run: Run) -> int:
        return args.short_steps if run.name in args.short else args.steps

    cuda = args.device == "cuda"
    warm = {run.name: warm_up(run, cached[:2], cuda) for run in runs}
    log: dict[str, dict[str, list]] = {r.name: {} for r in runs}
    for start in range(0, args.steps, args.block):
        shift = (start // args.block) % len(runs)  # no optimizer always runs first
        for run in runs[shift:] + runs[:shift]:
            for i in range(start, min(start + args.block, steps_of(run))):
                with autocast(args.device, args.bf16):
                    loss, parts = timed_step(run, cached[i], cuda)
                parts |= {"loss": loss, "size": step_size(run)}
                for key, value in parts.items():
                    log[run.name].setdefault(key, []).append(value)
        print(f"  {min(start + args.block, args.steps)}/{args.steps} steps", flush=True)
    base = log[runs[0].name]["total"]
    rows = []
    for run in runs:
        own, n = log[run.name], steps_of(run)
        first, whole = (window_ratios(own["total"], base, k) for k in (args.first, args.steps))
        tail = own["loss"][-100:]
        rows.append(
            {
                "optimizer": run.name,
                "steps": n,
                "s_per_step": sum(own["total"]) / n,
                "first": first,
                "whole": whole,
                "ratio_to_adamw": whole["total"],  # over its steps (the claims table reads it)
                "median_ratio_to_adamw": whole["median"],
                "forwards_per_step": run.forwards.count / n,
                "trials_per_step": sum(own["trial_calls"]) / n,
                **{f"ms_{p}": 1000 * sum(own[p]) / n for p in PARTS},
                "final_step_size": step_size(run),
                "train_loss_last100": sum(tail) / len(tail),
                "step_sizes": own["size"],
                "seconds": own["total"],
                "per_step": run.diagnostics.columns,
                "warm_up_s": warm[run.name],
            }
        )
    return rows


def warm_up(run: Run, batches: list[dict], cuda: bool) -> float:
    """Seconds of two steps of ``run``'s spec on a copy of its model (then dropped), before any
    timed step, with the random state restored after: what a first step compiles (``+fused``:
    the kernels) stays out of the step times."""
    twin = build(run.name, copy.deepcopy(run.model), len(batches))
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        start = time.perf_counter()
        for batch in batches:
            timed_step(twin, batch, cuda)
        return time.perf_counter() - start


def probe_memory(spec: str, args: argparse.Namespace) -> float:
    """Peak memory (MB) of 20 steps of ``spec``; meant to run alone in a fresh process."""
    tok = tokenizer()
    run = build(spec, make_model(args.model, len(tok)).to(args.device), 20)
    for batch in train_batches(args, tok, 20)[0]:
        with autocast(args.device, args.bf16):
            run.step(batch)
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM, the peak resident set of this process image (ru_maxrss would carry the parent's
    # peak over fork + exec)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def peak_memory(spec: str, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "benchmarks.step_cost", "--probe-memory", spec]
    command += ["--device", args.device, "--model", args.model] + ["--bf16"] * args.bf16
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def ratio_cell(window: dict, k: int, key: str) -> str:
    return f"{window[key]:.2f}" + ("†" if window["steps"] < k else "")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def cost_table(rows: list[dict], args: argparse.Namespace, memory: bool) -> str:
    first, whole = rows[0]["first"]["steps"], rows[0]["whole"]["steps"]  # AdamW's: all steps
    header = ["optimizer", "steps", "s/step"]
    header += [f"{kind} x AdamW ≤{k}" for k in (first, whole) for kind in ("total", "median")]
    header += ["fwd/step", "fwd+bwd ms", "trials ms", "optimizer ms", "sync ms", "final step size"]
    header += ["loss last 100", "warm-up s"] + ["peak MB", "peak x AdamW"] * memory
    cells = []
    for r in rows:
        sync = f"{r['ms_sync']:.1f}" if args.device == "cuda" else "–"
        line = [r["optimizer"], str(r["steps"]), f"{r['s_per_step']:.4f}"]
        line += [
            ratio_cell(r[w], k, key)
            for w, k in (("first", first), ("whole", whole))
            for key in ("total", "median")
        ]
        line += [f"{r['forwards_per_step']:.2f}"]
        line += [f"{r[f'ms_{p}']:.1f}" for p in PARTS[:3]] + [sync]
        line += [f"{r['final_step_size']:.3g}", f"{r['train_loss_last100']:.4f}"]
        line += [f"{r['warm_up_s']:.1f}" if "warm_up_s" in r else "–"]
        if memory:
            line += [f"{r['peak_mb']:.0f}", f"{r['peak_vs_adamw']:.2f}"]
        cells.append(line)
    return table(header, cells)


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
    settings = {k: getattr(args, k) for k in keys} | {"device": device_name(args.device)}
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
                append_run(log, done[spec])
    rows = [done[spec] for spec in specs]
    grid = rows[: len(args.grid)]
    best, target = grid_target({r["optimizer"]: r["final_metric"] for r in grid})
    grid_seconds = sum(r["train_seconds"] for r in grid)
    costs = cost_ratios(Path(args.cost_from), args.steps)
    costs |= {r["optimizer"]: 1.0 for r in grid}  # AdamW's step is the unit
    best_step = time_to_target(next(r for r in grid if r["optimizer"] == best)["history"], target)
    best_step = best_step["step"]  # the best run reaches its own final metric
    grid_steps = len(grid) * args.steps
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
        cells[-1] += [*in_steps, f"{r['train_seconds']:.1f}", reached, share]
        cells[-1].append(f"{r['forwards_per_step']:.2f}")
    header = ["optimizer", "final dev acc", "best dev acc", "AdamW steps to target"]
    header += ["x best AdamW", "x grid steps", "train s", "s to target", "x grid s", "fwd/step"]
    best_hit = next(r for r in grid if r["optimizer"] == best)["time_to_target"]
    meta = (
        f"Time to target, {args.task.upper()} dev accuracy (first {args.dev_limit or 'all'} dev "
        f"examples, every {args.eval_every} steps), {TITLE[args.model]}, batch 16, max length "
        f"{MAX_LENGTH[args.model]}, {args.steps} steps per run; target {target:.4f} = final "
        f"accuracy of the best AdamW grid point {best} (grid {', '.join(map(str, args.grid))}, "
        f"10 % warmup + cosine); the whole AdamW grid trained {grid_seconds:.0f} s, the best run "
        f"reached the target after {best_hit:.0f} s (step {best_step}); training time only "
        f"(evaluation excluded); AdamW steps: step at the target × step time over AdamW's "
        f"from {args.cost_from} (one interleaved run; the seconds columns are sequential runs' "
        f"wall times); "
        f"device {device_name(args.device)}; bf16 {args.bf16}; torch {torch.__version__}"
    )
    return meta, table(header, cells), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MAX_LENGTH), default="minilm")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--first", type=int, default=300, help="the shorter ratio window")
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument(
        "--short",
        nargs="*",
        default=EVERY_STEP,
        help="optimizers that search every step: their cost per step is flat, so they run only "
        "the first --short-steps steps (ratios against AdamW's same steps)",
    )
    parser.add_argument("--short-steps", type=int, default=300)
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--rows-from", help="reuse the timings of this JSON result")
    parser.add_argument("--time-to-target", action="store_true")
    parser.add_argument("--task", choices=["sst2", "mrpc"], default="sst2")
    parser.add_argument("--grid", nargs="+", type=float, default=GRID, help="AdamW lrs")
    parser.add_argument("--lr-free", nargs="+", default=LR_FREE)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--dev-limit", type=int, help="evaluate on the first N dev examples")
    parser.add_argument(
        "--cost-from",
        help="the step-cost JSON whose ratios convert steps to AdamW steps (default: "
        "benchmarks/results/step_cost_<model>_<device>.json)",
    )
    parser.add_argument("--out", help="default: benchmarks/results/<step_cost|time_to_target>_…")
    parser.add_argument("--probe-memory", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory:
        print(probe_memory(args.probe_memory, args))
        return
    device = "gpu" if args.device == "cuda" else "cpu"
    if args.time_to_target:
        name = f"time_to_target_{args.task}_{args.model}_{args.steps}steps_{device}"
        args.cost_from = (
            args.cost_from or f"benchmarks/results/step_cost_{args.model}_{device}.json"
        )
        args.out = args.out or f"benchmarks/results/{name}"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_results(Path(args.out), *time_to_target_runs(args))
        return
    args.out = args.out or f"benchmarks/results/step_cost_{args.model}_{device}"
    started = time.time()
    if args.rows_from:  # fill in the memory columns of an earlier timing run
        earlier = json.loads(Path(args.rows_from).read_text())
        rows, meta = earlier["rows"], earlier["meta"].split("; peak memory")[0]
    else:
        rows = timed_steps(args)
        meta = (
            f"SST-2 train, {TITLE[args.model]}, batch 16, max length {MAX_LENGTH[args.model]}, "
            f"{args.steps} steps per optimizer (every-step searchers {args.short_steps}), "
            f"interleaved blocks of {args.block}; ratios: total and median step time over the "
            f"first {min(args.first, args.steps)} and all {args.steps} steps (†: over the run's "
            f"fewer steps); device {device_name(args.device)}; bf16 {args.bf16}; "
            f"torch {torch.__version__}; wall {time.time() - started:.0f} s"
        )
    if args.memory:
        for row in rows:
            row["peak_mb"] = peak_memory(row["optimizer"], args)
        for row in rows:
            row["peak_vs_adamw"] = row["peak_mb"] / rows[0]["peak_mb"]
        meta += "; peak memory: each optimizer alone, 20 steps in a fresh process"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results(Path(args.out), meta, cost_table(rows, args, args.memory), rows)


if __name__ == "__main__":
    main()
