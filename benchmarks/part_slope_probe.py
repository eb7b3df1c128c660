"""Which part of the model carries the slope along the last step that SlopeTrackingAdam tracks?

SlopeTrackingAdam grows its step size while the next batch's descent direction still points
along the last step (``⟨g_{t+1}, x_t − x_{t+1}⟩ > 0``: the step was too short). On SST-2 in setting S it
grows from 1e-4 to about 2.4e-4 during the first pass, where AdamW at that peak loses
(``slope_tracking_pilots_cpu.md``). One explanation to rule in or out: the classification head
is new (random), so its steps are far too short at any fine-tuning step size and its slope could
drive the growth on its own, while the pretrained encoder's slope says 1e-4 is enough. If so,
a step size per part (or a slope taken over the encoder only) would be the fix.

Per step (MiniLM-L6, setting S's data: the first 500 training examples, batch 32, max length
128, ``torch.optim.Adam`` at a constant 1e-4, the start of ``slope_tracking_adam@1e-4``): the
slope along the last step per part, ``⟨g_{t+1}, x_t − x_{t+1}⟩ / lr``, split into the head
(``classifier``), the pooler and the encoder (embeddings and layers). Reported per task and seed:
the mean slope of each part over windows of steps (step k: batch k's gradient along the step
that batch k − 1 chose) and the encoder's share of the parts' absolute slopes.

    python -m benchmarks.part_slope_probe --tasks sst2 rte --seeds 0 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import (
    classifier,
    device_name,
    glue_examples,
    loader,
    tokenizer,
    write_results,
)
from lsframe.data.glue import glue_task

RESULTS = Path(__file__).parent / "results"
PARTS = ("head", "pooler", "encoder")
#: steps 2–16 are the first pass over 500 examples at batch 32 (16 batches)
WINDOWS = ((2, 8), (9, 16), (17, 48), (49, 80))


def part_of(name: str) -> str:
    if name.startswith("classifier"):
        return "head"
    return "pooler" if ".pooler." in f".{name}" else "encoder"


def part_slopes(task: str, seed: int, args: argparse.Namespace, tok) -> list[dict]:
    """Per step from step 2 on, the slope of each part along the step before it."""
    torch.manual_seed(seed)
    model = classifier(glue_task(task).num_labels, seed)
    named = [(part_of(n), p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam([p for _, p in named], lr=args.lr)
    data = loader(glue_examples(task, "train", 500), tok, 128, 32, seed=seed)
    rows, last_step = [], None
    for _ in range(args.epochs):
        for batch in data:
            opt.zero_grad(set_to_none=True)
            loss = model(**batch).loss
            loss.backward()
            if last_step is not None:
                slopes = dict.fromkeys(PARTS, 0.0)
                for (part, p), step in zip(named, last_step):
                    slopes[part] += float((p.grad * step).sum()) / args.lr
                rows.append({"step": len(rows) + 2, "loss": float(loss), **slopes})
            before = [p.detach().clone() for _, p in named]
            opt.step()
            last_step = [b - p.detach() for (_, p), b in zip(named, before)]
    return rows


def window(rows: list[dict], first: int, last: int) -> dict[str, float]:
    chosen = [r for r in rows if first <= r["step"] <= last]
    return {part: sum(r[part] for r in chosen) / len(chosen) for part in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's constant learning rate")
    parser.add_argument("--out", default=str(RESULTS / "part_slope_probe_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    steps = 16 * args.epochs
    spans = [(a, min(b, steps)) for a, b in WINDOWS if a <= steps]
    header = " | ".join(f"steps {a}–{b}" for a, b in spans)
    lines = [f"| task | seed | {header} |", "|---|---|" + "---|" * len(spans)]
    runs = []
    for task in args.tasks:
        for seed in args.seeds:
            rows = part_slopes(task, seed, args, tok)
            runs.append({"task": task, "seed": seed, "steps": rows})
            cells = []
            for a, b in spans:
                mean = window(rows, a, b)
                magnitude = sum(abs(v) for v in mean.values())
                share = abs(mean["encoder"]) / magnitude if magnitude else 0.0
                parts = ", ".join(f"{part} {mean[part]:+.1f}" for part in PARTS)
                cells.append(f"{parts} (encoder {share:.0%})")
            lines.append(f"| {task} | {seed} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    meta = (
        f"Slope along the last step per part, ⟨g_(t+1), x_t − x_(t+1)⟩ / lr (positive: the step "
        f"was too short for the next batch), mean per window of steps (step k: batch k's gradient "
        f"along the step batch k − 1 chose); in parentheses the "
        f"encoder's share of the parts' absolute slopes. MiniLM-L6, first 500 training "
        f"examples, batch 32, max length 128, {args.epochs} passes, torch.optim.Adam at a "
        f"constant lr {args.lr:g}; "
        f"device {device_name('cpu')}."
    )
    write_results(Path(args.out), meta, "\n".join(lines), {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
