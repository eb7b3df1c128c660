"""DPS and ChildTuning-D vs vanilla fine-tuning in P4's low-resource setting, and their overhead.

Quality (the default): the real MiniLM-L6 fine-tuned through lsframe's own Lightning stack
(``SequenceClassificationModule`` + ``GlueDataModule`` + the callbacks) on a seeded random
1,000-example subset of a GLUE training set (a different subset per seed, as P4's low-resource
runs), 3 epochs, batch 16, max length 128, AdamW lr 5e-5, weight decay 0.01, 10 % warmup and
cosine decay; the full dev set at the end. Methods: ``vanilla``, ``dps`` (DPS defaults: p 0.3,
update ratio 0.05) and ``childtuning_d`` (reserve 0.3, Fisher over the training subset). Every
finished run is appended to ``<out>.runs.jsonl`` and reused by later invocations.

    python -m benchmarks.dps --tasks rte mrpc --seeds 0 1 2 3 4

P4's protocol (``--protocol p4``): the full RTE and MRPC training sets for P4's 468 and 690
optimizer steps (3 epochs at batch 16), max length 128, AdamW lr 2e-5, weight decay 0.01, 10 %
warmup then linear decay (the Hugging Face Trainer's default schedule, which P4's script uses),
the final model on the full dev set; ``vanilla``, ``dps`` (dense), ``dps_mix`` and
``childtuning_d``; DPS runs without dropout, as P4's script sets it (``--dps-dropout model``
keeps the model's). Mean and std over seeds; ``<out>.runs.jsonl`` is reused across invocations,
so an interrupted command continues with the runs it lacks. ``--max-steps N`` stops each run
after N steps (stage lengths and schedule stay P4's) to check the command; its results go to a
temporary folder unless ``--out`` is given.

    python -m benchmarks.dps --protocol p4 --seeds 0 1 2 3 4

Overhead (``--overhead``): seconds per optimizer step of a plain PyTorch loop (lsframe's closure
for the forward and backward, then AdamW) with and without each callback's gradient work (DPS
stage I scoring, DPS stage II masking, ChildTuning-D masking), taking turns in blocks on the same
batches; ratios of the medians.

    python -m benchmarks.dps --overhead --steps 200
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import torch
from torch import nn

from benchmarks.common import (
    GLUE_DIR,
    MINILM,
    adamw,
    append_run,
    beside,
    classifier,
    device_name,
    glue_examples,
    load_runs,
    loader,
    logged_machines,
    mean_std,
    minilm_module,
    quiet_trainer,
    tokenizer,
    write_results,
)
from lsframe.callbacks import DPS, ChildTuningD, DPSMix
from lsframe.callbacks.masking import global_top_fraction_masks, top_fraction_mask
from lsframe.data import GlueDataModule
from lsframe.optim import make_closure

# each method's callbacks for a run of ``steps`` optimizer steps (None: the run's own count)
METHODS = {
    "vanilla": lambda args, steps: [],
    "dps": lambda args, steps: [DPS(update_ratio=args.update_ratio, max_steps=steps)],
    "dps_mix": lambda args, steps: [DPSMix(update_ratio=args.update_ratio, max_steps=steps)],
    "childtuning_d": lambda args, steps: [ChildTuningD(num_batches=args.max_steps)],
}
P4_STEPS = {"rte": 468, "mrpc": 690, "stsb": 1080, "cola": 1605}  # P4's run_glue.sh
DPS_METHODS = ("dps", "dps_mix")


def settings(args: argparse.Namespace) -> dict:
    return {
        "train_size": args.train_size,
        "epochs": args.epochs,
        "lr": args.lr,
        "update_ratio": args.update_ratio,
    }


def one_run(task: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    pl.seed_everything(seed, verbose=False)
    module = minilm_module(adamw(args.lr))
    data = GlueDataModule(
        task_name=task,
        data_dir=str(GLUE_DIR),
        batch_size=16,
        max_length=128,
        train_subsample=args.train_size,
        seed=seed,
    )
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        check_val_every_n_epoch=args.epochs,
        callbacks=METHODS[method](args, None),
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    row = {"task": task, "method": method, "seed": seed, **settings(args)}
    row["steps"] = trainer.global_step
    row.update({k.split("/", 1)[1]: v for k, v in metrics.items()}, seconds=seconds)
    append_run(args.log, row)
    return row


def method_table(
    rows: list[dict], args: argparse.Namespace, columns: list[str], timing
) -> list[str]:
    """Markdown lines: one row per task and method, the dev accuracy and F1 as mean ± std over
    seeds, then the cells ``timing(runs)`` gives (the ``columns`` after the two metrics)."""
    lines = ["| " + " | ".join(["task", "method", "seeds", *columns]) + " |"]
    lines.append("|" + "---|" * (3 + len(columns)))
    for task in args.tasks:
        for method in args.methods:
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not runs:  # not run yet (a table of the logged runs)
                continue
            cells = [task, method, str(len(runs))]
            for key in ("acc", "f1"):
                values = [r[key] for r in runs if key in r]
                cells.append(mean_std(values) if values else "–")
            lines.append("| " + " | ".join(cells + timing(runs)) + " |")
    return lines


def quality(args: argparse.Namespace) -> None:
    # runs logged with other settings are not reused (they would mix into this table)
    here = settings(args)
    known = {
        (r["task"], r["method"], r["seed"]): r
        for r in load_runs(args.log, here, logged_before={"update_ratio": 0.05})
    }
    rows = [
        known.get((task, method, seed)) or one_run(task, method, seed, args)
        for task in args.tasks
        for seed in args.seeds
        for method in args.methods
    ]
    lines = method_table(
        rows,
        args,
        ["dev acc", "dev f1", "s/run"],
        lambda runs: [f"{statistics.mean(r['seconds'] for r in runs):.0f}"],
    )
    meta = (
        f"MiniLM-L6, seeded random {args.train_size}-example training subsets, {args.epochs} "
        f"epochs, batch 16, max length 128, AdamW lr {args.lr} wd 0.01, warmup 10 % + cosine; "
        f"full dev sets; seeds {args.seeds}; device {logged_machines(rows)}; torch "
        f"{torch.__version__}. Mean ± std over seeds."
    )
    write_results(args.out, meta, "\n".join(lines), rows)


class StepTimer(pl.Callback):
    """Wall seconds of each training batch (one optimizer step at batch 16, no accumulation)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def p4_settings(args: argparse.Namespace) -> dict:
    return {
        "protocol": "p4",
        "lr": args.lr,
        "max_steps": args.max_steps,
        "update_ratio": args.update_ratio,
        "dps_dropout": args.dps_dropout,
    }


