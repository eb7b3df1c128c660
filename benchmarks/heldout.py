"""A pilot for issue 18: halve the step size when a held-out slice of the training data stops
improving (``<spec>^heldout`` in :mod:`benchmarks.quality`).

The rule, measured before any of it moves into ``lsframe.optim``: the last ``HELDOUT`` examples
of the training slice are kept out of training; ``CHECKS`` times per run (every
``ceil(T / CHECKS)`` optimizer steps) their losses are computed with dropout off. When the mean
loss has risen significantly above that of the reference check (a paired test over the
examples: mean difference at least ``SIGNIFICANCE`` standard errors), the run's step sizes are
halved from then on and the check becomes the new reference; otherwise the reference is the
check with the lowest mean loss. A flat held-out loss (a task that has not started to learn)
moves nothing. The factor scales AdamW's ``lr`` or a line search's ``lr_multiplier`` after each
scheduler step, which rewrites the step sizes from scratch, so it needs a schedule (AdamW's
rows, a line search's ``~anneal``).

The slice costs data: ``HELDOUT`` of setting S's 500 examples (13 %), of M's 2,000 (3 %). Each
check is ``HELDOUT`` forward-only examples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.common import autocast, loader, to_device
from lsframe.data.examples import TextExamples

HELDOUT = 64  # examples kept back from the training slice
CHECKS = 10  # held-out evaluations per run
FACTOR = 0.5  # the step sizes' factor after a significant rise
# standard errors of the paired difference that make a rise significant: the reference is the
# best check so far, so under a flat loss with fresh noise per check 2.0 fires in 47 % of runs of
# 10 checks, 3.0 in 5 % (tests/test_heldout_pilot.py)
SIGNIFICANCE = 3.0


#: ``^late_half`` / ``^late_double``: the step sizes' factor from the second pass over the
#: training set on (a diagnostic of where in a run its step size matters, not a rule)
PASS_FACTORS = {"late_half": 0.5, "late_double": 2.0}


def split_spec(spec: str) -> tuple[str, str]:
    """``(optimizer spec, mark)`` from ``name…^mark``: ``"heldout"``, a :data:`PASS_FACTORS`
    mark, or ``""``."""
    base, _, extra = spec.partition("^")
    if extra not in ("", "heldout", *PASS_FACTORS):
        known = ", ".join(f"^{m}" for m in ("heldout", *PASS_FACTORS))
        raise ValueError(f"{spec!r}: unknown suffix ^{extra} (known: {known})")
    return base, extra


def scale_step_sizes(run, factor: float) -> None:
    """Scale the step sizes the scheduler just set by ``factor``: AdamW's ``lr``, or a line
    search's ``lr_multiplier`` (a scheduler step rewrites them from scratch)."""
    for group in run.optimizer.param_groups:
        if "lr_multiplier" in group:
            group["lr_multiplier"] *= factor
            group["lr"] = group["step_size"] * group["lr_multiplier"]
        else:
            group["lr"] *= factor


class PassFactor:
    """The step sizes times ``factor`` from the second pass on (``pass_steps`` steps per pass);
    needs a schedule, as :class:`HeldOutHalving`."""

    batches = 0  # no forwards of its own

    def __init__(self, run, factor: float, pass_steps: int) -> None:
        if run.scheduler is None:
            raise ValueError(f"{run.name}: a pass factor needs a schedule (AdamW, or a ~anneal)")
        self.factor, self.pass_steps, self.steps = factor, pass_steps, 0

    def after_step(self, run) -> None:
        self.steps += 1
        if self.steps >= self.pass_steps:  # the step just set is the second pass's or later
            scale_step_sizes(run, self.factor)


def keep_back(train: TextExamples) -> tuple[TextExamples, TextExamples]:
    """``(examples to train on, the last HELDOUT examples)``."""
    n = len(train.labels) - HELDOUT
    if n <= 0:
        raise ValueError(f"^heldout keeps back {HELDOUT} examples: the slice has {n + HELDOUT}")
    pair = train.text_pair
    kept = TextExamples(train.text[n:], train.labels[n:], None if pair is None else pair[n:])
    return train.head(n), kept


class HeldOutHalving:
    """Every ``every`` steps, the held-out losses; the factor halves on a significant rise
    above the reference check's. ``checks`` records ``(step, mean loss, z, factor)``."""

    def __init__(self, examples, tok, args, seed: int, run, total_steps: int) -> None:
        if run.scheduler is None:
            raise ValueError(f"{run.name}^heldout needs a schedule (AdamW, or a ~anneal)")
        self.data = loader(examples, tok, args.max_length, 64, seed, shuffle=False)
        self.batches = 0  # forwards of the checks, not of training
        self.device, self.bf16 = args.device, args.bf16
        self.every = max(1, math.ceil(total_steps / CHECKS))
        self.steps, self.factor = 0, 1.0
        self.reference: torch.Tensor | None = None
        self.checks: list[tuple[int, float, float, float]] = []

    def losses(self, run) -> torch.Tensor:
        run.eval()
        out = []
        with torch.no_grad(), autocast(self.device, self.bf16):
            for batch in self.data:
                batch = to_device(batch, self.device)
                self.batches += 1
                labels = batch.pop("labels")
                logits = run.model(**batch).logits.float()
                out.append(F.cross_entropy(logits, labels, reduction="none").cpu())
        run.train()
        return torch.cat(out)

    def after_step(self, run) -> None:
        """Count the step, check when due, and scale the step sizes the scheduler just set."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.check(self.losses(run))
        scale_step_sizes(run, self.factor)

    def check(self, losses: torch.Tensor) -> None:
        if not bool(torch.isfinite(losses).all()):  # diverged: halve, keep the reference
            self.factor *= FACTOR
            self.checks.append((self.steps, float("nan"), math.inf, self.factor))
            return
        z = 0.0
        if self.reference is not None:
            diff = losses - self.reference
            spread = float(diff.std()) / math.sqrt(len(diff))
            rise = float(diff.mean())
            z = rise / spread if spread > 0 else math.copysign(math.inf, rise) if rise else 0.0
        if z >= SIGNIFICANCE:
            self.factor *= FACTOR
            self.reference = losses
        elif self.reference is None or losses.mean() < self.reference.mean():
            self.reference = losses
        self.checks.append((self.steps, round(float(losses.mean()), 5), round(z, 2), self.factor))
