"""Valley exploration (P2): ALTO vs Lamb vs AdamW at large batch, AdamE vs AdamW at small batch.

Both parts train through lsframe's own Lightning stack, every optimizer with the same 10 % warmup
+ cosine schedule; nothing is tuned on the reported test or dev sets.

``--part large-batch`` (default): a timm ResNet-18 (1 input channel, random init) on Fashion-MNIST
(Debian ``dataset-fashion-mnist``: 54k train after a seeded 10 % validation hold-out, the official
10k test set) with batch 1,024 for a fixed budget of ``--steps`` optimizer steps (the default
stops well before accuracy saturates); test accuracy. AdamW lr 2e-3 wd 0.01, Lamb lr 1e-2 wd 0.01,
ALTO lr 1e-2 with its defaults (α = −5, β1 = 0.99 at this batch size, λ = 1e-4).

    python -m benchmarks.valley --part large-batch --seeds 0 1 2

``--part finetune``: MiniLM-L6 on the first 2,000 SST-2 sentences, batch 32, max length 64,
1 epoch, AdamW vs AdamE (α = 0.5, β1 = 0.01 by the batch-size rule), both lr 5e-5; dev accuracy.

    python -m benchmarks.valley --part finetune --seeds 0 1 2

Each finished run is appended to ``<out>.runs.jsonl`` and reused by later invocations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks.common import (
    GLUE_DIR,
    adamw,
    append_run,
    beside,
    load_runs,
    logged_machines,
    mean_std,
    minilm_module,
    quiet_trainer,
    write_results,
)
from lsframe.data import GlueDataModule, IdxImageDataModule
from lsframe.modules import ImageClassificationModule
from lsframe.optim import ALTO, AdamE, Lamb, WarmupCosineLR

FASHION = Path("/usr/share/datasets/fashion-mnist")
LARGE_BATCH = {
    "adamw": adamw(2e-3),
    "lamb": partial(Lamb, lr=1e-2, weight_decay=0.01),
    "alto": partial(ALTO, lr=1e-2),
}
FINETUNE = {
    "adamw": adamw(5e-5),
    "adame": partial(AdamE, lr=5e-5, weight_decay=0.01, batch_size=32),
}


def fit(module, data, seed: int, **trainer_kwargs) -> tuple[pl.Trainer, float]:
    trainer = quiet_trainer(**trainer_kwargs)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return trainer, time.perf_counter() - started


def large_batch_run(name: str, seed: int, args: argparse.Namespace) -> dict:
    pl.seed_everything(seed, verbose=False)
    module = ImageClassificationModule(
        "resnet18",
        num_classes=10,
        in_chans=1,
        optimizer=LARGE_BATCH[name],
        lr_scheduler=partial(WarmupCosineLR, warmup_ratio=0.1),
    )
    data = IdxImageDataModule(str(FASHION), batch_size=args.batch_size, eval_batch_size=1000)
    trainer, seconds = fit(module, data, seed, max_steps=args.steps, limit_val_batches=0)
    (scores,) = trainer.test(module, datamodule=data, verbose=False)
    return {"test_acc": scores["test/acc"], "seconds": seconds}


def finetune_run(name: str, seed: int, args: argparse.Namespace) -> dict:
    pl.seed_everything(seed, verbose=False)
    module = minilm_module(FINETUNE[name])
    data = GlueDataModule(
        task_name="sst2",
        data_dir=str(GLUE_DIR),
        batch_size=32,
        max_length=64,
        train_limit=args.train_limit,
        val_limit=args.val_limit,
    )
    trainer, seconds = fit(module, data, seed, max_epochs=1)
    metrics = trainer.callback_metrics
    return {"dev_acc": float(metrics["val/acc"]), "seconds": seconds, "steps": trainer.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["large-batch", "finetune"], default="large-batch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--optimizers", nargs="+", default=None)
    parser.add_argument("--train-limit", type=int, default=2000, help="finetune: SST-2 sentences")
    parser.add_argument("--val-limit", type=int, default=None, help="finetune: dev sentences")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    table = LARGE_BATCH if args.part == "large-batch" else FINETUNE
    names = args.optimizers or list(table)
    run = large_batch_run if args.part == "large-batch" else finetune_run
    out = Path(args.out or f"benchmarks/results/valley_{args.part.replace('-', '_')}_cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = beside(out, ".runs.jsonl")
    here = (
        {"steps": args.steps, "batch_size": args.batch_size}
        if args.part == "large-batch"
        else {"train_limit": args.train_limit, "val_limit": args.val_limit}
    )
    logged_before = {"train_limit": 2000, "val_limit": None}
    known = {(r["optimizer"], r["seed"]): r for r in load_runs(log, here, logged_before)}
    rows = []
    for seed in args.seeds:
        for name in names:
            row = known.get((name, seed))
            if row is None:
                row = {"optimizer": name, "seed": seed, **here, **run(name, seed, args)}
                append_run(log, row)
            rows.append(row)
    metric = "test_acc" if args.part == "large-batch" else "dev_acc"
    lines = [f"| optimizer | seeds | {metric.replace('_', ' ')} | s/run |", "|---|---|---|---|"]
    for name in names:
        values = [r[metric] for r in rows if r["optimizer"] == name]
        seconds = statistics.mean(r["seconds"] for r in rows if r["optimizer"] == name)
        lines.append(f"| {name} | {len(values)} | {mean_std(values)} | {seconds:.0f} |")
    setting = (
        f"ResNet-18 on Fashion-MNIST, batch {args.batch_size}, {args.steps} steps"
        if args.part == "large-batch"
        else f"MiniLM-L6 on the first {args.train_limit:,} SST-2 sentences, batch 32, 1 epoch"
    )
    meta = (
        f"{setting}; warmup 10 % + cosine; seeds {args.seeds}; device {logged_machines(rows)}; "
        f"torch {torch.__version__}. Mean ± std over seeds."
    )
    write_results(out, meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
