"""``lsframe export CKPT OUTPUT_DIR [--lora merge|adapter]``, and :func:`load_module`: the module
of a checkpoint written by ``lsframe fit`` (or a ``sequential`` stage), as the class that wrote
it."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lsframe.checkpoints import read_lightning_checkpoint
from lsframe.cli_usage import RaisingArgumentParser
from lsframe.errors import ConfigError, DataError
from lsframe.hub import quiet_weight_report
from lsframe.modules import ClosureModule


def load_module(ckpt_path: str) -> ClosureModule:
    """The module of a checkpoint written by ``lsframe fit``, as the class that wrote it; read
    with ``weights_only=True`` (:func:`lsframe.checkpoints.read_lightning_checkpoint`). A
    ``stage_<i>.ckpt`` of ``lsframe sequential`` gives the module after that stage, with its
    task's head (:func:`lsframe.sequence_state.load_stage_module`).

    Raises:
        MissingFileError: there is no such file.
        DataError: it is not such a checkpoint, or its module class is not an lsframe
            ClosureModule; the message names the file.
    """
    import importlib

    from lsframe.checkpoints import LIGHTNING_CHECKPOINT, read_lightning_checkpoint
    from lsframe.sequence_state import is_stage_checkpoint, load_stage_module

    if is_stage_checkpoint(ckpt_path):  # lsframe sequential's, beside the run's config
        return load_stage_module(ckpt_path)
    hparams = read_lightning_checkpoint(ckpt_path).get("hyper_parameters") or {}
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if class_path is None:
        raise DataError(
            f"checkpoint does not name its module class (hyper_parameters._class_path); "
            f"expected {LIGHTNING_CHECKPOINT}",
            where=str(ckpt_path),
        )
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise DataError(
            f"checkpoint names module class {class_path}, which does not import", str(ckpt_path)
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, ClosureModule)):
        raise DataError(f"{class_path} is not an lsframe ClosureModule", where=str(ckpt_path))
    with quiet_weight_report():  # the checkpoint restores the head transformers calls new
        return cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)


def check_export_dir(output_dir: Path) -> None:
    """``lsframe export`` writes into a new or empty directory: into a file it would write
    nothing (transformers only logs), and into a used directory it would replace some files
    and leave others (an earlier export's adapter beside a merged model changes what
    ``from_pretrained`` loads)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError("is a file; give a new or empty directory", where=str(output_dir))
    if output_dir.is_dir():
        found = sorted(p.name for p in output_dir.iterdir())
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise ConfigError(
                f"directory is not empty ({shown}): export writes into a new or empty "
                "directory; remove it or choose another",
                where=str(output_dir),
            )


def export(argv: list[str]) -> None:
    """``lsframe export CKPT OUTPUT_DIR [--lora merge|adapter]``: the fine-tuned model for use
    without lsframe (:func:`lsframe.modules.export.export_module`): a Hugging Face directory
    (``config.json`` with the task's ``id2label``, safetensors weights, tokenizer), a LoRA
    adapter alone, or a timm model (safetensors and timm's ``config.json``)."""
    from lsframe.modules.export import (
        ADAPTER_WITHOUT_BASE,
        LORA_MODES,
        export_module,
        is_lora,
        lora_base,
        reload_hint,
    )
    from lsframe.sequence_state import is_stage_checkpoint

    parser = RaisingArgumentParser(
        prog="lsframe export",
        description="Write the model of an lsframe checkpoint: a Hugging Face model "
        "(save_pretrained: config with id2label, safetensors weights, tokenizer) or a timm "
        "model (model.safetensors and config.json).",
    )
    parser.add_argument("ckpt_path", help="a checkpoint written by `lsframe fit`")
    parser.add_argument("output_dir", help="directory to write the model into")
    parser.add_argument(
        "--lora",
        choices=LORA_MODES,
        default="merge",
        help="for a model trained with model.lora: 'merge' (default) writes a plain Hugging "
        "Face model with the adapters merged in; 'adapter' writes the adapter alone (with the "
        "task head) for PeftModel.from_pretrained",
    )
    args = parser.parse_args(argv)
    check_export_dir(Path(args.output_dir))

    def no_adapters(what: str) -> ConfigError:
        return ConfigError(
            f"the checkpoint's {what} has no LoRA adapters (trained without model.lora); "
            "leave out --lora adapter to export the whole model",
            where="--lora",
        )

    if args.lora == "adapter" and not is_stage_checkpoint(args.ckpt_path):
        # the saved arguments answer before the model loads
        hparams = read_lightning_checkpoint(args.ckpt_path).get("hyper_parameters") or {}
        if isinstance(hparams, dict) and "lora" in hparams and not hparams["lora"]:
            raise no_adapters(f"module ({str(hparams.get('_class_path')).rpartition('.')[2]})")
    module = load_module(args.ckpt_path)
    model = getattr(module, "model", None)
    if not isinstance(model, nn.Module):
        raise DataError(f"{type(module).__name__} has no model to export", args.ckpt_path)
    if args.lora == "adapter" and not is_lora(model):
        raise no_adapters(f"model ({type(model).__name__})")
    if args.lora == "adapter" and lora_base(model) is None:
        raise ConfigError(ADAPTER_WITHOUT_BASE, where="--lora")
    output_dir = export_module(module, args.output_dir, lora=args.lora)
    kind = "LoRA adapter" if args.lora == "adapter" else "model"
    print(f"exported the {kind} of {type(module).__name__} to {output_dir}")
    print(f"  load it with: {reload_hint(model, output_dir, args.lora)}")
