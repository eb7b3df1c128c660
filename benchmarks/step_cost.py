"""Step cost of each optimizer as a ratio to torch AdamW(foreach), measured interleaved.

Every optimizer trains its own copy of MiniLM-L6 on the same SST-2 batches (batch 16, max
length 64, dynamic padding). The runs take turns in blocks of ``--block`` steps, so drift in
the machine's speed hits all of them alike. Reported: mean seconds per step, the ratio to
AdamW, forward passes per step, the step size at the end; with ``--memory``, peak memory of
each optimizer alone in a fresh process (max RSS on CPU, ``max_memory_allocated`` on CUDA).
The JSON keeps each run's per-step diagnostics (``per_step``: step sizes, a line search's
trials and sufficient-decrease ratios; :class:`benchmarks.common.StepDiagnostics`).

    python -m benchmarks.step_cost --steps 1000 --out benchmarks/results/step_cost_cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (
    ROOT,
    build,
    classifier,
    command_line,
    device_name,
    endless,
    glue_examples,
    loader,
    step_size,
    tokenizer,
)
from lsframe.optim import info, line_searches

# AdamW first (the base of the ratios), every lsframe line search, the authors' SaLSA
OPTIMIZERS = ["adamw-const@5e-5", *line_searches(), "salsa-reference"]
# the line searches that search at every step (not amortised, as SaLSA's are)
EVERY_STEP = [name for name in line_searches() if not info(name).amortized]


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def timed_steps(args: argparse.Namespace) -> list[dict]:
    tok = tokenizer()
    data = glue_examples("sst2", "train")
    batches = endless(loader(data, tok, 64, 16, seed=0))
    cached = [to_device(next(batches), args.device) for _ in range(args.steps)]
    runs = []
    for spec in args.optimizers:
        runs.append(build(spec, classifier(2, seed=0).to(args.device), args.steps))

    def steps_of(run) -> int:
        return args.short_steps if run.name in args.short else args.steps

    seconds = {r.name: [] for r in runs}
    losses = {r.name: [] for r in runs}
    sizes = {r.name: [] for r in runs}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for start in range(0, args.steps, args.block):
        # rotate the order each block so no optimizer always runs first
        shift = (start // args.block) % len(runs)
        for run in runs[shift:] + runs[:shift]:
            if start >= steps_of(run):
                continue
            for i in range(start, min(start + args.block, steps_of(run))):
                sync()
                t0 = time.perf_counter()
                with autocast(args.device, args.bf16):
                    loss = run.step(cached[i])
                sync()
                seconds[run.name].append(time.perf_counter() - t0)
                losses[run.name].append(loss)
                sizes[run.name].append(step_size(run))
        done = min(start + args.block, args.steps)
        print(f"  {done}/{args.steps} steps", flush=True)
    base = sum(seconds[runs[0].name]) / args.steps
    # the every-step searchers run the first short_steps only: compare them to AdamW there
    base_short = sum(seconds[runs[0].name][: args.short_steps]) / args.short_steps
    median_base = statistics.median(seconds[runs[0].name])
    rows = []
    for run in runs:
        n = steps_of(run)
        mean = sum(seconds[run.name]) / n
        tail = losses[run.name][-100:]  # of its own steps
        rows.append(
            {
                "optimizer": run.name,
                "steps": n,
                "s_per_step": mean,
                "ratio_to_adamw": mean / (base if n == args.steps else base_short),
                # the median step leaves out the long first searches (from step size 1)
                "median_ratio_to_adamw": statistics.median(seconds[run.name]) / median_base,
                "forwards_per_step": run.forwards.count / n,
                "final_step_size": step_size(run),
                "train_loss_last100": sum(tail) / len(tail),
                "step_sizes": sizes[run.name],
                "seconds": seconds[run.name],
                "per_step": run.diagnostics.columns,  # a line search's trials and ratios too
            }
        )
    return rows


def probe_memory(spec: str, device: str, bf16: bool) -> float:
    """Peak memory (MB) of 20 steps of ``spec``; meant to run alone in a fresh process."""
    tok = tokenizer()
    batches = endless(loader(glue_examples("sst2", "train", 2000), tok, 64, 16, seed=0))
    run = build(spec, classifier(2, seed=0).to(device), 20)
    for _ in range(20):
        with autocast(device, bf16):
            run.step(to_device(next(batches), device))
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM, the peak resident set of this process image (ru_maxrss would carry the parent's
    # peak over fork + exec)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def peak_memory(spec: str, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "benchmarks.step_cost", "--probe-memory", spec]
    out = subprocess.run(
        command + ["--device", args.device] + ["--bf16"] * args.bf16,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument(
        "--short",
        nargs="*",
        default=EVERY_STEP,
        help="optimizers that search every step: their cost per step is flat, so they run only "
        "the first --short-steps steps (ratio against AdamW's same steps)",
    )
    parser.add_argument("--short-steps", type=int, default=200)
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--out", default="benchmarks/results/step_cost")
    parser.add_argument("--probe-memory", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--rows-from", help="reuse the timings of this JSON result")
    args = parser.parse_args()
    if args.probe_memory:
        print(probe_memory(args.probe_memory, args.device, args.bf16))
        return
    started = time.time()
    command = command_line()
    if args.rows_from:  # fill in the memory columns of an earlier timing run
        earlier = json.loads(Path(args.rows_from).read_text())
        rows = earlier["rows"]
        command = f"{earlier.get('command', 'the timing run')}, then {command}"
    else:
        rows = timed_steps(args)
    if args.memory:
        for row in rows:
            row["peak_mb"] = peak_memory(row["optimizer"], args)
        base = rows[0]["peak_mb"]
        for row in rows:
            row["peak_vs_adamw"] = row["peak_mb"] / base
    header = [
        "optimizer",
        "steps",
        "s/step",
        "x AdamW",
        "median x AdamW",
        "fwd/step",
        "final step size",
        "loss last 100",
    ]
    if args.memory:
        header += ["peak MB", "peak x AdamW"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["optimizer"],
            str(r["steps"]),
            f"{r['s_per_step']:.4f}",
            f"{r['ratio_to_adamw']:.2f}",
            f"{r['median_ratio_to_adamw']:.2f}",
            f"{r['forwards_per_step']:.2f}",
            f"{r['final_step_size']:.3g}",
            f"{r['train_loss_last100']:.4f}",
        ]
        if args.memory:
            cells += [f"{r['peak_mb']:.0f}", f"{r['peak_vs_adamw']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if args.rows_from:
        meta = earlier["meta"].split("; peak memory")[0]
    else:
        meta = (
            f"SST-2 train, MiniLM-L6, batch 16, max length 64, {args.steps} steps per optimizer "
            f"(every-step searchers {args.short_steps}), interleaved blocks of {args.block}; "
            f"device {device_name(args.device)}; bf16 {args.bf16}; torch {torch.__version__}; "
            f"wall {time.time() - started:.0f} s"
        )
    if args.memory:
        meta += "; peak memory: each optimizer alone, 20 steps in a fresh process"
    table = "\n".join(lines)
    print(meta + "\n\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(f"{meta}\n\nCommand: `{command}`\n\n{table}\n")
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "command": command, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
