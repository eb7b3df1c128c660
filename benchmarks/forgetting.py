"""Catastrophic forgetting in sequential fine-tuning (P3's setting): plain fine-tuning vs EWC.

The real MiniLM-L6 fine-tuned on task A, then on task B, through lsframe's sequential runner
(each task its own head; AdamW lr 5e-5, wd 0.01, 10 % warmup + cosine per stage; batch 16, max
length 128; seeded random ``--train-size``-example training subsets; full dev sets). Pairs:
SST-2 → MRPC, MRPC → SST-2, RTE → SST-2, and SST-2 short → long sentences (length shift).
Reported: accuracy on A after A, on A after B (forgetting = the drop), on B. EWC uses a task-loss
Fisher (the offline MiniLM has no MLM head) over ``--fisher-batches`` batches.
``--distributions`` adds plain fine-tuning under learning-rate distributions (P3's BERTcL: a
preset name or a ``best_distribution.yaml`` of ``python -m lsframe search``; ``flat`` is none).

    python -m benchmarks.forgetting --pairs sst2-mrpc mrpc-sst2 --sweep 100 1000 10000 100000 \
        1000000 --seeds 0 --out benchmarks/results/forgetting_sweep_cpu      # λ sweep, 1 seed
    python -m benchmarks.forgetting --lambdas 100000 --seeds 0 1 2          # chosen λ, 3 seeds
    python -m benchmarks.forgetting --pairs sst2-mrpc mrpc-sst2 --lambdas 100000 \
        --distributions benchmarks/results/search/best_distribution.yaml bertcl_combined \
        benchmarks/results/search_combined/distribution.yaml \
        --seeds 0 1 2 --out benchmarks/results/distribution_cpu \
        --reuse-from benchmarks/results/forgetting_cpu.runs.jsonl

Every finished sequence is appended to ``<out>.runs.jsonl`` and reused by later invocations
(``--reuse-from`` adds other logs: the distribution table shares its flat and EWC runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

from benchmarks.common import (
    GLUE_DIR,
    QUIET_TRAINER,
    adamw,
    append_run,
    beside,
    load_runs,
    logged_machines,
    mean_std,
    minilm_module,
    write_results,
)
from lsframe.callbacks import EWC
from lsframe.data import GlueDataModule
from lsframe.sequential import SequenceRunner, Stage

PAIRS = {
    "sst2-mrpc": (("sst2", {}), ("mrpc", {})),
    "mrpc-sst2": (("mrpc", {}), ("sst2", {})),
    "rte-sst2": (("rte", {}), ("sst2", {})),
    "sst2short-sst2long": (
        ("sst2", {"shift": "length", "shift_part": 0}),
        ("sst2", {"shift": "length", "shift_part": 1}),
    ),
}


def settings(args: argparse.Namespace) -> dict:
    return {
        "train_size": args.train_size,
        "epochs": args.epochs,
        "fisher_batches": args.fisher_batches,
        "lr": args.lr,
        "val_limit": args.val_limit,
    }


def one_sequence(
    pair: str, ewc_lambda: float, distribution: str, seed: int, args: argparse.Namespace
) -> dict:
    pl.seed_everything(seed, verbose=False)
    by_parts = {} if distribution == "flat" else {"lr_distribution": distribution}
    module = minilm_module(
        adamw(args.lr), param_grouping="parts" if by_parts else "decay", **by_parts
    )
    stages = []
    for i, (task, extra) in enumerate(PAIRS[pair]):
        data = GlueDataModule(
            task_name=task,
            data_dir=str(GLUE_DIR),
            max_length=128,
            train_subsample=args.train_size,
            val_limit=args.val_limit,
            seed=seed,
            **extra,
        )
        stages.append(Stage(f"{'AB'[i]}_{task}", data))
    callbacks = [EWC(ewc_lambda, fisher_batches=args.fisher_batches)] if ewc_lambda > 0 else []
    trainer = dict(QUIET_TRAINER, max_epochs=args.epochs, limit_val_batches=0, callbacks=callbacks)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = SequenceRunner(module, stages, trainer, output_dir=out).run()
    (a_after_a, _), (a_after_b, b_after_b) = result.matrix
    row = {"pair": pair, "ewc_lambda": ewc_lambda, "distribution": distribution, "seed": seed}
    row.update(settings(args))
    row["a_after_a"] = a_after_a
    row.update(a_after_b=a_after_b, b=b_after_b, seconds=time.perf_counter() - started)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1000.0])
    parser.add_argument("--sweep", type=float, nargs="*", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fisher-batches", type=int, default=50)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--val-limit", type=int, default=None, help="dev examples (None: all)")
    parser.add_argument("--distributions", nargs="*", default=[])
    parser.add_argument("--out", default="benchmarks/results/forgetting_cpu")
    parser.add_argument(
        "--reuse-from",
        nargs="*",
        default=[],
        help="other runs logs whose runs with these settings count as done (copied into <out>'s)",
    )
    args = parser.parse_args()
    lambdas = [0.0] + (args.sweep if args.sweep is not None else args.lambdas)
    # (EWC λ, distribution): plain, each λ, then each distribution without EWC
    variants = [(lam, "flat") for lam in lambdas]
    variants += [(0.0, d) for d in args.distributions if d != "flat"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = beside(out, ".runs.jsonl")
    here = settings(args)

    def key(r: dict) -> tuple:
        return r["pair"], r["ewc_lambda"], r.get("distribution", "flat"), r["seed"]

    known = {key(r): r for r in load_runs(log, here)}  # runs with other settings are not reused
    for other in args.reuse_from:
        for r in load_runs(Path(other), here):
            variant = (r["ewc_lambda"], r.get("distribution", "flat"))
            wanted = r["pair"] in args.pairs and r["seed"] in args.seeds and variant in variants
            if wanted and key(r) not in known:
                known[key(r)] = r
                append_run(log, r | {"machine": r.get("machine", "not logged")})
    rows = []
    for seed in args.seeds:
        for pair in args.pairs:
            for lam, dist in variants:
                row = known.get((pair, lam, dist, seed))
                if row is None:
                    row = one_sequence(pair, lam, dist, seed, args)
                    append_run(log, row)
                rows.append(row)
    lines = [
        "| pair A → B | method | seeds | acc A after A | acc A after B | forgetting | acc B |",
        "|---|---|---|---|---|---|---|",
    ]

    for pair in args.pairs:
        for lam, dist in variants:
            runs = [
                r
                for r in rows
                if r["pair"] == pair and r["ewc_lambda"] == lam and r["distribution"] == dist
            ]
            method = "plain" if lam == 0 else f"EWC λ={lam:g}"
            if dist != "flat":
                method = f"distribution {Path(dist).parent.name or dist}"
            drop = [r["a_after_a"] - r["a_after_b"] for r in runs]
            cells = [mean_std([r[k] for r in runs]) for k in ("a_after_a", "a_after_b")]
            cells += [mean_std(drop), mean_std([r["b"] for r in runs])]
            lines.append(f"| {pair} | {method} | {len(runs)} | " + " | ".join(cells) + " |")
    meta = (
        f"MiniLM-L6, seeded random {args.train_size}-example training subsets, {args.epochs} "
        f"epochs per stage, AdamW {args.lr:g} + warmup/cosine per stage, separate heads, full dev sets "
        f"(accuracy); EWC task-loss Fisher over {args.fisher_batches} batches; device "
        f"{logged_machines(rows)}. Mean ± std over seeds."
    )
    write_results(out, meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
