"""GLUE (Wang et al., ICLR 2019) from the original TSV layout or from HF ``datasets``.

A local copy is the directory that GLUE's download script writes: ``<data_dir>/<TASK>/train.tsv``,
``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). Labels follow the order of
HF ``datasets`` ("glue", task), so a model fine-tuned from either source means the same thing.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsframe.data.examples import TextExamples
from lsframe.data.text import TextClassificationDataModule
from lsframe.errors import ConfigError, DataError, MissingFileError

# GLUE rows can be longer than csv's default field limit (QQP, MNLI parses)
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored and scored.

    Args:
        directory: Folder name in the GLUE layout (``SST-2``).
        hf_name: Config name in HF ``datasets`` ("glue", hf_name).
        text: Column(s) holding the sentence or the sentence pair: header names, or 0-based
            indices for a file without a header.
        label: Label column (name or index).
        labels: Label strings in class-index order; empty for a regression task.
        header: Whether the TSV starts with a header line.
        columns: Number of columns per row for a file without a header.
        dev_files: The validation file name(s); more than one gives one validation set each.
        metrics: Metric names, the first being the task's main score.
        score_range: The scores a regression task defines (STS-B: 0 to 5); a score outside
            is refused at its line.
    """

    directory: str
    hf_name: str
    text: tuple[str | int, ...]
    label: str | int
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    header: bool = True
    columns: int | None = None
    dev_files: tuple[str, ...] = ("dev.tsv",)
    score_range: tuple[float, float] | None = None

    @property
    def num_labels(self) -> int:
        """Classes, or 1 for a regression task (STS-B)."""
        return len(self.labels) or 1

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """Class names in class-index order (a model's ``id2label``): HF ``datasets``' names
        where the files spell classes as digits (SST-2: ``negative``, ``positive``), else
        ``labels``; None for regression (STS-B)."""
        return (CLASS_NAMES.get(self.hf_name) or self.labels) or None

    @property
    def is_regression(self) -> bool:
        return not self.labels


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", "cola", (3,), 1, _BINARY, ("mcc", "acc"), header=False, columns=4),
    "sst2": GlueTask("SST-2", "sst2", ("sentence",), "label", _BINARY, ("acc",)),
    "mrpc": GlueTask("MRPC", "mrpc", ("#1 String", "#2 String"), "Quality", _BINARY, ("acc", "f1")),
    "stsb": GlueTask(
        "STS-B",
        "stsb",
        ("sentence1", "sentence2"),
        "score",
        (),
        ("pearson", "spearman"),
        score_range=(0.0, 5.0),
    ),
    "qqp": GlueTask(
        "QQP", "qqp", ("question1", "question2"), "is_duplicate", _BINARY, ("acc", "f1")
    ),
    "mnli": GlueTask(
        "MNLI",
        "mnli",
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        ("acc",),
        dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
    ),
    "qnli": GlueTask("QNLI", "qnli", ("question", "sentence"), "label", _ENTAILMENT, ("acc",)),
    "rte": GlueTask("RTE", "rte", ("sentence1", "sentence2"), "label", _ENTAILMENT, ("acc",)),
    "wnli": GlueTask("WNLI", "wnli", ("sentence1", "sentence2"), "label", _BINARY, ("acc",)),
}

#: HF ``datasets``' class names of the tasks whose files spell classes as digits.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "wnli": ("not_entailment", "entailment"),
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def glue_task(name: str) -> GlueTask:
    """The task spec for ``name`` (case-insensitive; ``SST-2`` and ``sst2`` both work)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise ConfigError(
            f"unknown GLUE task {name!r}; tasks: {', '.join(GLUE_TASKS)}", argument="task_name"
        )
    return GLUE_TASKS[key]


def read_glue_tsv(path: str | Path, task: GlueTask) -> TextExamples:
    """Read one GLUE TSV file; every row is checked.

    Raises:
        MissingFileError: (a ``FileNotFoundError``) the file does not exist.
        DataError: (a ``ValueError``) the file is empty or has no example, a row has the wrong
            number of columns, a missing column, or a label that does not parse; ``where`` is
            ``<file>:<line>``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"GLUE {task.directory} file not found", where=str(path))
    raw = path.read_bytes()
    try:  # utf-8-sig: MRPC's header starts with a byte-order mark in the official files
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} ({error.reason})",
            where=f"{path}:{line}",
        ) from None
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.header:
        if not rows:
            raise DataError("empty file, expected a header line", where=str(path))
        header, rows, first_line = rows[0], rows[1:], 2
        width = len(header)
        try:
            text_index = [header.index(c) for c in task.text]
            label_index = header.index(task.label)
        except ValueError:
            wanted = [*task.text, task.label]
            raise DataError(
                f"header {header} lacks a column of {wanted}", where=f"{path}:1"
            ) from None
    else:
        width, first_line = task.columns, 1
        text_index, label_index = list(task.text), int(task.label)
    texts: list[list[str]] = [[] for _ in text_index]
    labels: list[float] | list[int] = []
    for line, row in enumerate(rows, start=first_line):
        if not row:
            continue
        if len(row) != width:
            raise DataError(f"{len(row)} columns, expected {width}", where=f"{path}:{line}")
        labels.append(_parse_label(row[label_index], task, path, line))
        for column, index in zip(texts, text_index):
            column.append(row[index])
    if not labels:
        raise DataError(
            "no examples" + (" after the header line" if task.header else ""), where=str(path)
        )
    pair = texts[1] if len(texts) > 1 else None
    return TextExamples(texts[0], labels, pair)


