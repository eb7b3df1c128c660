"""P1's protocol: ALSALS vs Adam vs AdamSLS on final training loss (GPT-2 LM, ResNet-18 images).

P1 = Kenneweg, Kenneweg, Hammer, "Improving Line Search Methods for Large Scale Neural Network
Training", 2024 (arXiv 2403.18519): ALSALS (Armijo on Adam's momentum direction, smoothed) ends
with a lower training loss than AdamSLS (P0) and than Adam with a tuned cosine schedule, on
Transformers and CNNs. Two tasks, each ``--steps`` (default 2,000) optimizer steps per run:

``gpt2``: a small GPT-2 from ``transformers.GPT2Config`` (random init): 2 layers, 4 heads,
hidden 128, context 128, vocabulary 256 (UTF-8 bytes, lsframe's ``ByteTokenizer``), GPT2Config's
own dropout 0.1; 0.45 M parameters (two layers keep a run under ~15 CPU-minutes, hence 5 seeds).
Data: tinyshakespeare (``../shared/data/lm``), the first 90 % of its bytes in blocks of 128 for
training (batch 16 blocks = 2,048 tokens a step; 2,000 steps ≈ 4 passes), the last 10 % held
out. Reported: final training loss (mean over the last 50 steps) and the held-out loss (mean
token loss over every held-out block).

``resnet18``: timm's ResNet-18 (random init, 1 input channel, 10 classes) on Fashion-MNIST (Debian
``dataset-fashion-mnist``: 54k train after the seeded 10 % hold-out, 10k test), batch 128 (P1's
image batch in ``run_multiple_img.py``, which adds 2-step gradient accumulation; none here), no
augmentation; 2,000 steps ≈ 4.7 epochs. Reported: final training loss (last 50 steps), test
accuracy and test loss.

Settings and their sources:

* ALSALS: lsframe's :class:`~lsframe.optim.ALSALS` defaults (P1 and its reference
  ``sls/Ken_sls.py``: η0 = 1, (β1, β2) = (0.9, 0.999), β = 0.99, backtracking 0.9, growth
  1/0.999) with P1's Armijo constant: c = 0.3 for the language model (NLP), 0.5 for images.
* AdamSLS: lsframe's :class:`~lsframe.optim.AdamSLS` defaults, P0's (Kenneweg et al., IJCNN 2023):
  η0 = 0.1, c = 0.1, backtracking 0.9, γ = 2 with n = 500, no smoothing.
* Adam: ``torch.optim.Adam`` at lr 1e-3 (P1's reference: ``train_img.py`` sets 1e-3 for every
  non-SGD optimizer; 1e-3 is also the upper end of the tuned GPT-2 learning rates P1 reports and
  nanoGPT's tinyshakespeare rate), betas (0.9, 0.999), no weight decay, under P1's schedule:
  10 % linear warmup + cosine decay to 0 (the reference's ``CosineWarmupScheduler``). The line
  searches run without a schedule, as in P1.
* ``adam_constant`` (a diagnostic, not one of P1's rows; only with ``--optimizers``): the same
  Adam and warmup, then a constant 1e-3 instead of the cosine decay: how much of Adam's final
  loss its anneal accounts for, next to line searches that have none.
* Seeds set the initialisation and the data order; the hold-out splits are fixed.

Cost (measured, one thread, steps 40-70 of a run, after the line searches' first backtracking;
both line searches then take 2 forward passes a step): GPT-2 0.24 CPU-s a step with Adam, 0.36
with ALSALS, 0.40 with AdamSLS, so 8-14 CPU-minutes a 2,000-step run: 5 seeds, about 2.8
CPU-hours in all. ResNet-18 1.4-1.5 CPU-s a step with each: about 50 CPU-minutes a run, so 3
seeds, about 7.3 CPU-hours in all.

Run from the repository root (seed counts by the issue's rule: ≥ 5 seeds when a run takes under
~15 CPU-minutes, else 3)::

    OMP_NUM_THREADS=1 python -m benchmarks.p1_final_loss --task gpt2 --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python -m benchmarks.p1_final_loss --task resnet18 --seeds 0 1 2
    python -m benchmarks.p1_final_loss --task gpt2 --max-steps 5 --seeds 0   # smoke: /tmp
    python -m benchmarks.p1_final_loss --task gpt2 --seeds 0 1 2 3 4 --table-only  # logged runs

Every finished run is appended to ``benchmarks/results/p1_final_loss_<task>_cpu.runs.jsonl``
and reused by later invocations with the same settings; the table (mean ± std over seeds, and the
per-seed paired difference of the final training loss vs Adam) goes to
``p1_final_loss_<task>_cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.common import (
    append_run,
    beside,
    default_device,
    load_runs,
    logged_machines,
    mean_std,
    write_results,
)
from benchmarks.pairing import paired_differences
from benchmarks.protocols import (
    checkpoint_path,
    epoch_batches,
    evaluate,
    fashion_mnist,
    image_batches,
    image_scores,
    output_path,
    shakespeare_blocks,
    train,
)
from lsframe import optim
from lsframe.optim import WarmupCosineLR

OPTIMIZERS = ("alsals", "adam", "adamsls")  # P1's rows: the default
CHOICES = (*OPTIMIZERS, "adam_constant")  # and the diagnostic (module docstring)
TASKS = {
    "gpt2": {"batch_size": 16, "c": 0.3, "block_size": 128},
    "resnet18": {"batch_size": 128, "c": 0.5},
}
GPT2 = {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 128, "vocab_size": 256}
NO_SPECIAL = {"bos_token_id": None, "eos_token_id": None}  # GPT-2's 50256 is not a byte
ADAM_LR = 1e-3


def make_model(task: str) -> nn.Module:
    if task == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(**GPT2, **NO_SPECIAL))
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    return model.to(memory_format=torch.channels_last)  # NHWC: ~1.1x faster on CPU, same maths


def make_optimizer(name: str, task: str, model: nn.Module, steps: int):
    """``(optimizer, scheduler)`` with the settings of the module docstring."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        opt = torch.optim.Adam(params, lr=ADAM_LR)
        return opt, WarmupCosineLR(opt, warmup_ratio=0.1, total_steps=steps)
    if name == "adam_constant":  # the same warmup, then a cosine from 1 to 1: constant
        opt = torch.optim.Adam(params, lr=ADAM_LR)
        return opt, WarmupCosineLR(opt, warmup_ratio=0.1, total_steps=steps, min_lr_ratio=1.0)
    if name == "alsals":
        return optim.create("alsals", params, c=TASKS[task]["c"]), None
    if name == "adamsls":
        return optim.create("adamsls", params), None
    raise ValueError(f"unknown optimizer {name!r}; choose from {CHOICES}")


