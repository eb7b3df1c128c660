"""Does a Polyak-type step size rank the tasks as the AdamW grid does?

A Polyak step along a direction ``d`` moves until the first-order model of the batch's loss
reaches its lower bound ``f*``: ``η = (f(x) − f*) / (g · d)``. With Adam's direction
``d = m̂ / (√v̂ + ε)`` and ``f* = 0`` (cross-entropy), this is the step-size seed that SPS- and
MoMo-type rules take from the loss already computed, with no extra forward. For a
learning-rate-free default it would have to do two things on a fine-tune: come out near the
best AdamW learning rate, and come out smaller on the tasks where the grid's best learning rate is
smaller (setting M: 5e-5 on RTE and MRPC, 1e-4 on SST-2; ``quality_m_*_cpu.md``).

Per step (MiniLM-L6, setting M's data: the first 2,000 training examples, batch 16, max length
128; ``torch.optim.Adam`` at a constant learning rate, no weight decay, so every task follows a
comparable trajectory): the batch's loss ``f``, ``g · d`` from the step just taken
(``d = (x_t − x_{t+1}) / lr``) and ``η = f / (g · d)``. Reported per task and seed: the median of
``η`` over windows of steps and the mean training loss in each window.

    python -m benchmarks.polyak_probe --tasks sst2 mrpc rte --seeds 0 1 --steps 60
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmarks.common import (
    classifier,
    device_name,
    endless,
    glue_examples,
    loader,
    tokenizer,
    window_header,
    write_results,
)
from lsframe.data.glue import glue_task

RESULTS = Path(__file__).parent / "results"
WINDOWS = ((1, 1), (2, 10), (11, 30), (31, 60))


def polyak_steps(task: str, seed: int, args: argparse.Namespace, tok) -> list[dict]:
    torch.manual_seed(seed)
    model = classifier(glue_task(task).num_labels, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    batches = endless(loader(glue_examples(task, "train", 2000), tok, 128, 16, seed=seed))
    rows = []
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = model(**next(batches)).loss
        loss.backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        slope = sum(float((p.grad * (b - p.detach())).sum()) for p, b in zip(params, before))
        slope /= args.lr
        rows.append({"loss": float(loss), "slope": slope, "polyak": float(loss) / slope})
    return rows


def window(rows: list[dict], first: int, last: int) -> tuple[float, float]:
    """The median Polyak step and the mean loss of steps ``first``–``last`` (1-based, inclusive;
    the caller keeps windows that start within the run)."""
    part = rows[first - 1 : last]
    return statistics.median(r["polyak"] for r in part), statistics.fmean(r["loss"] for r in part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-5, help="Adam's constant learning rate")
    parser.add_argument("--out", default=str(RESULTS / "polyak_probe_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    windows = [(a, b) for a, b in WINDOWS if a <= args.steps]
    spans = [(a, min(b, args.steps)) for a, b in windows]
    header = window_header(spans)
    lines = [
        f"| task | seed | {header} |",
        "|---|---|" + "---|" * len(windows),
    ]
    runs = []
    for task in args.tasks:
        for seed in args.seeds:
            rows = polyak_steps(task, seed, args, tok)
            runs.append({"task": task, "seed": seed, "steps": rows})
            cells = []
            for a, b in windows:
                eta, loss = window(rows, a, b)
                cells.append(f"η {eta:.1e}, loss {loss:.3f}")
            lines.append(f"| {task} | {seed} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    meta = (
        f"Polyak-type step f / (g · d) along Adam's direction (f* = 0), median per window of "
        f"steps, with the mean training loss of the window. MiniLM-L6, first 2,000 training "
        f"examples, batch 16, max length 128, torch.optim.Adam at a constant lr {args.lr:g}, "
        f"{args.steps} steps; device {device_name('cpu')}."
    )
    write_results(Path(args.out), meta, "\n".join(lines), {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
