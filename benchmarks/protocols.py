"""Shared pieces of the papers' protocols (``benchmarks.p2_large_batch``, ``benchmarks.p1_final_loss``).

Plain PyTorch loops on whole tensors (no Lightning), so that every step's loss and time is at
hand: each step's closure is lsframe's :func:`~lsframe.optim.make_closure` (line searches call it
for their forward-only trials; torch's and Lamb's optimizers call it once). The data come through
lsframe's own modules (:class:`~lsframe.data.IdxImageDataModule`,
:class:`~lsframe.data.TextFileLMDataModule`) and are then held as tensors: the large batches
are slices of one tensor instead of thousands of ``Dataset`` look-ups.

Resumable logs: a finished run is one JSON line in ``<out>.runs.jsonl``
(:func:`benchmarks.common.append_run`); a later invocation with the same settings reuses it
(:func:`benchmarks.common.load_runs`). ``--max-steps`` (a smoke run) writes under ``/tmp``.
Resumable runs: a run longer than a sitting saves a checkpoint every ``--checkpoint-every``
steps (:func:`train`: model, optimizer, scheduler, what the trace saw, the random state) under
``<out>.checkpoints/``; the next invocation continues it from there, on the same batches, and
the finished run deletes it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks.common import ROOT, machine
from lsframe.checkpoint_io import save_atomically
from lsframe.modules.random_state import random_states, set_random_states
from lsframe.optim import make_closure

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SHAKESPEARE = ROOT.parent / "shared" / "data" / "lm" / "tinyshakespeare" / "input.txt"
SMOKE_DIR = Path("/tmp/lsframe_protocol_smoke")
LAST = 50  # final training loss: mean over the last 50 steps


def fashion_mnist(seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """Fashion-MNIST as tensors ``(images (n, 1, 28, 28), labels)``: ``train`` = the 60k training
    file less a seeded 10 % hold-out (54k, as ``benchmarks.valley``), ``test`` = the official 10k
    test set. Images are standardised as lsframe's :class:`~lsframe.data.IdxImageDataModule` does.
    The hold-out split uses ``seed`` 0 by default, the same for every run."""
    from lsframe.data import IdxImageDataModule

    data = IdxImageDataModule(str(FASHION), seed=seed)
    data.setup("fit")
    out = {}
    for split in ("train", "test"):
        subset = data.datasets[split]
        images, labels = getattr(subset, "dataset", subset).tensors
        index = torch.as_tensor(getattr(subset, "indices", range(len(labels))))
        out[split] = (images[index].contiguous(), labels[index].contiguous())
    return out


def shakespeare_blocks(block_size: int) -> dict[str, Tensor]:
    """tinyshakespeare as UTF-8 byte tokens (vocabulary 256) in blocks of ``block_size``: ``train``
    = the first 90 % of the tokens, ``val`` = the last 10 % (held out, never trained on), as
    lsframe's :class:`~lsframe.data.TextFileLMDataModule` cuts them."""
    from lsframe.data import TextFileLMDataModule

    data = TextFileLMDataModule(str(SHAKESPEARE), tokenizer="bytes", block_size=block_size)
    data.setup("fit")
    return dict(data.blocks)