def lm_batches(blocks: Tensor, size: int, seed: int, device: str) -> Iterator[dict]:
    for index in epoch_batches(len(blocks), size, seed):
        ids = blocks[index].to(device)
        yield {"input_ids": ids, "labels": ids}


def heldout_loss(model: nn.Module, blocks: Tensor, device: str) -> float:
    """Mean token loss over ``blocks`` (each block predicts its last ``block_size − 1`` tokens)."""
    chunks = [blocks[i : i + 64].to(device) for i in range(0, len(blocks), 64)]

    def score(ids: Tensor) -> tuple[Tensor, int]:
        count = ids.shape[0] * (ids.shape[1] - 1)
        return model(input_ids=ids, labels=ids).loss * count, count

    return evaluate(model, chunks, score)


def run(
    name: str, task: str, seed: int, data: dict, args: argparse.Namespace, checkpoint: Path
) -> dict:
    """One training run, continued from ``checkpoint`` if an earlier sitting left one; its log
    row (without the settings)."""
    torch.manual_seed(seed)
    model = make_model(task).to(args.device)
    optimizer, scheduler = make_optimizer(name, task, model, args.steps)
    steps = min(args.steps, args.max_steps or args.steps)
    size = TASKS[task]["batch_size"]
    gpt2 = task == "gpt2"
    if gpt2:
        batches, criterion = lm_batches(data["train"], size, seed, args.device), None
    else:
        batches, criterion = (
            image_batches(*data["train"], size, seed, args.device),
            nn.CrossEntropyLoss(),
        )
    resume = {"checkpoint": checkpoint, "checkpoint_every": args.checkpoint_every}
    trace = train(
        model,
        optimizer,
        scheduler,
        batches,
        steps,
        criterion=criterion,
        log_every=args.log_every,
        **resume,
    )
    if gpt2:
        scores = {"heldout_loss": heldout_loss(model, data["val"], args.device)}
    else:
        scores = image_scores(model, *data["test"], args.device)
    final_lr = float(optimizer.param_groups[0]["lr"])
    return {**trace.summary(), **scores, "final_step_size": final_lr}