def _parse_label(value: str, task: GlueTask, path: Path, line: int) -> float | int:
    value = value.strip()
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise DataError(f"score {value!r} is not a number", where=f"{path}:{line}") from None
        low, high = task.score_range or (-math.inf, math.inf)
        if not math.isfinite(score) or not low <= score <= high:
            bounds = f" in [{low:g}, {high:g}]" if task.score_range else ""
            raise DataError(
                f"score {value!r} is not a finite number{bounds} ({task.directory})",
                where=f"{path}:{line}",
            )
        return score
    if value not in task.labels:
        raise DataError(f"label {value!r} is not one of {task.labels}", where=f"{path}:{line}")
    return task.labels.index(value)


class GlueDataModule(TextClassificationDataModule):
    """Any GLUE task, from a local TSV copy (``data_dir``) or from HF ``datasets``.

    Validation is GLUE's dev set (MNLI: matched and mismatched, two validation loaders); GLUE's
    test labels are hidden, so ``test`` and ``predict`` also use the dev set(s).

    Args:
        task_name: ``cola``, ``sst2``, ``mrpc``, ``stsb``, ``qqp``, ``mnli``, ``qnli``, ``rte``
            or ``wnli`` (``SST-2`` spellings work too).
        data_dir: Directory in the GLUE layout; ``None`` loads HF ``datasets`` ("glue", task),
            which needs the hub or a cache.
        **kwargs: See :class:`~lsframe.data.text.TextClassificationDataModule` (batch size,
            ``max_length``, ``train_limit``: P0's "small" setting keeps the first 500, ...).
    """

    def __init__(self, task_name: str = "sst2", data_dir: str | None = None, **kwargs: Any) -> None:
        self.task = glue_task(task_name)
        super().__init__(**kwargs)
        if data_dir is not None and not Path(data_dir).is_dir():
            raise MissingFileError(f"no such directory {data_dir}", argument="data.data_dir")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.num_labels = self.task.num_labels
        self.metric_names = self.task.metrics

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """The task's class names in class-index order (RTE: ``entailment``,
        ``not_entailment``), None for STS-B; the command line links them to the model's
        ``label_names`` (its ``id2label``)."""
        return self.task.label_names

    @property
    def eval_names(self) -> list[str]:
        """One name per dev set: ``dev``, or ``matched`` and ``mismatched`` (MNLI)."""
        return [Path(f).stem.removeprefix("dev_") for f in self.task.dev_files]

    def check_files(self, stage: str) -> None:
        """Read and check the local TSV files ``stage`` uses (``fit``: train and dev), without
        tokenizing: the command line calls this before the model loads, so a missing task
        folder or a malformed row stops the run within seconds. Nothing to check without a
        ``data_dir`` (HF ``datasets``)."""
        if self.data_dir is None:
            return
        folder = self.data_dir / self.task.directory
        if not folder.is_dir():
            names = ", ".join(("train.tsv", *self.task.dev_files))
            raise MissingFileError(
                f"data_dir has no {self.task.directory} folder for task {self.task.hf_name!r} "
                f"(expected {self.task.directory}/ with {names})",
                where=str(folder),
            )
        for split in ("train", "validation") if stage == "fit" else ("validation",):
            self.load_split(split)

    def load_split(self, split: str) -> TextExamples | list[TextExamples]:
        files = ("train.tsv",) if split == "train" else self.task.dev_files
        if self.data_dir is None:
            loaded = [self._load_hub(split, Path(f).stem) for f in files]
        else:
            loaded = [
                read_glue_tsv(self.data_dir / self.task.directory / f, self.task) for f in files
            ]
        return loaded[0] if len(loaded) == 1 else loaded

    def _load_hub(self, split: str, stem: str) -> TextExamples:
        try:
            from datasets import load_dataset
        except ImportError as error:
            raise ImportError(
                "GlueDataModule without data_dir loads HF datasets: pip install datasets, "
                "or set data.data_dir to a local GLUE copy"
            ) from error
        hf_split = "train" if split == "train" else stem.replace("dev", "validation")
        frame = load_dataset("glue", self.task.hf_name, split=hf_split)
        columns = [c for c in frame.column_names if c not in ("label", "idx")]
        pair = list(frame[columns[1]]) if len(columns) > 1 else None
        return TextExamples(list(frame[columns[0]]), list(frame["label"]), pair)
