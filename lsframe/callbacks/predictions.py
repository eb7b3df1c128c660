"""What ``predict`` computes, written to a file: one JSON line per example.

Lightning's ``trainer.predict`` returns the predictions to its caller; ``lsframe predict`` (a
command line) has none, so without a writer they were computed and dropped. ``lsframe
predict`` adds a :class:`PredictionWriter` unless the config lists a
:class:`~lightning.pytorch.callbacks.BasePredictionWriter` of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lsframe.errors import DataError
from lsframe.set_aside import set_aside

#: A batch key of lsframe's ``predict_step`` outputs, and its name on one example's line.
SINGULAR = {"labels": "label", "scores": "score"}


class PredictionWriter(BasePredictionWriter):
    """Write each example's prediction as one JSON line, as the batches come.

    A module's ``predict_step`` returns a dict of per-example tensors (first dimension the
    batch): lsframe's classifiers ``labels`` and ``probabilities``, a regression head
    ``scores``. Each line holds the example's position in the predict set (``index``; the
    sampler's own indices under DDP), every key of that dict as plain numbers (``labels`` and
    ``scores`` as ``label`` and ``score``), with several predict sets the set's name
    (``set``: MNLI's ``matched`` or ``mismatched``), and, when the module or the DataModule has
    ``label_names``, the class name as ``label_name``.

    Args:
        output_dir: Folder of the file. Default: the run's log folder (``trainer.log_dir``, the
            new ``version_<n>`` of ``lsframe predict``), else ``trainer.default_root_dir``.
        filename: The file's name; under DDP each rank writes ``<stem>.rank<k><suffix>``.
            A file of that name already there (a second predict with ``trainer.logger: false``
            or one ``output_dir``) is kept as ``<stem>.<k><suffix>``, the first free ``k``
            (:func:`keep_earlier`), and the closing line says so.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None
        #: where a file found at ``path`` when predict started was moved (None: there was none)
        self.kept: Path | None = None
        self.count = 0
        self._file: IO[str] | None = None
        self._label_names: list[str] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        name = Path(self.filename)
        if trainer.world_size > 1:
            name = name.with_name(f"{name.stem}.rank{trainer.global_rank}{name.suffix}")
        self.path = folder / name
        if self.path.is_dir():  # open() would end in IsADirectoryError's traceback
            raise DataError(
                "the predictions file is a folder: move it away, or give "
                "the PredictionWriter another filename or output_dir",
                where=str(self.path),
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.kept = keep_earlier(self.path)
        self._file = self.path.open("w", encoding="utf-8")
        self.count = 0
        names = getattr(pl_module, "label_names", None)
        if not names and trainer.datamodule is not None:
            names = getattr(trainer.datamodule, "label_names", None)
        self._label_names = [str(n) for n in names] if names else None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._file is None:
            return
        rows = _rows(prediction)
        indices = list(batch_indices) if batch_indices else []
        where = self._set_name(trainer, dataloader_idx)
        for i, row in enumerate(rows):
            index = indices[i] if i < len(indices) else self.count
            line = {"index": int(index), **where}
            line.update({SINGULAR.get(k, k): v for k, v in row.items()})
            label = line.get("label")
            if self._label_names and isinstance(label, int) and label < len(self._label_names):
                line["label_name"] = self._label_names[label]
            self._file.write(json.dumps(line) + "\n")
            self.count += 1

    @staticmethod
    def _set_name(trainer: pl.Trainer, dataloader_idx: int) -> dict[str, Any]:
        """``{"set": name}`` where predict has several sets (MNLI's matched and mismatched,
        whose indices each start at 0): the DataModule's ``eval_names``, else the loader's
        position; nothing for one set."""
        if len(getattr(trainer, "num_predict_batches", None) or []) < 2:
            return {}
        names = getattr(trainer.datamodule, "eval_names", None)
        if isinstance(names, (list, tuple)) and dataloader_idx < len(names):
            return {"set": str(names[dataloader_idx])}
        return {"set": dataloader_idx}

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()  # under DDP each rank says where its share went
        kept = "" if self.kept is None else f" (the file there before is kept as {self.kept.name})"
        print(f"lsframe predict: {self.count} predictions written to {self.path}{kept}", flush=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def keep_earlier(path: Path) -> Path | None:
    """Move the file at ``path`` to ``<stem>.<k><suffix>`` (the first free ``k``) and return its
    new path, so that writing ``path`` afresh loses nothing; None where there is no file."""
    if not path.is_file():
        return None
    return set_aside(path, lambda k: f"{path.stem}.{k}{path.suffix}")


def _rows(prediction: Any) -> list[dict[str, Any]]:
    """Per-example dicts of a ``predict_step`` output: a dict of batch tensors, or one tensor
    (written under ``prediction``)."""
    if isinstance(prediction, Tensor):
        prediction = {"prediction": prediction}
    if not isinstance(prediction, dict):
        raise TypeError(
            "PredictionWriter writes a predict_step output that is a tensor or a dict of "
            f"per-example tensors, got {type(prediction).__name__}"
        )
    columns = {  # per-example tensors; a 0-d one (a batch's loss) is no example's
        k: v.detach().cpu().tolist()
        for k, v in prediction.items()
        if isinstance(v, Tensor) and v.dim() > 0
    }
    size = len(next(iter(columns.values()))) if columns else 0
    return [{key: values[i] for key, values in columns.items()} for i in range(size)]
