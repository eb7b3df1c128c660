"""P2's large-batch protocol: Lamb vs ALTO vs AdamW, ResNet-20 on Fashion-MNIST, test accuracy.

P2 = Zhao et al., "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025
(arXiv 2510.27153): ALTO beats Lamb at large batch (CIFAR-10 ResNet-20, batch 16,384: 88.83 vs
83.56 %). Here the model is the same CIFAR ResNet-20 on Fashion-MNIST (the data at hand offline),
at batch 4,096 and 8,192, for the same number of epochs at both sizes (so 8,192 takes half the
steps: the large-batch difficulty P2 is about).

Model: ResNet-20 of He et al. (2016, §4.2, CIFAR): a 3×3 stem of 16 channels, three stages of
three basic blocks (16, 32, 64 channels; stride 2 at stages 2 and 3), global average pooling, a
linear head; 1 input channel; shortcuts are 1×1 convolutions + BatchNorm where the shape changes
(He et al.'s option B); Kaiming-normal convolutions. About 0.27 M parameters. Written here: timm
has no CIFAR ResNet-20. The weights are channels-last (NHWC): the same maths, and faster
convolutions on CPU.

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist``: 54k training images (the 60k file
less the seeded 10 % hold-out ``benchmarks.valley`` uses), the official 10k test set; each epoch a
seeded permutation, the incomplete last batch dropped (13 steps an epoch at 4,096, 6 at 8,192).
No augmentation. Nothing is tuned on the test set.

Settings and their sources:

* ALTO: lsframe's :class:`~lsframe.optim.ALTO` defaults, which are P2's and its reference
  factory's (``create_ALTO_optimizer`` in zhaotong94/E, README): α = −5, β1 = 0.99 (the batch
  ≥ 1K rule), (β2, β3) = (0.9, 0.99), ε = 1e-6, λ = 1e-4, global gradient-norm clip 1.0 before
  the adaptation; lr 1e-2 (the README's ``create_ALTO_optimizer(model, lr=0.01, ...)``).
* Lamb: the same step size, λ, ε and clip as ALTO, with LAMB's own (β1, β2) = (0.9, 0.999)
  (You et al., ICLR 2020); so Lamb and ALTO differ by the adaptor and ALTO's (β2, β3) only.
* AdamW: lr 1e-2, betas (0.9, 0.99), weight decay 1e-4: the AdamW of the E README's large-batch
  example (``AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=1e-4)``).
* Parameter groups: BatchNorm weights and biases get no weight decay (and so no trust ratio in
  Lamb/ALTO), as the reference factory's default ``exclude_layers=['bn', 'ln', 'bias']``
  (:func:`lsframe.optim.weight_decay_groups`); the same groups for all three.
* Schedule: 10 % linear warmup + cosine decay to 0 for all three (LAMB's recipe warms up; P2's
  CIFAR schedule and epoch count are not in the sources available offline, so the project's
  ``benchmarks.valley`` schedule is kept).
* Epochs: 30 at both batch sizes (390 steps at 4,096, 180 at 8,192), our choice: P2's CIFAR
  epoch count is not in the sources available offline; 30 is a usual Fashion-MNIST training
  length and still leaves 180 steps at 8,192
  (``--epochs`` changes it; runs with other settings are logged apart).

``--bf16`` runs each training forward under bf16 autocast (the loss, the backward's
accumulation, the optimizers and the test evaluation stay in fp32). It is a change of protocol:
its runs are logged apart and its table is ``p2_large_batch_bf16_<cpu|gpu>``.

Cost, on one thread of this project's development machine (an Intel Xeon with AMX), the same for
the three optimizers (the convolutions dominate): a step at batch 4,096 takes about 16
CPU-seconds in fp32 and about 7 with ``--bf16`` (AdamW, alternated back to back; 8–9 in a full
run beside another benchmark process), and a step at 8,192 twice that. A run (390 steps at
4,096, 180 at 8,192) is far over ~15 CPU-minutes, so 3 seeds: 18 runs, about 30 CPU-hours in
fp32 and about 14 with ``--bf16``, which is the form run on CPU. In fp32 the protocol is a GPU
job (``--device cuda``; the table is then ``p2_large_batch_gpu``). The table's "CPU s/step"
column gives each run's measured cost.

Run from the repository root (the seed count follows the issue's rule)::

    OMP_NUM_THREADS=1 python -m benchmarks.p2_large_batch --seeds 0 1 2
    OMP_NUM_THREADS=1 python -m benchmarks.p2_large_batch --bf16 --seeds 0 --batch-sizes 4096 \
        --optimizers alto           # one run: two such processes at a time share the log
    python -m benchmarks.p2_large_batch --bf16 --table-only           # the table of logged runs
    python -m benchmarks.p2_large_batch --max-steps 3 --seeds 0     # smoke: /tmp, timings only

Every finished run is appended to ``benchmarks/results/p2_large_batch[_bf16]_cpu.runs.jsonl``
(``_gpu`` on a GPU) and reused by later invocations with the same settings; the table goes to
``p2_large_batch[_bf16]_cpu.md`` and ``.json``: every logged run of the invocation's settings (epochs,
precision) at its batch sizes, whichever process logged it (test accuracy, mean ± std over
seeds; per-seed paired difference vs AdamW).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.common import (
    append_run,
    beside,
    default_device,
    load_runs,
    logged_machines,
    logged_torch,
    mean_std,
    warn_if_bf16_emulated,
    write_results,
)
from benchmarks.pairing import paired_differences
from benchmarks.protocols import (
    checkpoint_path,
    fashion_mnist,
    image_batches,
    image_scores,
    output_path,
    train,
)
from lsframe.optim import ALTO, Lamb, WarmupCosineLR, weight_decay_groups

OPTIMIZERS = ("lamb", "alto", "adamw")
BATCH_SIZES = (4096, 8192)
LR, WEIGHT_DECAY = 1e-2, 1e-4
TRAIN_SIZE = 54_000  # Fashion-MNIST's 60k training images less the 10 % hold-out


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection (He et al., 2016)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 (3 stages × 3 blocks, 16/32/64 channels) for small images."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        layers, width = [], 16
        for stage, channels in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(width, channels, stride))
                width = channels
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """One of :data:`OPTIMIZERS` with the settings of the module docstring."""
    groups = weight_decay_groups(model.named_parameters())
    if name == "alto":
        return ALTO(groups, lr=LR, weight_decay=WEIGHT_DECAY, alpha=-5.0, valley_beta=0.99)
    if name == "lamb":
        return Lamb(groups, lr=LR, betas=(0.9, 0.999), eps=1e-6, weight_decay=WEIGHT_DECAY)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99), weight_decay=WEIGHT_DECAY)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def bf16_cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The cross-entropy of ``model`` on ``(images, labels)`` with the forward under bf16
    autocast on the images' device and the loss in fp32."""
    images, labels = batch
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        logits = model(images)
    return F.cross_entropy(logits.float(), labels)


