"""How much of a minibatch gradient is signal, per task and batch size?

For a minibatch gradient ``g`` of batch size ``B`` with expectation ``G`` and per-example
covariance ``Σ``, ``E|g|² = |G|² + tr(Σ)/B``. The signal fraction ``ρ = |G|² / E|g|²`` is the
quantity of McCandlish et al. (2018, "An empirical model of large-batch training"): their
optimal SGD step is ``ε_max / (1 + B_noise/B) = ε_max · ρ``, where ``ε_max`` is the step that is
optimal on the expected loss without noise. A line search on one minibatch measures that
batch's own curvature, so it finds a step near ``ε_max``; if ``ρ`` is small, that step is
``1/ρ`` times too long, and a task with less signal per batch wants a smaller step.

The probe measures ``ρ`` without bias: each batch is split into two halves of ``B/2``
examples whose gradients ``g₁, g₂`` are independent given the parameters, so
``E[g₁ · g₂] = |G|²``, while the batch's gradient ``g = (g₁ + g₂)/2`` is the one the step uses.
Over a window of steps ``ρ̂ = Σ g₁·g₂ / Σ |g|²`` (a ratio of sums); over the whole run also the
median of the per-step ratios and their mean ± standard error, which say how well a run of this
length can know ``ρ``. The metric is the plain one: in Adam's (weights ``1/(√v̂ + ε)``) the sums
are dominated by coordinates whose ``v̂`` is near 0, such as the embedding rows of tokens that
occur in one half of the batch only, and the ratio measured nothing (about 0.001 on every task).

MiniLM-L6, setting M's data and batch (first 2,000 examples, batch 16) or S's (first 500,
batch 32), max length 128; ``torch.optim.Adam`` at a constant learning rate, no weight decay.

    python -m benchmarks.signal_fraction_probe --tasks sst2 mrpc rte qnli --settings M \
        --seeds 0 1 --steps 80 --out benchmarks/results/signal_fraction_probe_m_cpu
    python -m benchmarks.signal_fraction_probe --tasks sst2 mrpc rte --settings S \
        --seeds 0 1 --steps 80 --out benchmarks/results/signal_fraction_probe_s_cpu

What it found (``docs/default_optimizer.md``): ``ρ̂`` over 80 steps is about 0.1 and known to
about ±0.1, and it does not single out the task that wants the smaller step (RTE in M): QNLI in
M, indifferent between 5e-5 and 1e-4, measures as low or lower.
"""

from __future__ import annotations

import argparse
import math
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
SETTINGS = {"M": (2000, 16), "S": (500, 32)}
WINDOWS = ((1, 1), (2, 10), (11, 30), (31, 60), (61, 120))


def _half(batch: dict, part: int) -> dict:
    size = len(batch["labels"])
    cut = slice(0, size // 2) if part == 0 else slice(size // 2, size)
    return {k: v[cut] for k, v in batch.items()}


def _gradient(model, params, batch: dict) -> list[torch.Tensor]:
    for p in params:
        p.grad = None
    model(**batch).loss.backward()
    return [p.grad.detach().clone() for p in params]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def probe(task: str, setting: str, seed: int, args: argparse.Namespace, tok) -> list[dict]:
    limit, batch_size = SETTINGS[setting]
    torch.manual_seed(seed)
    model = classifier(glue_task(task).num_labels, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    data = loader(glue_examples(task, "train", limit), tok, 128, batch_size, seed=seed)
    batches = endless(data)
    rows = []
    for step in range(1, args.steps + 1):
        batch = next(batches)
        g1 = _gradient(model, params, _half(batch, 0))
        g2 = _gradient(model, params, _half(batch, 1))
        g = [(a + b) / 2 for a, b in zip(g1, g2)]
        rows.append({"step": step, "cross": _dot(g1, g2), "norm": _dot(g, g)})
        for p, grad in zip(params, g):
            p.grad = grad
        opt.step()
    return rows


def ratio(rows: list[dict], first: int, last: int) -> float:
    """``Σ g₁·g₂ / Σ |g|²`` over steps ``first``–``last`` (1-based, inclusive)."""
    part = rows[first - 1 : last]
    return sum(r["cross"] for r in part) / sum(r["norm"] for r in part)


def per_step(rows: list[dict]) -> str:
    """The median of the per-step ratios and their mean ± standard error."""
    values = [r["cross"] / r["norm"] for r in rows]
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{statistics.median(values):.3f} | {statistics.fmean(values):.3f} ± {sem:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte", "qnli"])
    parser.add_argument("--settings", nargs="+", default=["M", "S"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-5, help="Adam's constant learning rate")
    parser.add_argument("--out", default=str(RESULTS / "signal_fraction_probe_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    windows = [(a, min(b, args.steps)) for a, b in WINDOWS if a <= args.steps]
    header = window_header(windows)
    lines = [
        f"| setting | task | seed | {header} | all steps | per-step median | per-step mean ± s.e. |",
        "|---|---|---|" + "---|" * (len(windows) + 3),
    ]
    runs = []
    for setting in args.settings:
        for task in args.tasks:
            for seed in args.seeds:
                rows = probe(task, setting, seed, args, tok)
                runs.append({"setting": setting, "task": task, "seed": seed, "steps": rows})
                cells = [f"{ratio(rows, a, b):.3f}" for a, b in windows + [(1, args.steps)]]
                cells.append(per_step(rows))
                lines.append(f"| {setting} | {task} | {seed} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    meta = (
        f"Signal fraction ρ̂ = Σ g₁·g₂ / Σ |g|² of the batch gradient (halves g₁, g₂), per window "
        f"of steps. MiniLM-L6, max length 128, torch.optim.Adam at a constant lr {args.lr:g}, "
        f"{args.steps} steps; device {device_name('cpu')}."
    )
    write_results(Path(args.out), meta, "\n".join(lines), {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
