"""Host-side operator count of one optimizer step: what a GPU step waits on when it is launch-bound.

On a GPU a fine-tuning step of a small model at batch 16 is bound by the host, not by the
device: each aten operator the Python side dispatches costs roughly 5-20 µs of host time
whatever its size (a kernel launch on CUDA), so an optimizer that dispatches a few operators per
parameter tensor pays for it there even when its arithmetic is no more than AdamW's. The GPU
step-cost table (``step_cost_minilm_default_gpu.md``) measured exactly that; this counts the
operators on any machine, CPU included, so the GPU path can be worked on without a GPU.

Per optimizer spec (:func:`benchmarks.specs.build`) and model it profiles one step after three
warm-up steps and counts the aten operators the step dispatches outside its closure: every
top-level aten operator of the step (one not called from inside another aten operator) minus
those of one call of the closure alone, by name. ``--cuda-path`` makes SlopeTrackingAdam and SaLSA
take the branch a CUDA tensor takes (their CPU-only cache-blocked kernels and torch's fused CPU
Adam step off, CUDA's piece size for the transients and its finite check), which is the path a
GPU runs. Counts are exact and deterministic: no timing is
involved, so a contended machine gives the same table.

Usage::

    python -m benchmarks.host_ops --cuda-path --loop-sums       # small BERT and MiniLM-L6
    python -m benchmarks.host_ops --models small-bert --optimizers adamw-const@5e-5 salsa
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import ROOT, write_results
from benchmarks.specs import DEFAULT, build
from benchmarks.step_cost import make_model
from lsframe.optim import _functional, make_closure, salsa, slope_tracking_adam
from lsframe.optim._functional import QUOTIENT_BYTES

OPTIMIZERS = ["adamw-const@5e-5", "adamw-fused-const@5e-5", DEFAULT, "salsa"]
WARM_STEPS = 3
# operators left out of the kernel count: views, dtype queries, reads of CPU scalars (AdamW's
# step counts) and every ``to`` (most are between equal dtypes here, which launch nothing; the
# float64 casts of small sums do), so the count is a lower bound
NO_KERNEL = {
    "aten::reshape",
    "aten::view",
    "aten::promote_types",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::lift_fresh",
    "aten::detach_",
    "aten::empty",
    "aten::to",
}


def top_level_ops(prof: Any) -> Counter:
    """The aten operators of a profile that no other aten operator called, by name."""
    events = [
        e
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    return Counter(e.name for e in events)


def ops_outside_closure(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any, **closure_args: Any
) -> Counter:
    """The aten operators one ``optimizer.step(closure)`` dispatches outside its closure (the
    step's top-level operators minus those of one call of the closure alone), by name."""
    with profile(activities=[ProfilerActivity.CPU]) as whole:
        optimizer.step(make_closure(model, batch, optimizer, **closure_args))
    with profile(activities=[ProfilerActivity.CPU]) as closure_only:
        make_closure(model, batch, optimizer, **closure_args)()
    return top_level_ops(whole) - top_level_ops(closure_only)


def step_ops(spec: str, model_name: str, batch: dict, vocab_size: int) -> dict:
    """The operators of one step of ``spec`` after :data:`WARM_STEPS` steps (lazy state
    allocated), and the model's parameter tensor count."""
    run = build(spec, make_model(model_name, vocab_size), total_steps=1000)
    for _ in range(WARM_STEPS):
        run.optimizer.step(make_closure(run.model, batch, run.optimizer))
    outside = ops_outside_closure(run.model, run.optimizer, batch)
    tensors = sum(1 for p in run.model.parameters() if p.requires_grad)
    return {
        "optimizer": spec,
        "model": model_name,
        "tensors": tensors,
        "ops": sum(outside.values()),
        "kernel_ops": sum(n for name, n in outside.items() if name not in NO_KERNEL),
        "top": outside.most_common(6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small-bert", "minilm"])
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--cuda-path", action="store_true", help="the line searches' GPU branch")
    parser.add_argument(
        "--loop-sums",
        action="store_true",
        help="also the default with its sums looped over the tensors (strided rows, sharded "
        "tensors, and the CUDA branch before 2026-12-04)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host_ops_cpu"))
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.cuda_path:
        for module in (salsa, slope_tracking_adam):  # as for CUDA tensors
            module.blocked_on = lambda grads: False
        QUOTIENT_BYTES["cpu"] = QUOTIENT_BYTES["cuda"]  # CUDA's pieces, and finite check
        _functional.BATCHED_ON = _functional.BATCHED_ON | {"cpu"}
    rows = []
    for model_name in args.models:
        vocab = 30522 if model_name == "minilm" else 1000
        batch = {
            "input_ids": torch.randint(0, vocab, (16, 32)),
            "attention_mask": torch.ones(16, 32, dtype=torch.long),
            "labels": torch.randint(0, 2, (16,)),
        }
        rows += [step_ops(spec, model_name, batch, vocab) for spec in args.optimizers]
        if args.loop_sums and DEFAULT in args.optimizers:
            batched_on = slope_tracking_adam.batched_on
            slope_tracking_adam.batched_on = lambda grads: False
            row = step_ops(DEFAULT, model_name, batch, vocab)
            slope_tracking_adam.batched_on = batched_on
            rows.append(row | {"optimizer": f"{DEFAULT}, sums looped over the tensors"})
    lines = [
        "| model | optimizer | parameter tensors | aten ops dispatched | of them kernels "
        "| kernels per tensor | most frequent |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in r["top"])
        lines.append(
            f"| {r['model']} | {r['optimizer']} | {r['tensors']} | {r['ops']} "
            f"| {r['kernel_ops']} | {r['kernel_ops'] / r['tensors']:.1f} | {top} |"
        )
    meta = (
        f"Host-side aten operators of one optimizer step outside its closure (after "
        f"{WARM_STEPS} steps; batch 16 × 32 tokens; a searching step's trial forwards count, "
        "SaLSA's step 4 searches); "
        + (
            "the line searches on their CUDA branch (CPU-only kernels off); "
            if args.cuda_path
            else ""
        )
        + f"torch {torch.__version__}. Counts, not times: every dispatched operator costs host "
        "time; 'kernels' (a lower bound) leaves out views, dtype queries, reads of CPU scalars and "
        "every `to` (most between equal dtypes, which launch nothing); each of the rest launches "
        "at least one kernel on a GPU."
    )
    write_results(Path(args.out), meta, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
