"""Quality of each optimizer with its defaults vs an AdamW learning-rate grid and LR-free peers.

One epoch of MiniLM-L6 fine-tuning on a GLUE training slice (batch 16, dynamic padding), then
the dev metric. Rows: every lsframe line search with its defaults (no schedule), AdamW at
{1e-5, 2e-5, 5e-5, 1e-4} with 10 % warmup + cosine decay, Prodigy and DAdaptAdam (lr 1.0, same
schedule), and AdamWScheduleFree at the grid's best learning rate (chosen per task on the mean
dev metric, as a user would after running the grid). "train loss" is the mean training loss
over the last 20 % of the epoch. Each finished run is appended to ``<out>.runs.jsonl``, with
its per-step step sizes and line-search diagnostics (``per_step``, see
:class:`benchmarks.common.StepDiagnostics`); a later invocation with the same ``--out`` reuses
the runs found there (add seeds in several sittings).

    python -m benchmarks.quality --task sst2 --train-limit 2000 --max-length 64 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import (
    append_run,
    build,
    classifier,
    device_name,
    glue_examples,
    load_runs,
    loader,
    mean_std,
    step_size,
    tokenizer,
    write_results,
)
from lsframe.data.glue import glue_task
from lsframe.optim import line_searches

GRID = ["adamw@1e-5", "adamw@2e-5", "adamw@5e-5", "adamw@1e-4"]
PEERS = ["prodigy", "dadaptadam"]


def evaluate(run, data, task: str) -> dict[str, float]:
    run.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in data:
            labels.append(batch.pop("labels"))
            preds.append(run.model(**batch).logits.argmax(-1))
    run.train()
    pred, label = torch.cat(preds), torch.cat(labels)
    scores = {"acc": float((pred == label).float().mean())}
    if "f1" in glue_task(task).metrics:
        tp = float(((pred == 1) & (label == 1)).sum())
        scores["f1"] = 2 * tp / max(1.0, float((pred == 1).sum() + (label == 1).sum()))
    return scores


def one_run(spec: str, seed: int, args, tok, train, dev) -> dict:
    started = time.perf_counter()
    model = classifier(glue_task(args.task).num_labels, seed)
    data = loader(train, tok, args.max_length, 16, seed)
    run = build(spec, model, len(data))
    torch.manual_seed(seed)
    losses = [run.step(batch) for batch in data]
    tail = losses[-max(1, len(losses) // 5) :]
    dev_data = loader(dev, tok, args.max_length, 64, seed, shuffle=False)
    row = {
        "optimizer": spec,
        "seed": seed,
        "train_loss": sum(tail) / len(tail),
        "nonfinite_steps": sum(1 for x in losses if x != x),
        "forwards_per_step": run.forwards.count / len(losses),
        "final_step_size": step_size(run),
        "seconds": time.perf_counter() - started,
        **evaluate(run, dev_data, args.task),
        "per_step": run.diagnostics.columns,  # step sizes; a line search's trials and ratios
    }
    append_run(args.log, row)  # survives an interrupted benchmark
    return row


def summarise(rows: list[dict], metric: str) -> list[dict]:
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
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", default=line_searches() + GRID + PEERS)
    parser.add_argument("--no-schedulefree", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or f"benchmarks/results/quality_{args.task}_cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    args.log = out.with_suffix(".runs.jsonl")
    started = time.time()
    tok = tokenizer()
    train = glue_examples(args.task, "train", args.train_limit)
    dev = glue_examples(args.task, "dev")
    # runs already in the log (an earlier, interrupted or partial invocation) are reused
    known = {(r["optimizer"], r["seed"]): r for r in load_runs(args.log)}

    def run_or_reuse(spec: str, seed: int) -> dict:
        return known.get((spec, seed)) or one_run(spec, seed, args, tok, train, dev)

    rows = [run_or_reuse(s, seed) for s in args.optimizers for seed in args.seeds]
    metric = glue_task(args.task).metrics[0]
    grid = [e for e in summarise(rows, metric) if e["optimizer"] in GRID]
    if grid and not args.no_schedulefree:
        best = max(grid, key=lambda e: e[metric])["optimizer"].split("@")[1]
        rows += [
            one_run(f"schedulefree@{best}", seed, args, tok, train, dev) for seed in args.seeds
        ]
    table = summarise(rows, metric)
    keys = ["train_loss", metric] + (["f1"] if "f1" in table[0] and metric != "f1" else [])
    header = ["optimizer", "seeds", "train loss", f"dev {metric}"] + ["dev f1"] * (len(keys) > 2)
    lines = [
        "| " + " | ".join(header + ["fwd/step", "s/run"]) + " |",
        "|" + "---|" * (len(header) + 2),
    ]
    for e in table:
        cells = [e["optimizer"], str(e["seeds"])]
        cells += [e[k + "_cell"] for k in keys]
        cells += [f"{e['forwards_per_step']:.2f}", f"{e['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    meta = (
        f"GLUE {args.task}: first {args.train_limit} training examples, 1 epoch, batch 16, max "
        f"length {args.max_length}; dev set {len(dev.labels)} examples; seeds {args.seeds}; "
        f"MiniLM-L6; device {device_name()}; torch "
        f"{torch.__version__}; wall {time.time() - started:.0f} s. Mean ± std over seeds."
    )
    write_results(out, meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
