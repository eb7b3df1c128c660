"""Image classification with any timm model."""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F

from lsframe.errors import ConfigError
from lsframe.modules.base import ClosureModule
from lsframe.modules.policy import check_label_names
from lsframe.validation import check_int_at_least


class ImageClassificationModule(ClosureModule):
    """Train or fine-tune ``timm.create_model(model_name, pretrained, num_classes, in_chans)``.

    Batches are ``(images, labels)``. Logged: ``val/acc``, ``val/acc_top5`` (10 classes or
    more), ``val/loss`` and the ``test/`` counterparts.

    Args:
        model_name: A timm model name (``resnet34``, ``resnet50``, ``resnet18``, ...).
        pretrained: Load timm's pretrained weights (needs the hub or a cache).
        num_classes: Classes of the new head. ``lsframe fit`` links it to the DataModule's
            ``num_classes`` (CIFAR-100: 100, an image folder: its class folders). None: 10.
        in_chans: Input channels, linked to the DataModule's ``in_chans`` (1 for MNIST).
            None: 3.
        label_smoothing: Cross-entropy label smoothing. Default: 0.
        label_names: Class names in class-index order, ``num_classes`` of them; ``lsframe fit``
            links them to the DataModule's ``label_names`` (an image folder: its class
            folders). ``predict`` writes them beside each label and ``export`` into
            ``config.json``. None: no names.
        **kwargs: The optimizer, scheduler and step options of :class:`ClosureModule`.
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        num_classes: int | None = None,
        in_chans: int | None = None,
        label_smoothing: float = 0.0,
        label_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        import timm

        num_classes = 10 if num_classes is None else num_classes
        in_chans = 3 if in_chans is None else in_chans
        check_int_at_least(2, **{"model.num_classes": num_classes})
        if label_names is not None:
            label_names = [str(name) for name in label_names]
            check_label_names(label_names, num_classes, "num_classes", "model.label_names")
        try:
            model = timm.create_model(
                model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
            )
        except RuntimeError as error:  # timm: "Unknown model (...)"
            raise ValueError(f"model.model_name: {error}") from error
        except (OSError, ValueError) as error:  # the hub's weights, offline or not cached
            if not pretrained:
                raise
            raise ConfigError(
                f"could not load timm's pretrained weights of {model_name!r} (the hub could "
                "not provide them and they are not in the local cache; offline, train from "
                f"scratch with pretrained: false): {type(error).__name__}",
                argument="model.pretrained",
            ) from error
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters(ignore=["model"])
        self.num_classes, self.in_chans, self.label_smoothing = (
            num_classes,
            in_chans,
            label_smoothing,
        )
        self.label_names, self.pretrained = label_names, pretrained
        self.metrics = torch.nn.ModuleDict({s: self._make_metrics() for s in ("val", "test")})
        #: The DataModule's evaluation preprocessing (its ``data_config()``), kept in checkpoints
        #: so an exported model records it (:mod:`lsframe.modules.export`); None: not known.
        self.data_config: dict[str, Any] | None = None

    def _make_metrics(self) -> torchmetrics.MetricCollection:
        metrics = {"acc": torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)}
        if self.num_classes >= 10:
            metrics["acc_top5"] = torchmetrics.Accuracy(
                task="multiclass", num_classes=self.num_classes, top_k=5
            )
        return torchmetrics.MetricCollection(metrics)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.check_data(num_classes=self.num_classes, in_chans=self.in_chans)
        config = getattr(self.trainer.datamodule, "data_config", None) if self._trainer else None
        if callable(config):
            prepared = config()
            self.data_config = prepared or self.data_config
            self.check_input_size(prepared, self.trainer.datamodule)
            if stage == "fit" and self.pretrained:
                takes = hasattr(self.trainer.datamodule, "timm_model")  # CIFAR, image folders
                self.check_normalisation(prepared, takes)

    def check_input_size(self, data_config: dict[str, Any] | None, datamodule: Any) -> None:
        """A timm model with a fixed input size (a patch embedding without dynamic size:
        ``vit_tiny_patch16_224`` takes 224×224 only) must get images of that size, said before
        the first step (timm asserts it in the forward); models that take any size (ResNets,
        ``test_vit``) are not checked.

        Raises:
            ConfigError: at ``data.init_args.image_size`` (or ``timm_model``) where the
                DataModule has it, else at ``model.init_args.model_name``.
        """
        from timm.layers import PatchEmbed

        embed = next((m for m in self.model.modules() if isinstance(m, PatchEmbed)), None)
        size = getattr(embed, "img_size", None)
        given = tuple((data_config or {}).get("input_size", ())[1:])
        if not getattr(embed, "strict_img_size", False) or not size or given in ((), tuple(size)):
            return
        name = self.hparams.model_name
        prepare = f"data.timm_model: {name}, which prepares the images as the model expects"
        # image_size is not read where the data takes its transforms from a timm_model
        sized = getattr(datamodule, "timm_model", None) is None
        if sized and hasattr(datamodule, "image_size") and size[0] == size[1]:
            key, fix = "data.init_args.image_size", f"set data.image_size: {size[0]} (or {prepare})"
        elif hasattr(datamodule, "timm_model"):
            key, fix = "data.init_args.timm_model", f"set {prepare}"
        else:
            key, fix = "model.init_args.model_name", "choose a model that takes any input size"
        raise ConfigError(
            f"{name} takes {size[0]}×{size[1]} images only, but the data prepares "
            f"{given[0]}×{given[1]}: {fix}",
            where=key,
        )

    def check_normalisation(
        self, data_config: dict[str, Any] | None, takes_timm_model: bool = True
    ) -> None:
        """Warn when pretrained weights meet images normalised otherwise than the model was
        pretrained on (an image folder's ImageNet statistics for a model pretrained with
        mean = std = 0.5): the data's ``timm_model`` option prepares them as the model's, where
        the DataModule has one (``takes_timm_model``)."""
        trained = getattr(self.model, "pretrained_cfg", None) or {}
        if not data_config or "mean" not in trained or "std" not in trained:
            return
        pairs = [(trained[k], data_config.get(k)) for k in ("mean", "std")]
        if all(b is not None and torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3)
               for a, b in pairs):  # fmt: skip
            return
        remedy = (
            f"set data.timm_model: {self.hparams.model_name} to prepare them as it was pretrained"
            if takes_timm_model
            else "normalise the data with those statistics"
        )
        rank_zero_warn(
            f"{self.hparams.model_name} was pretrained on images normalised with mean "
            f"{tuple(trained['mean'])} and std {tuple(trained['std'])}, the data normalises "
            f"with {data_config.get('mean')} and {data_config.get('std')}: {remedy}"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lsframe"]["data_config"] = self.data_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.data_config = checkpoint.get("lsframe", {}).get("data_config", self.data_config)

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.model(images), labels, label_smoothing=self.label_smoothing)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self.model(images)
        self.metrics[stage].update(logits, labels)
        self.log(
            f"{stage}/loss", F.cross_entropy(logits, labels), batch_size=len(labels), sync_dist=True
        )
        self.log_dict(
            {f"{stage}/{k}": m for k, m in self.metrics[stage].items()}, prog_bar=stage == "val"
        )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probabilities = self.model(images).float().softmax(dim=-1)
        return {"labels": probabilities.argmax(dim=-1), "probabilities": probabilities}
