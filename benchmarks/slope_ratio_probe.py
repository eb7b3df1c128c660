"""How much of the slope along Adam's step is left after the step, at fixed learning rates.

The tracker (``SlopeTrackingAdam``) drives η to where the next fresh batch's slope along the last
step is 0: the greedy step, about 1/(1 − β1) times too large with momentum
(``momentum_probe``). A step rule that leaves for the momentum what the momentum will still move
targets instead, on a quadratic along the step, ``slope after = β1 × slope before`` (a step of
(1 − β1) times the greedy one). This probe measures both slopes with fresh batches for Adam at
fixed learning rates, so the rule's zero can be read off against the learning rates that train
well, and it checks cheap estimates of the slope before the step that need no extra batch.

Per step ``t`` (MiniLM-L6, setting M's SST-2 data: the first 2,000 sentences, batch 16, max
length 128; ``torch.optim.Adam``, β = (0.9, 0.999), constant learning rate, no weight decay):

* ``g_t``: the training batch's gradient at ``x_t``; ``g'_t``: a second, independent batch's
  gradient at ``x_t`` (an extra backward, for this probe only; drawn in another order from
  the same 2,000 sentences, so later in a run it may hold sentences already trained on); ``d_t = (x_t − x_{t+1}) / lr``:
  Adam's step direction ``m̂_t / (√v̂_t + ε)``;
* slope before, fresh: ``g'_t · d_t``; slope before, same batch: ``g_t · d_t`` (biased upward by
  the batch's own noise, which ``d_t`` contains with weight (1 − β1));
* slope after: ``g_{t+1} · d_t`` (the next training batch: fresh);
* estimates of the fresh slope before from what the optimizer holds:
  ``β1 (g_t · m_{t−1} P) / (1 − β1^t) + (1 − β1) G / (1 − β1^t)`` with ``P = 1/(√v̂_t + ε)`` and
  ``G`` the noise-free squared gradient norm in that metric, estimated either from the moments
  (``G_mv = Σ P (m̂² − c v̂) / (1 − c)``, ``c = (1 − β1)/(1 + β1)``: stationary EMA noise) or, to
  check that estimate, from the two batches (``G_pair = Σ P g_t g'_t``, unbiased).

Reported per learning rate, over the steps after the first ``--skip``: the means of each slope, the ratio
``mean(after) / mean(before)`` for each estimate of the slope before, and the mean training loss
of the last 20 steps. Short runs without dev evaluation.

    python -m benchmarks.slope_ratio_probe --steps 80 --lr 3e-5 1e-4 3e-4
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
    write_results,
)

RESULTS = Path(__file__).parent / "results"
SLOPES = ("after", "before_fresh", "before_same", "before_mv", "before_pair")


def gradient(model: torch.nn.Module, params: list, batch: dict) -> tuple[float, list]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return float(loss), [p.grad.detach().clone() for p in params]


def dot(a: list, b: list, weight: list | None = None) -> float:
    if weight is None:
        return float(sum((x * y).sum() for x, y in zip(a, b)))
    return float(sum((x * y * w).sum() for x, y, w in zip(a, b, weight)))


def probe(lr: float, args: argparse.Namespace, tok, examples) -> dict:
    model = classifier(2, args.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    opt = torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps)
    batches = endless(loader(examples, tok, 128, 16, seed=args.seed))
    fresh = endless(loader(examples, tok, 128, 16, seed=args.seed + 1000))
    c = (1 - beta1) / (1 + beta1)
    rows, losses, last_direction = [], [], None
    loss, grads = gradient(model, params, next(batches))
    for t in range(1, args.steps + 1):
        if last_direction is not None:
            rows[-1]["after"] = dot(grads, last_direction)
        losses.append(loss)
        _, fresh_grads = gradient(model, params, next(fresh))
        old_momentum = [
            opt.state[p]["exp_avg"].clone() if p in opt.state else torch.zeros_like(p)
            for p in params
        ]
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        direction = [(b - p.detach()) / lr for b, p in zip(before, params)]
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        m_hat = [opt.state[p]["exp_avg"] / bc1 for p in params]
        v_hat = [opt.state[p]["exp_avg_sq"] / bc2 for p in params]
        metric = [1 / (v.sqrt() + eps) for v in v_hat]
        momentum_part = beta1 * dot(grads, old_momentum, metric) / bc1
        g_mv = sum(float((w * (m * m - c * v)).sum()) for w, m, v in zip(metric, m_hat, v_hat))
        g_mv /= 1 - c
        g_pair = dot(grads, fresh_grads, metric)
        rows.append(
            {
                "before_fresh": dot(fresh_grads, direction),
                "before_same": dot(grads, direction),
                "before_mv": momentum_part + (1 - beta1) * g_mv / bc1,
                "before_pair": momentum_part + (1 - beta1) * g_pair / bc1,
            }
        )
        last_direction = direction
        loss, grads = gradient(model, params, next(batches))
    rows[-1]["after"] = dot(grads, last_direction)
    late = rows[args.skip :]
    means = {key: statistics.fmean(r[key] for r in late) for key in SLOPES}
    result = {
        "lr": lr,
        **{f"mean_{key}": value for key, value in means.items()},
        **{f"ratio_{key[7:]}": means["after"] / means[key] for key in SLOPES[1:]},
        "loss_last20": statistics.fmean(losses[-20:]),
        "steps": rows,
    }
    print({k: v for k, v in result.items() if k != "steps"}, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=20, help="steps left out of the means")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "slope_ratio_probe_cpu"))
    args = parser.parse_args()

    tok = tokenizer()
    examples = glue_examples("sst2", "train", 2000)
    results = [probe(lr, args, tok, examples) for lr in args.lr]
    lines = [
        "| lr | slope before (fresh batch) | after | after / before: fresh | same batch "
        "| moments' estimate | two-batch estimate | training loss, last 20 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['lr']:.0e} | {r['mean_before_fresh']:.3g} | {r['mean_after']:.3g} | "
            f"{r['ratio_fresh']:+.3f} | {r['ratio_same']:+.3f} | {r['ratio_mv']:+.3f} | "
            f"{r['ratio_pair']:+.3f} | {r['loss_last20']:.3f} |"
        )
    meta = (
        f"MiniLM-L6, first 2,000 SST-2 sentences, batch 16, max length 128, seed {args.seed}; "
        f"torch Adam, betas (0.9, 0.999), constant lr, {args.steps} steps per lr from the same "
        f"weights and batches; means over steps {args.skip + 1}-{args.steps}; device "
        f"{device_name()}."
    )
    write_results(Path(args.out), meta, "\n".join(lines), results)


if __name__ == "__main__":
    main()
