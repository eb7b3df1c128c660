"""Where SlopeTrackingAdam's step size settles for each Adam β1: the greedy step and momentum.

The tracker drives η to where the fresh batch's gradient is orthogonal, on average, to the last
step: the zero of the expected loss's slope along the last step's direction, the greedy step.
With momentum that direction is Adam's m̂/√v̂, which later steps keep following. This probe
trains MiniLM-L6 on the first 2,000 SST-2 sentences (batch 16, max length 128, setting M's
data) with ``SlopeTrackingAdam(lr=1e-4, combine_horizons="significant")``, the rule without
drift, for ``--steps`` steps at each β1 in ``--beta1``, from the same weights and batches, and
writes η every ``--every`` steps, the mean alignment of the last half and the mean training loss
of the last 20 steps. Short runs, no dev evaluation: it measures where η goes, not accuracy.

    python -m benchmarks.momentum_probe --steps 80 --beta1 0.9 0.5 0.0
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

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
from lsframe.optim import SlopeTrackingAdam

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--beta1", type=float, nargs="+", default=[0.9, 0.5, 0.0])
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", choices=["cosine", "slope"], default="cosine")
    parser.add_argument("--out", default=str(RESULTS / "momentum_probe_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    examples = glue_examples("sst2", "train", 2000)
    rows = []
    for beta1 in args.beta1:
        model = classifier(2, args.seed)
        opt = SlopeTrackingAdam(
            model.parameters(),
            lr=1e-4,
            betas=(beta1, 0.999),
            combine_horizons="significant",
            alignment_measure=args.measure,
        )
        run = Run(f"beta1={beta1}", model, opt)
        batches = endless(loader(examples, tok, 128, 16, seed=args.seed))
        etas, losses, alignments = [], [], []
        for _ in range(args.steps):
            losses.append(run.step(next(batches)))
            etas.append(opt.param_groups[0]["step_size"])
            alignments.append(opt.search_state["alignment"])
        late = [a for a in alignments[args.steps // 2 :] if a is not None]
        rows.append(
            {
                "beta1": beta1,
                "etas": etas[:: args.every],
                "final_eta": etas[-1],
                "late_alignment": statistics.fmean(late),
                "loss_last20": statistics.fmean(losses[-20:]),
            }
        )
        print(rows[-1], flush=True)
    steps = list(range(0, args.steps, args.every))
    lines = [
        "| β1 | "
        + " | ".join(f"η at {k}" for k in steps)
        + " | final η | mean alignment (cosine or slope: --measure), "
        "second half | training loss, last 20 |",
        "|---|" + "---|" * (len(steps) + 3),
    ]
    for r in rows:
        lines.append(
            f"| {r['beta1']} | "
            + " | ".join(f"{e:.1e}" for e in r["etas"])
            + f" | {r['final_eta']:.2e} | {r['late_alignment']:+.4f} | {r['loss_last20']:.3f} |"
        )
    meta = (
        f"MiniLM-L6, first 2,000 SST-2 sentences, batch 16, max length 128, seed {args.seed}, "
        f"{args.steps} steps per β1 from the same weights and batches; SlopeTrackingAdam(lr=1e-4, "
        f"combine_horizons='significant', alignment_measure={args.measure!r}), no anneal; "
        f"device {device_name()}."
    )
    write_results(Path(args.out), meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