def epoch_batches(n: int, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Index batches over ``n`` items, endlessly: a new seeded permutation each epoch, the
    incomplete last batch of an epoch dropped (every step sees ``batch_size`` items)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def image_batches(
    images: Tensor, labels: Tensor, size: int, seed: int, device: str
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches of ``size`` on ``device`` (:func:`epoch_batches` order)."""
    for index in epoch_batches(len(labels), size, seed):
        yield images[index].to(device), labels[index].to(device)


@dataclass
class Trace:
    """What a training loop saw: the loss of every step (at the start of the step, on its
    batch), the wall-clock and CPU seconds of every step (CPU: this process's user + system
    time, all its threads; on a shared machine the wall clock also counts the waiting), and the
    model's forward passes."""

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    forwards: int = 0
    # one entry per sitting of the run ({"machine", "first_step"}): a run resumed from its
    # checkpoint on another machine says which machine took which steps
    sittings: list[dict[str, Any]] = field(default_factory=list)

    def machines(self) -> str | None:
        """``"<machine> (steps a–b), then <machine> (steps c–d)"`` when the run's sittings ran on
        more than one machine; None when one machine took every step."""
        if len({s["machine"] for s in self.sittings}) < 2:
            return None
        ends = [s["first_step"] - 1 for s in self.sittings[1:]] + [len(self.losses)]
        return ", then ".join(
            f"{s['machine']} (steps {s['first_step']}–{end})"
            for s, end in zip(self.sittings, ends, strict=True)
        )

    def final_loss(self, last: int = LAST) -> float:
        """Mean training loss over the last ``last`` steps."""
        return statistics.fmean(self.losses[-last:])

    @staticmethod
    def per_step(seconds: list[float]) -> float:
        """Median seconds per step, the first step (allocations, warm caches) left out."""
        return statistics.median(seconds[1:] or seconds)

    def summary(self) -> dict[str, Any]:
        finite = all(math.isfinite(x) for x in self.losses)
        row = {
            "steps_run": len(self.losses),
            "final_train_loss": self.final_loss() if finite else float("nan"),
            "diverged": not finite,
            "seconds": sum(self.seconds),
            "seconds_per_step": self.per_step(self.seconds),
            "cpu_seconds": sum(self.cpu_seconds),
            "cpu_seconds_per_step": self.per_step(self.cpu_seconds),
            "forwards_per_step": self.forwards / max(len(self.losses), 1),
        }
        machines = self.machines()
        if machines:  # the log's machine field, in place of the last sitting's alone
            row["machine"] = machines
        return row


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Iterator[Any],
    steps: int,
    *,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    criterion: Callable[[Any, Any], Tensor] | None = None,
    log_every: int = 0,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
) -> Trace:
    """``steps`` optimizer steps of ``model`` on ``batches`` (already on the model's device),
    each with lsframe's closure; a non-finite loss stops the run (``Trace.summary`` marks it).

    With ``checkpoint`` and ``checkpoint_every`` > 0 the run saves itself every
    ``checkpoint_every`` steps (atomically: a crash while saving keeps the last checkpoint), and
    a run that finds a checkpoint continues from it: the states are loaded, the batches it had
    used are skipped, and the steps left give the trace of an uninterrupted run (its seconds
    are those of the sittings that ran). The caller deletes the checkpoint once the run's row
    is logged."""
    trace = Trace()
    counter = model.register_forward_hook(lambda *_: setattr(trace, "forwards", trace.forwards + 1))
    start = 0
    if checkpoint is not None and checkpoint.exists():
        start = load_checkpoint(checkpoint, model, optimizer, scheduler, trace)
        for _ in range(start):
            next(batches)
    trace.sittings.append({"machine": machine(_device(model).type), "first_step": start + 1})
    model.train()
    try:
        for step in range(start, steps):
            batch = next(batches)
            started, cpu_started = time.perf_counter(), time.process_time()
            closure = make_closure(model, batch, optimizer, loss_fn, criterion=criterion)
            loss = float(optimizer.step(closure))
            if scheduler is not None:
                scheduler.step()
            trace.seconds.append(time.perf_counter() - started)
            trace.cpu_seconds.append(time.process_time() - cpu_started)
            trace.losses.append(loss)
            if log_every and (step + 1) % log_every == 0:
                print(f"  step {step + 1}/{steps}: loss {loss:.4f}", flush=True)
            if not math.isfinite(loss):
                break
            done = step + 1
            if checkpoint is not None and checkpoint_every and done % checkpoint_every == 0:
                save_checkpoint(checkpoint, done, model, optimizer, scheduler, trace)
    finally:
        counter.remove()
    return trace


def save_checkpoint(
    path: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any, trace: Trace
) -> None:
    """Everything :func:`train` needs to continue after ``step`` steps, written with lsframe's
    :func:`~lsframe.checkpoint_io.save_atomically` (the old file or the whole new one) and the
    generators of :func:`~lsframe.modules.random_state.random_states`."""
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "trace": asdict(trace),
        "random_states": random_states(_device(model)),
    }
    save_atomically(state, path)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: Any, scheduler: Any, trace: Trace
) -> int:
    """Load a :func:`save_checkpoint` file into the run's objects; the steps it had taken."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for key, value in state["trace"].items():
        setattr(trace, key, value)
    set_random_states(state["random_states"], _device(model))
    print(f"  resumed from {path} after {state['step']} steps", flush=True)
    return state["step"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def checkpoint_path(out: Path, run: str) -> Path:
    """Where run ``run`` of the table ``out`` keeps its checkpoint (git ignores the folder)."""
    return out.with_name(out.name + ".checkpoints") / f"{run}.pt"


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Sequence[Any], score: Callable[[Any], tuple[Tensor, int]]
) -> float:
    """The mean of ``score`` over ``batches`` in eval mode: ``score(batch)`` gives the batch's sum
    and its item count (correct predictions and images, summed token loss and tokens)."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        value, items = score(batch)
        total, count = total + float(value), count + items
    model.train()
    return total / count


def image_scores(model: nn.Module, images: Tensor, labels: Tensor, device: str) -> dict:
    """``test_acc`` and ``test_loss`` (mean cross-entropy) of a classifier, 1,000 images at a time."""
    chunks = [
        (images[i : i + 1000].to(device), labels[i : i + 1000].to(device))
        for i in range(0, len(labels), 1000)
    ]
    acc = evaluate(model, chunks, lambda b: ((model(b[0]).argmax(-1) == b[1]).sum(), len(b[1])))
    loss = evaluate(
        model, chunks, lambda b: (F.cross_entropy(model(b[0]), b[1], reduction="sum"), len(b[1]))
    )
    return {"test_acc": acc, "test_loss": loss}


def output_path(name: str, out: str | None, smoke: bool, device: str) -> Path:
    """``<out>`` or ``benchmarks/results/<name>_<cpu|gpu>``; a smoke run goes under ``/tmp``."""
    kind = "gpu" if device == "cuda" else "cpu"
    if smoke:
        path = SMOKE_DIR / f"{name}_{kind}"
    else:
        path = Path(out or ROOT / "benchmarks" / "results" / f"{name}_{kind}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
