"""How well a strided alignment (``SlopeTrackingAdam(alignment_stride=k)``) tracks the exact one.

MiniLM-L6 fine-tuned on SST-2 (batch 16, max length 64, the first ``--steps`` batches of a
seeded shuffle) by ``SlopeTrackingAdam`` from η0 = ``--lr`` with the exact alignment driving its
step size. At every step the alignment is also computed with each ``--strides`` k from the same
gradient and moments (nothing else changes). Per k the table gives the correlation with the
exact alignment, the mean and largest absolute difference, the difference's std against the
exact alignment's own std over the run (its batch-to-batch noise, which the rule already
averages), how often the signs agree, the milliseconds one alignment takes, and where the rule
would have taken η when fed the strided alignments instead (final and largest η over the exact
path's).

    python -m benchmarks.alignment_sample --steps 150 --strides 4 16 64
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import (
    Run,
    classifier,
    device_name,
    endless,
    glue_examples,
    loader,
    tokenizer,
    write_results,
)
from benchmarks.specs import PINNED
from lsframe.optim import SlopeTrackingAdam
from lsframe.optim._alignment import step_alignment
from lsframe.optim._slope_rule import step_size_change
from lsframe.optim.slope_tracking_adam import RULE_KEYS

RESULTS = Path(__file__).parent / "results"
#: the rule this probe measured (the defaults until 2026-12), started at ``--lr``
RULE = {k: v for k, v in PINNED["slope_tracking_adam"].items() if k != "lr"}


class RecordingTracker(SlopeTrackingAdam):
    """The exact rule, recording the alignment of each stride in ``strides`` at every step."""

    def __init__(self, params, strides: list[int], **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.strides = strides
        self.records: list[dict[int, float | None]] = []
        self.seconds: dict[int, list[float]] = {k: [] for k in [1, *strides]}

    def _line_search_step(self, loss, forward, groups) -> None:
        last = self.search_state.get("moment_step", 0)
        if last:
            record = {}
            for k in [1, *self.strides]:
                started = time.perf_counter()
                record[k] = step_alignment(self.state, groups, last, k)
                self.seconds[k].append(time.perf_counter() - started)
            self.records.append(record)
        super()._line_search_step(loss, forward, groups)


def replay(alignments: list[float], lr: float) -> list[float]:
    """η after each step when the probe's rule is fed ``alignments``."""
    rule_owner = SlopeTrackingAdam([torch.zeros(1, requires_grad=True)], lr=lr, **RULE)
    rule = {key: rule_owner.defaults[key] for key in RULE_KEYS}
    eta, path = lr, []
    for a in alignments:
        eta *= step_size_change(rule_owner.search_state, a, rule)
        path.append(eta)
    return path


def correlation(x: list[float], y: list[float]) -> float:
    mx, my = statistics.mean(x), statistics.mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "alignment_sample_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    model = classifier(2, args.seed)
    opt = RecordingTracker(model.parameters(), args.strides, lr=args.lr, **RULE)
    run = Run("slope_tracking_adam", model, opt)
    examples = glue_examples("sst2", "train")
    batches = endless(loader(examples, tok, 64, 16, seed=args.seed))
    for _ in range(args.steps):
        run.step(next(batches))

    records = [r for r in opt.records if all(v is not None for v in r.values())]
    exact = [r[1] for r in records]
    exact_path = replay(exact, args.lr)
    noise = statistics.stdev(exact)
    rows, lines = [], []
    header = [
        "stride",
        "corr",
        "mean |diff|",
        "max |diff|",
        "std diff / std exact",
        "same sign",
        "ms per alignment",
        "final η / exact",
        "peak η / exact",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for k in [1, *args.strides]:
        sampled = [r[k] for r in records]
        diffs = [a - b for a, b in zip(sampled, exact)]
        path = replay(sampled, args.lr)
        row = {
            "stride": k,
            "corr": correlation(sampled, exact),
            "mean_abs_diff": statistics.mean(abs(d) for d in diffs),
            "max_abs_diff": max(abs(d) for d in diffs),
            "std_ratio": statistics.pstdev(diffs) / noise,
            "same_sign": statistics.mean((a > 0) == (b > 0) for a, b in zip(sampled, exact)),
            "ms": 1000 * statistics.median(opt.seconds[k]),
            "final_ratio": path[-1] / exact_path[-1],
            "peak_ratio": max(path) / max(exact_path),
        }
        rows.append(row)
        lines.append(
            f"| {k} | {row['corr']:.4f} | {row['mean_abs_diff']:.4f} | {row['max_abs_diff']:.4f} "
            f"| {row['std_ratio']:.3f} | {row['same_sign']:.2f} | {row['ms']:.0f} "
            f"| {row['final_ratio']:.3f} | {row['peak_ratio']:.3f} |"
        )
    meta = (
        f"MiniLM-L6 on SST-2 (batch 16, max length 64, {args.steps} steps, seed {args.seed}), "
        f"SlopeTrackingAdam from η0 = {args.lr} driven by the exact alignment; {len(records)} "
        f"alignments, whose std over the run is {noise:.4f} (mean {statistics.mean(exact):+.4f}); "
        f"final η {exact_path[-1]:.3g}, peak {max(exact_path):.3g}; device {device_name()}; "
        "milliseconds are contended wall times."
    )
    write_results(Path(args.out), meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
