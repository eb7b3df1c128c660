"""lsframe's command line: LightningCLI with subclass mode, forced checkpointing and TensorBoard.

``python -m lsframe fit --config configs/quickstart.yaml`` (also ``validate``, ``test``,
``predict``), and ``python -m lsframe export CKPT OUTPUT_DIR`` to write a Hugging Face model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lsframe.data  # noqa: F401 - registers the DataModules for subclass mode
from lsframe.modules import ClosureModule

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lsframe", "default_hp_metric": False},
    },
    "enable_progress_bar": True,
}


class LSFrameCLI(LightningCLI):
    """LightningCLI for lsframe.

    * ``model`` and ``data`` in subclass mode: any :class:`ClosureModule` and any
      ``LightningDataModule``, chosen by ``class_path``;
    * ``auto_configure_optimizers=False``: the optimizer is an init argument of the module
      (an ``OptimizerCallable``), so line-search optimizers with extra arguments fit;
    * a forced ``checkpoint`` section (a :class:`ModelCheckpoint`) that keeps the best
      checkpoint by ``val/acc`` and the last one, configurable from YAML;
    * TensorBoard logs under ``runs/<name>/version_<n>`` by default.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ClosureModule)
        kwargs.setdefault("datamodule_class", pl.LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_last": True,
            }
        )

    def before_fit(self) -> None:
        # the default monitor is val/acc; a task scored otherwise (GLUE CoLA: mcc, STS-B:
        # pearson) names its main metric first in the DataModule's metric_names
        checkpoint = self.trainer.checkpoint_callback
        names = getattr(self.datamodule, "metric_names", None)
        if (
            checkpoint is not None
            and checkpoint.monitor == "val/acc"
            and names
            and names[0] != "acc"
        ):
            checkpoint.monitor = f"val/{names[0]}"
            print(
                f"lsframe: checkpoint.monitor set to {checkpoint.monitor}, the task's main metric"
            )

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        lines = ["", "lsframe: fit finished"]
        lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            score = checkpoint.best_model_score
            lines.append(
                f"  best checkpoint ({checkpoint.monitor} = {float(score):.4f}): "
                f"{checkpoint.best_model_path}"
            )
        if trainer.logger is not None and trainer.logger.log_dir:
            lines.append(f"  TensorBoard logs: tensorboard --logdir {trainer.logger.log_dir}")
        print("\n".join(lines), flush=True)


def load_module(ckpt_path: str) -> ClosureModule:
    """The module of a checkpoint written by ``lsframe fit``, as the class that wrote it."""
    import importlib

    import torch

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"no checkpoint file {ckpt_path!r}")
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True).get(
        "hyper_parameters", {}
    )
    class_path = hparams.get("_class_path")
    if class_path is None:
        raise ValueError(f"checkpoint {ckpt_path!r} does not name its module class (_class_path)")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ClosureModule)):
        raise ValueError(f"checkpoint {ckpt_path!r}: {class_path} is not an lsframe ClosureModule")
    return cls.load_from_checkpoint(ckpt_path, map_location="cpu")


def export(argv: list[str]) -> None:
    """``lsframe export CKPT OUTPUT_DIR``: the fine-tuned model as a Hugging Face directory."""
    parser = argparse.ArgumentParser(
        prog="lsframe export",
        description="Write the model of an lsframe checkpoint with save_pretrained "
        "(model weights, config and tokenizer).",
    )
    parser.add_argument("ckpt_path", help="a checkpoint written by `lsframe fit`")
    parser.add_argument("output_dir", help="directory to write the Hugging Face model into")
    args = parser.parse_args(argv)
    module = load_module(args.ckpt_path)
    exporter = getattr(module, "export_pretrained", None)
    if exporter is None:
        sys.exit(f"lsframe export: {type(module).__name__} has no export_pretrained()")
    print(f"exported {type(module).__name__} to {exporter(args.output_dir)}")
