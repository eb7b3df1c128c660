"""DPS and ChildTuning-D vs vanilla fine-tuning in P4's low-resource setting, and their overhead.

Quality (the default): the real MiniLM-L6 fine-tuned through lsframe's own Lightning stack
(``SequenceClassificationModule`` + ``GlueDataModule`` + the callbacks) on a seeded random
1,000-example subset of a GLUE training set (a different subset per seed, as P4's low-resource
runs), 3 epochs, batch 16, max length 128, AdamW lr 5e-5, weight decay 0.01, 10 % warmup and
cosine decay; the full dev set at the end. Methods: ``vanilla``, ``dps`` (DPS defaults: p 0.3,
update ratio 0.05) and ``childtuning_d`` (reserve 0.3, Fisher over the training subset). Every
finished run is appended to ``<out>.runs.jsonl`` and reused by later invocations.

    python -m benchmarks.dps --tasks rte mrpc --seeds 0 1 2 3 4

Overhead (``--overhead``): seconds per optimizer step of a plain PyTorch loop (lsframe's closure
for the forward and backward, then AdamW) with and without each callback's gradient work (DPS
stage I scoring, DPS stage II masking, ChildTuning-D masking), taking turns in blocks on the same
batches; ratios of the medians.

    python -m benchmarks.dps --overhead --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import torch

from benchmarks.common import (
    GLUE_DIR,
    adamw,
    append_run,
    classifier,
    device_name,
    glue_examples,
    load_runs,
    loader,
    mean_std,
    minilm_module,
    quiet_trainer,
    tokenizer,
    write_results,
)
from lsframe.callbacks import DPS, ChildTuningD
from lsframe.callbacks.masking import global_top_fraction_masks, top_fraction_mask
from lsframe.data import GlueDataModule
from lsframe.optim import make_closure

METHODS = {
    "vanilla": lambda args: [],
    "dps": lambda args: [DPS(update_ratio=args.update_ratio)],
    "childtuning_d": lambda args: [ChildTuningD()],
}


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
        callbacks=METHODS[method](args),
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
    lines = ["| task | method | seeds | dev acc | dev f1 | s/run |", "|---|---|---|---|---|---|"]
    for task in args.tasks:
        for method in args.methods:
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            cells = [task, method, str(len(runs))]
            for key in ("acc", "f1"):
                values = [r[key] for r in runs if key in r]
                cells.append(mean_std(values) if values else "–")
            cells.append(f"{statistics.mean(r['seconds'] for r in runs):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    meta = (
        f"MiniLM-L6, seeded random {args.train_size}-example training subsets, {args.epochs} "
        f"epochs, batch 16, max length 128, AdamW lr {args.lr} wd 0.01, warmup 10 % + cosine; "
        f"full dev sets; seeds {args.seeds}; device {device_name()}; torch "
        f"{torch.__version__}. Mean ± std over seeds."
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
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, default=10, help="overhead: steps per turn")
    parser.add_argument("--update-ratio", type=float, default=0.05, help="DPS stage length")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    kind = "dps_overhead" if args.overhead else "dps_quality"
    args.out = Path(args.out or f"benchmarks/results/{kind}_cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.log = args.out.with_suffix(".runs.jsonl")
    overhead(args) if args.overhead else quality(args)


if __name__ == "__main__":
    main()
