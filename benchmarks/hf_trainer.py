"""lsframe's optimizers inside Hugging Face ``Trainer`` on the real MiniLM and real SST-2.

Each row fine-tunes the pretrained MiniLM-L6 with ``lsframe.integrations.hf.LineSearchTrainer``
(Trainer's own loop, loss, clipping at 1.0 and logging) on the first ``--train`` SST-2 training
sentences, batch 16, max length 64, for ``--steps`` optimizer steps, then scores the first
``--dev`` dev sentences. Line searches run with a constant schedule (no learning rate, no
schedule); AdamW at the lr of README's best SST-2 grid point with 10 % warmup and linear decay.
Columns: mean training loss over the first and the last 10 steps, dev accuracy, closure
evaluations per step (1 = no trial), the last accepted step size. Every finished run is appended
to ``<out>.runs.jsonl`` (with its per-step step sizes and line-search diagnostics, ``per_step``:
:class:`benchmarks.common.StepDiagnostics`) and reused.

    python -m benchmarks.hf_trainer --optimizers salsa adamsls sgdsls adamw --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (
    StepDiagnostics,
    append_run,
    beside,
    classifier,
    glue_examples,
    load_runs,
    logged_machines,
    mean_std,
    tokenizer,
    write_results,
)
from lsframe.data.text import TokenizedDataset
from lsframe.optim import create


def one_run(name: str, seed: int, args: argparse.Namespace) -> dict:
    from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments

    from lsframe.integrations.hf import LineSearchTrainer

    tok = tokenizer()
    train = TokenizedDataset(glue_examples("sst2", "train", args.train), tok, 64)
    dev = glue_examples("sst2", "dev", args.dev)
    model = classifier(2, seed)
    searches = name != "adamw"
    optimizer = create(name, model.parameters(), **({} if searches else {"lr": args.adamw_lr}))
    losses: list[float] = []
    diagnostics = StepDiagnostics()

    class Losses(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

        def on_optimizer_step(self, _args, state, control, **kwargs):
            diagnostics.add(optimizer)  # after the step, before the scheduler's

    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=16,
            max_steps=args.steps,
            logging_steps=1,
            lr_scheduler_type="constant" if searches else "linear",
            warmup_steps=0 if searches else max(1, args.steps // 10),
            max_grad_norm=1.0,
            seed=seed,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = LineSearchTrainer(
            model=model,
            args=training,
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tok),
            optimizers=(optimizer, None),
            callbacks=[Losses()],
        )
        trainer.train()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dev.labels), 64):
            batch = tok(dev.text[start : start + 64], padding=True, return_tensors="pt")
            predicted = model(**batch).logits.argmax(-1)
            correct += int((predicted == torch.tensor(dev.labels[start : start + 64])).sum())
    search = optimizer.state.get("line_search", {}) if searches else {}
    return {
        "optimizer": name,
        "seed": seed,
        "first_loss": statistics.fmean(losses[:10]),
        "last_loss": statistics.fmean(losses[-10:]),
        "dev_acc": correct / len(dev.labels),
        "majority": max(dev.labels.count(0), dev.labels.count(1)) / len(dev.labels),
        "evals_per_step": 1 + search.get("forwards", 0) / max(search.get("step", 1), 1),
        "step_size": float(optimizer.param_groups[0]["lr"]),
        "per_step": diagnostics.columns,  # step sizes; a line search's trials and ratios
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=["salsa", "adamsls", "sgdsls", "adamw"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--dev", type=int, default=400)
    parser.add_argument("--adamw-lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hf_trainer_cpu"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    log = beside(args.out, ".runs.jsonl")
    key = ("optimizer", "seed")
    settings = {
        "steps": args.steps,
        "train": args.train,
        "dev": args.dev,
        "adamw_lr": args.adamw_lr,
    }
    done = {tuple(r[k] for k in key): r for r in load_runs(log, settings)}
    for name in args.optimizers:
        for seed in args.seeds:
            if (name, seed) not in done:
                row = {**one_run(name, seed, args), **settings}
                append_run(log, row)
                done[(name, seed)] = row
    lines = [
        "| optimizer | first-10 loss | last-10 loss | dev acc | evals/step | last step size |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.optimizers:
        rows = [done[(name, s)] for s in args.seeds]
        cells = [mean_std([r[c] for r in rows]) for c in ("first_loss", "last_loss", "dev_acc")]
        evals = mean_std([r["evals_per_step"] for r in rows])
        sizes = ", ".join(f"{r['step_size']:.2e}" for r in rows)
        lines.append(f"| {name} | {' | '.join(cells)} | {evals} | {sizes} |")
    majority = done[(args.optimizers[0], args.seeds[0])]["majority"]
    meta = (
        f"LineSearchTrainer (HF Trainer) on {logged_machines(list(done.values()))}: MiniLM-L6, "
        f"SST-2 first "
        f"{args.train} training sentences, batch 16, max length 64, {args.steps} steps, first "
        f"{args.dev} dev sentences (majority class {majority:.3f}); seeds {args.seeds}; AdamW lr "
        f"{args.adamw_lr} with 10 % warmup and linear decay, line searches constant schedule."
    )
    write_results(args.out, meta, "\n".join(lines), sorted(done.values(), key=str))


if __name__ == "__main__":
    main()
