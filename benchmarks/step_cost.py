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

Time to target (``--time-to-target``): ``benchmarks/time_to_target.py``.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    ROOT,
    Run,
    autocast,
    checked_device,
    classifier,
    device_name,
    endless,
    glue_examples,
    loader,
    positive_int,
    step_size,
    to_device,
    tokenizer,
    warn_if_bf16_emulated,
    write_results,
)
from benchmarks.specs import DEFAULT, build, check_specs, default_mode
from lsframe.optim import info, line_searches, make_closure

MAX_LENGTH = {"minilm": 64, "small-bert": 32}
TITLE = {"minilm": "MiniLM-L6", "small-bert": "small BERT (hidden 128, 2 layers)"}
# the line searches that search with forward trials at every step (not amortised, as SaLSA's)
EVERY_STEP = [n for n in line_searches() if info(n).forward_trials and not info(n).amortized]
# AdamW first (the base of the ratios), lsframe's LR-free default, SaLSA, the other searches
OPTIMIZERS = [
    "adamw-const@5e-5",
    "adamw-fused-const@5e-5",  # torch's fused CPU/GPU kernel: shown beside, not the base
    DEFAULT,
    default_mode("fused"),
    "salsa",
    *EVERY_STEP,
]
GRID = [1e-5, 2e-5, 5e-5, 1e-4]
LR_FREE = [DEFAULT, default_mode("fused"), "salsa"]
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


def make_model(setting: str, vocab_size: int, seed: int = 0) -> nn.Module:
    """The two-label classifier of ``setting`` (see the module docstring), in train mode."""
    if setting == "minilm":
        return classifier(2, seed)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    shape = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = BertConfig(vocab_size=vocab_size, intermediate_size=512, num_labels=2, **shape)
    return BertForSequenceClassification(config).train()


def train_batches(
    args: argparse.Namespace, tok: Any, count: int, task: str = "sst2", seed: int = 0
) -> tuple[list[dict], int]:
    """``count`` training batches, cycling over the task's training set in an order drawn from
    ``seed``, and the number of batches in one pass over it."""
    data = loader(glue_examples(task, "train"), tok, MAX_LENGTH[args.model], 16, seed=seed)
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
    with autocast(args.device, args.bf16):  # as the timed steps: their first-use costs too
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
    timed step and under the same autocast, with the random state restored after: what a first
    step compiles or sets up (``+fused``: the kernels; bf16: the first bf16 products) stays out
    of the step times."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MAX_LENGTH), default="minilm")
    parser.add_argument("--steps", type=positive_int, default=1000)
    parser.add_argument("--first", type=positive_int, default=300, help="the shorter ratio window")
    parser.add_argument("--block", type=positive_int, default=25)
    parser.add_argument(
        "--short",
        nargs="*",
        default=EVERY_STEP,
        help="optimizers that search every step: their cost per step is flat, so they run only "
        "the first --short-steps steps (ratios against AdamW's same steps)",
    )
    parser.add_argument("--short-steps", type=positive_int, default=300)
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--rows-from", help="reuse the timings of this JSON result")
    parser.add_argument("--time-to-target", action="store_true")
    parser.add_argument("--task", choices=["sst2", "mrpc"], default="sst2")
    parser.add_argument("--grid", nargs="+", type=float, default=GRID, help="AdamW lrs")
    parser.add_argument("--lr-free", nargs="+", default=LR_FREE)
    parser.add_argument("--eval-every", type=positive_int, default=25)
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="time to target: paired seeds"
    )
    parser.add_argument(
        "--dev-limit", type=positive_int, help="evaluate on the first N dev examples"
    )
    parser.add_argument(
        "--cost-from",
        nargs="+",
        help="the step-cost JSONs whose ratios convert steps to AdamW steps, each optimizer's "
        "from the first that timed it (default: benchmarks/results/step_cost_<model>_<device>.json)",
    )
    parser.add_argument("--out", help="default: benchmarks/results/<step_cost|time_to_target>_…")
    parser.add_argument("--probe-memory", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    checked_device(parser, args.device)
    for path in [args.rows_from] if args.rows_from else []:
        if not Path(path).is_file():
            parser.error(f"--rows-from: no such file {path}")
    warn_if_bf16_emulated(args.device, args.bf16)
    if args.probe_memory:
        print(probe_memory(args.probe_memory, args))
        return
    check_specs(args.lr_free if args.time_to_target else args.optimizers)
    device = "gpu" if args.device == "cuda" else "cpu"
    if args.time_to_target:
        name = f"time_to_target_{args.task}_{args.model}_{args.steps}steps_{device}"
        args.cost_from = args.cost_from or [
            f"benchmarks/results/step_cost_{args.model}_{device}.json"
        ]
        args.out = args.out or f"benchmarks/results/{name}"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from benchmarks.time_to_target import time_to_target_runs  # it builds on this module

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
            f"{args.steps} steps per optimizer (every-step searchers "
            f"{min(args.short_steps, args.steps)}), "
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