def table(rows: list[dict], names: list[str], task: str) -> str:
    metrics = ["heldout_loss"] if task == "gpt2" else ["test_acc", "test_loss"]
    heads = " | ".join(m.replace("_", " ") for m in metrics)
    lines = [
        f"| optimizer | seeds | final train loss | vs Adam (paired) | {heads} | final η "
        "| forwards/step | CPU s/step | wall s/run |",
        "|" + "---|" * (9 + len(metrics) - 1),
    ]
    for name in names:
        mine = [r for r in rows if r["optimizer"] == name]
        if not mine:
            continue
        diff = paired_differences(rows, "final_train_loss", name, "adam") if name != "adam" else []
        cells = " | ".join(mean_std([r[m] for r in mine]) for m in metrics)
        lines.append(
            f"| {name} | {len(mine)} | {mean_std([r['final_train_loss'] for r in mine])} "
            f"| {mean_std(diff) if diff else '—'} | {cells} "
            f"| {statistics.median(r['final_step_size'] for r in mine):.3g} "
            f"| {statistics.mean(r['forwards_per_step'] for r in mine):.2f} "
            f"| {statistics.mean(r['cpu_seconds_per_step'] for r in mine):.3f} "
            f"| {statistics.mean(r['seconds'] for r in mine):.0f} |"
        )
    return "\n".join(lines)


def describe(
    task: str,
    steps: int,
    args: argparse.Namespace,
    seeds: list[int],
    names: list[str],
    rows: list[dict],
) -> str:
    size = TASKS[task]["batch_size"]
    what = (
        f"GPT-2 from GPT2Config ({GPT2}) on tinyshakespeare bytes, batch {size} × 128 tokens"
        if task == "gpt2"
        else f"timm ResNet-18 on Fashion-MNIST (54k train, 10k test), batch {size}"
    )
    smoke = f" (smoke: first {args.max_steps} steps only)" if args.max_steps else ""
    diagnostic = ""
    if "adam_constant" in names:
        diagnostic = "; adam_constant (a diagnostic, not P1's): the same warmup, then constant"
    return (
        f"P1 final-loss protocol: {what}; {steps:,} steps{smoke}; Adam lr {ADAM_LR:g} with 10 % "
        f"warmup + cosine, ALSALS c = {TASKS[task]['c']}, AdamSLS P0 defaults{diagnostic}; seeds "
        f"{seeds}; device {logged_machines(rows, args.device)}; torch {torch.__version__}. Final "
        "train loss: mean over the last 50 steps; mean ± std over seeds; 'vs Adam' is the mean "
        "± std over seeds of (final train loss − Adam's, same seed): negative = lower than Adam; "
        "final η: median over seeds of the last step size / learning rate."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--optimizers", nargs="+", choices=CHOICES, default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke run: log under /tmp")
    parser.add_argument("--log-every", type=int, default=0, help="print the loss every N steps")
    parser.add_argument("--out", default=None, help="prefix; the task name is appended")
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="save a run every N steps (0: never)"
    )
    parser.add_argument(
        "--table-only", action="store_true", help="write the table of the logged runs; run none"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for task in args.task:
        name = f"p1_final_loss_{task}"
        out = output_path(
            name, args.out and f"{args.out}_{task}", bool(args.max_steps), args.device
        )
        log = beside(out, ".runs.jsonl")
        data = None
        if not args.table_only:
            gpt2 = task == "gpt2"
            data = shakespeare_blocks(TASKS[task]["block_size"]) if gpt2 else fashion_mnist()
        here = {"task": task, "steps": args.steps, "max_steps": args.max_steps}
        known = {(r["optimizer"], r["seed"]): r for r in load_runs(log, here)}
        for seed in args.seeds:
            for opt in args.optimizers:
                if (opt, seed) in known or args.table_only:
                    continue
                checkpoint = checkpoint_path(out, f"{opt}_steps{args.steps}_seed{seed}")
                row = {"optimizer": opt, "seed": seed, **here}
                append_run(log, row | run(opt, task, seed, data, args, checkpoint), args.device)
                checkpoint.unlink(missing_ok=True)
        # every logged run of these settings, not only this invocation's seeds and optimizers,
        # read again now: runs logged meanwhile by other processes stay in the table
        known = {(r["optimizer"], r["seed"]): r for r in load_runs(log, here)}
        rows = [known[key] for key in sorted(known, key=lambda k: k[1])]
        names = [name for name in CHOICES if any(r["optimizer"] == name for r in rows)]
        seeds = sorted({r["seed"] for r in rows})
        description = describe(task, args.steps, args, seeds, names, rows)
        write_results(out, description, table(rows, names, task), rows)


if __name__ == "__main__":
    main()