def run(
    name: str, batch_size: int, seed: int, data: dict, args: argparse.Namespace, checkpoint: Path
) -> dict:
    """One training run, continued from ``checkpoint`` if an earlier sitting left one; its log
    row (without the settings)."""
    torch.manual_seed(seed)
    model = ResNet20().to(args.device, memory_format=torch.channels_last)
    optimizer = make_optimizer(name, model)
    images, labels = data["train"]
    total = args.epochs * (len(labels) // batch_size)
    steps = min(total, args.max_steps or total)
    scheduler = WarmupCosineLR(optimizer, warmup_ratio=0.1, total_steps=total)
    batches = image_batches(images, labels, batch_size, seed, args.device)
    resume = {"checkpoint": checkpoint, "checkpoint_every": args.checkpoint_every}
    loss = {"loss_fn": bf16_cross_entropy} if args.bf16 else {"criterion": nn.CrossEntropyLoss()}
    trace = train(model, optimizer, scheduler, batches, steps, **loss, **resume)
    scores = image_scores(model, *data["test"], args.device)
    return {**trace.summary(), **scores, "total_steps": total}


def table(rows: list[dict], names: list[str], batch_sizes: list[int]) -> str:
    lines = [
        "| batch | optimizer | seeds | test acc | vs AdamW (paired, per seed) | final train loss "
        "| CPU s/step | wall s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in batch_sizes:
        here = [r for r in rows if r["batch_size"] == size]
        for name in names:
            mine = [r for r in here if r["optimizer"] == name]
            if not mine:
                continue
            diff = paired_differences(here, "test_acc", name, "adamw") if name != "adamw" else []
            lines.append(
                f"| {size:,} | {name} | {len(mine)} | {mean_std([r['test_acc'] for r in mine])} "
                f"| {mean_std(diff) if diff else '—'} "
                f"| {mean_std([r['final_train_loss'] for r in mine])} "
                f"| {statistics.mean(r['cpu_seconds_per_step'] for r in mine):.2f} "
                f"| {statistics.mean(r['seconds'] for r in mine):.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke run: log under /tmp")
    parser.add_argument("--out", default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward")
    parser.add_argument(
        "--table-only", action="store_true", help="write the table of the logged runs; run none"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=10, help="save a run every N steps (0: never)"
    )
    args = parser.parse_args()
    warn_if_bf16_emulated(args.device, args.bf16)
    torch.set_num_threads(args.threads)
    name = "p2_large_batch_bf16" if args.bf16 else "p2_large_batch"
    out = output_path(name, args.out, args.max_steps is not None, args.device)
    log = beside(out, ".runs.jsonl")
    settings = {"epochs": args.epochs, "max_steps": args.max_steps, "bf16": args.bf16}
    data = None if args.table_only else fashion_mnist()
    for size in [] if args.table_only else args.batch_sizes:
        here = {"batch_size": size, **settings}
        known = {(r["optimizer"], r["seed"]) for r in load_runs(log, here, {"bf16": False})}
        for seed in args.seeds:
            for name in args.optimizers:
                if (name, seed) not in known:
                    precision = "_bf16" if args.bf16 else ""
                    run_name = f"{name}_batch{size}_epochs{args.epochs}{precision}_seed{seed}"
                    checkpoint = checkpoint_path(out, run_name)
                    row = {"optimizer": name, "seed": seed, **here}
                    row.update(run(name, size, seed, data, args, checkpoint))
                    append_run(log, row, args.device)
                    checkpoint.unlink(missing_ok=True)
    # the table holds every logged run of these settings, read again now: runs that other
    # processes (other seeds, sizes or optimizers) logged meanwhile stay in it
    logged = load_runs(log, settings, {"bf16": False})
    last = {(r["batch_size"], r["seed"], r["optimizer"]): r for r in logged}  # one row a run
    rows = sorted(
        (r for r in last.values() if r["batch_size"] in args.batch_sizes),
        key=lambda r: (r["batch_size"], r["seed"], OPTIMIZERS.index(r["optimizer"])),
    )
    seeds = sorted({r["seed"] for r in rows})
    train_size = TRAIN_SIZE if data is None else len(data["train"][1])
    steps = {s: args.epochs * (train_size // s) for s in args.batch_sizes}
    meta = (
        f"P2 large-batch protocol: ResNet-20 (0.27 M parameters) on Fashion-MNIST (54k train, "
        f"10k test), {args.epochs} epochs = "
        + ", ".join(f"{n} steps at batch {s:,}" for s, n in steps.items())
        + (f" (smoke: first {args.max_steps} steps only)" if args.max_steps else "")
        + ("; forward under bf16 autocast" if args.bf16 else "; fp32")
        + f"; lr {LR:g}, weight decay {WEIGHT_DECAY:g}, 10 % warmup + cosine; seeds {seeds}; "
        f"device {logged_machines(rows, args.device)}; torch {logged_torch(rows)}. Mean ± std "
        "over seeds; 'vs AdamW' is the mean ± std over seeds of (test acc − AdamW's test acc, same seed)."
    )
    write_results(out, meta, table(rows, list(OPTIMIZERS), args.batch_sizes), rows)
    if any(math.isnan(r["final_train_loss"]) for r in rows):
        print("note: some runs diverged (non-finite loss); their rows say diverged: true")


if __name__ == "__main__":
    main()