def linear_schedule(total: int):
    """P4's schedule: the Hugging Face Trainer's default, 10 % warmup (ceil) then linear decay."""
    from transformers import get_linear_schedule_with_warmup

    warmup = math.ceil(0.1 * total)
    return lambda opt: get_linear_schedule_with_warmup(opt, warmup, total)


def p4_run(task: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    from lsframe.modules import SequenceClassificationModule

    total = P4_STEPS[task]
    steps = min(total, args.max_steps or total)
    pl.seed_everything(seed, verbose=False)
    module = SequenceClassificationModule(
        MINILM, num_labels=2, optimizer=adamw(args.lr), lr_scheduler=linear_schedule(total)
    )
    if method in DPS_METHODS and args.dps_dropout == "reference":
        for layer in module.model.modules():  # P4's script: hidden and attention dropout 0
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
    data = GlueDataModule(
        task_name=task, data_dir=str(GLUE_DIR), batch_size=16, max_length=128, seed=seed
    )
    timer = StepTimer()
    trainer = quiet_trainer(
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        callbacks=[timer, *METHODS[method](args, total)],
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    check = quiet_trainer(limit_val_batches=2 if args.max_steps else 1.0)
    (metrics,) = check.validate(module, datamodule=data, verbose=False)
    row = {"task": task, "method": method, "seed": seed, **p4_settings(args)}
    row.update(steps=trainer.global_step, seconds=seconds)
    row["s_per_step"] = statistics.median(timer.seconds)
    row.update({k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("val/")})
    append_run(args.log, row)
    return row


def p4(args: argparse.Namespace) -> None:
    unknown = [t for t in args.tasks if t not in P4_STEPS]
    if unknown:
        raise SystemExit(
            f"--protocol p4: P4 gives no step count for {unknown}; use {list(P4_STEPS)}"
        )
    here = p4_settings(args)
    known = {(r["task"], r["method"], r["seed"]): r for r in load_runs(args.log, here)}
    if not args.table_only:
        for task in args.tasks:
            for seed in args.seeds:
                for method in args.methods:
                    if (task, method, seed) not in known:
                        p4_run(task, method, seed, args)  # logs its row
    # every logged run of these settings, not only this invocation's tasks, methods and seeds,
    # read again now: runs logged meanwhile by other processes stay in the table
    known = {(r["task"], r["method"], r["seed"]): r for r in load_runs(args.log, here)}
    rows = [known[key] for key in sorted(known, key=lambda k: k[2])]
    seeds = sorted({r["seed"] for r in rows})
    args = argparse.Namespace(**vars(args))  # the table's tasks and methods: those logged
    args.tasks = [task for task in P4_STEPS if any(r["task"] == task for r in rows)]
    args.methods = [method for method in METHODS if any(r["method"] == method for r in rows)]
    lines = method_table(
        rows,
        args,
        ["dev acc mean ± std", "dev f1 mean ± std", "s/step", "min/run"],
        lambda runs: [
            f"{statistics.median(r['s_per_step'] for r in runs):.3f}",
            f"{statistics.mean(r['seconds'] for r in runs) / 60:.1f}",
        ],
    )
    capped = f", stopped after {args.max_steps} steps (a check)" if args.max_steps else ""
    dropout = "0 for DPS runs (P4's script)" if args.dps_dropout == "reference" else "the model's"
    meta = (
        f"P4's GLUE protocol on MiniLM-L6: full training sets, {', '.join(f'{t} {P4_STEPS[t]}' for t in args.tasks)} "
        f"optimizer steps{capped}, batch 16, max length 128, AdamW lr {args.lr} wd 0.01, "
        "warmup 10 % + linear decay; DPS p 0.3, update ratio "
        f"{args.update_ratio}; ChildTuning-D reserve 0.3; dropout {dropout}; fp32; final model "
        f"on the full dev set; seeds {seeds}; device {logged_machines(rows)}; torch "
        f"{torch.__version__}. Mean ± sample std over seeds (P4 compares both)."
    )
    write_results(args.out, meta, "\n".join(lines), rows)


def overhead(args: argparse.Namespace) -> None:
    """Median step time with each callback's gradient work, as a ratio to the plain step."""
    torch.manual_seed(0)
    tok = tokenizer()
    batches = list(loader(glue_examples("rte", "train", 16 * 8), tok, 128, 16, seed=0))
    model = classifier(2, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    quiet = SimpleNamespace(log=lambda *a, **k: None)

    def prepared(callback, stage_two: bool):
        callback.params = dict(callback.select(model))
        if isinstance(callback, DPS):
            callback.stage_length = 2  # global_step 3 -> step 4: inside stage 2 (mask exists)
            if stage_two:
                callback.masks = {
                    n: top_fraction_mask(torch.rand_like(p), 0.7)
                    for n, p in callback.params.items()
                }
        else:
            scores = {n: torch.rand_like(p) for n, p in callback.params.items()}
            callback.masks = global_top_fraction_masks(scores, 0.3)
        return callback

    variants = {
        "plain AdamW step": None,
        "+ DPS stage I (scores)": prepared(DPS(), False),
        "+ DPS stage II (mask)": prepared(DPS(), True),
        "+ ChildTuning-D (mask)": prepared(ChildTuningD(), False),
    }
    steps = {"+ DPS stage I (scores)": 1, "+ DPS stage II (mask)": 3}
    times: dict[str, list[float]] = {name: [] for name in variants}
    block, i = args.block, 0
    while min(len(t) for t in times.values()) < args.steps:
        for name, callback in variants.items():
            for _ in range(block):
                batch = batches[i % len(batches)]
                i += 1
                started = time.perf_counter()
                make_closure(model, batch, optimizer)()  # zero_grad, forward, backward
                if callback is not None:
                    trainer = SimpleNamespace(global_step=steps.get(name, 0))
                    callback.on_gradients_ready(trainer, quiet, optimizer)
                optimizer.step()
                times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain AdamW step"])
    lines = ["| variant | median s/step | ratio to plain |", "|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.4f} | {median / base:.3f} |")
    meta = (
        f"MiniLM-L6 on RTE batches (batch 16, max length 128), AdamW; {args.steps} steps per "
        f"variant in interleaved blocks of {block}; device {device_name('cpu')}; torch "
        f"{torch.__version__}."
    )
    write_results(args.out, meta, "\n".join(lines), times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-5; p4: 2e-5")
    parser.add_argument("--protocol", choices=["quality", "p4"], default="quality")
    parser.add_argument("--max-steps", type=int, default=None, help="p4: stop runs early")
    parser.add_argument("--dps-dropout", choices=["reference", "model"], default="reference")
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, default=10, help="overhead: steps per turn")
    parser.add_argument("--update-ratio", type=float, default=0.05, help="DPS stage length")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--table-only", action="store_true", help="p4: the table of the logged runs; run none"
    )
    args = parser.parse_args()
    p4_mode = args.protocol == "p4" and not args.overhead
    if args.max_steps is not None and not p4_mode:
        parser.error("--max-steps belongs to --protocol p4")
    if args.table_only and not p4_mode:
        parser.error("--table-only belongs to --protocol p4")
    if args.lr is None:
        args.lr = 2e-5 if p4_mode else 5e-5
    kind = "dps_overhead" if args.overhead else "dps_p4" if p4_mode else "dps_quality"
    default = f"benchmarks/results/{kind}_cpu"
    if p4_mode and args.max_steps and args.out is None:  # a check stays out of the results
        default = str(Path(tempfile.gettempdir()) / "dps_p4_check")
    args.out = Path(args.out or default)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.log = beside(args.out, ".runs.jsonl")
    if args.overhead:
        overhead(args)
    else:
        p4(args) if p4_mode else quality(args)


if __name__ == "__main__":
    main()
