"""``lsframe export CKPT OUTPUT_DIR [--lora merge|adapter]``, and :func:`load_module`: the module
of a checkpoint written by ``lsframe fit`` (or a ``sequential`` stage), as the class that wrote
it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from lsframe.checkpoint_io import directory_mode
from lsframe.checkpoints import model_source, read_lightning_checkpoint, weights_do_not_fit
from lsframe.cli_usage import RaisingArgumentParser, _chain
from lsframe.errors import ConfigError, DataError, MissingFileError
from lsframe.hub import looks_local, quiet_weight_report
from lsframe.modules import ClosureModule, ImageClassificationModule


def load_module(ckpt_path: str) -> ClosureModule:
    """The module of a checkpoint written by ``lsframe fit``, as the class that wrote it; read
    with ``weights_only=True`` (:func:`lsframe.checkpoints.read_lightning_checkpoint`). A
    ``stage_<i>.ckpt`` of ``lsframe sequential`` gives the module after that stage, with its
    task's head (:func:`lsframe.sequence_state.load_stage_module`).

    The module is built from the checkpoint's arguments, then every weight loads from the
    checkpoint: a timm model is built without its pretrained weights (``hparams.pretrained``
    keeps the checkpoint's value), a Hugging Face model from its ``model_name_or_path``, which
    must still load (its config; export writes its tokenizer).

    Raises:
        MissingFileError: there is no such file, or the Hugging Face base model does not load.
        DataError: it is not such a checkpoint, its module class is not an lsframe
            ClosureModule, or its weights do not fit the module built from its arguments (the
            base model changed since); the message names the file.
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
    # every weight comes from the checkpoint: a timm model is built without the pretrained
    # weights it would fetch only to overwrite them (its flag is put back for export_module)
    rebuild = {"pretrained": False} if issubclass(cls, ImageClassificationModule) else {}
    try:
        with quiet_weight_report():  # the checkpoint restores the head transformers calls new
            module = cls.load_from_checkpoint(
                ckpt_path, map_location="cpu", weights_only=True, **rebuild
            )
    except RuntimeError as error:
        if not str(error).startswith("Error(s) in loading state_dict"):
            raise
        raise weights_do_not_fit(error, ckpt_path, model_source(hparams)) from error
    except Exception as error:
        missing = next((e for e in _chain(error) if isinstance(e, MissingFileError)), None)
        base = hparams.get("model_name_or_path")
        if missing is None or not isinstance(base, str):
            raise
        raise base_unavailable(base, missing, ckpt_path) from error
    if rebuild:
        module.hparams["pretrained"] = module.pretrained = bool(hparams.get("pretrained"))
    return module


def base_unavailable(base: str, error: MissingFileError, ckpt_path: str) -> MissingFileError:
    """Why a Hugging Face checkpoint's module cannot be rebuilt: the base model it names
    (``model_name_or_path``) does not load now. Its weights are not needed (the checkpoint holds
    them all), but its architecture and config are, and the tokenizer an export writes."""
    cause = error.__cause__
    if cause is None:  # lsframe's own words (a package: model's package is not installed)
        reason = error.message
    elif looks_local(base) and not Path(base).expanduser().exists():
        reason = "no such directory"
    else:
        reason = type(cause).__name__
    return MissingFileError(
        f"the checkpoint's module is rebuilt from model_name_or_path {base!r}, which does not "
        f"load now ({reason}): export needs that base model's config and tokenizer (every "
        "weight comes from the checkpoint); put it back there, or make the hub name reachable "
        "or cached, and rerun",
        where=str(ckpt_path),
    )


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


#: The name of an export's temporary directory beside ``<name>``: ``.<name>.export-`` and
#: ``tempfile``'s 8 random characters.
_STAGING = ".{name}.export-"


def _is_staging(entry: Path, name: str) -> bool:
    prefix = re.escape(_STAGING.format(name=name))
    return re.fullmatch(prefix + r"[a-z0-9_]{8}", entry.name) is not None and entry.is_dir()


@contextlib.contextmanager
def staged_export(output_dir: Path) -> Iterator[Path]:
    """A hidden temporary directory beside ``output_dir`` (``.<name>.export-XXXXXXXX``, same
    parent) for an export to write into, renamed onto ``output_dir`` (absent, or an empty
    directory, which it replaces) when the block ends: an export appears whole or not at all.
    On any error, Ctrl-C included, the temporary directory is removed, with the parent
    directories made for it. Temporary directories of ``output_dir`` that a killed export left
    are removed first. A full disk is said as an export's problem (no fit's resume advice).

    Raises:
        DataError: no space left on the device, at ``output_dir``.
        ConfigError: ``output_dir`` was filled meanwhile (:func:`check_export_dir`).
    """
    # a symlink to an empty directory: the directory it points to is replaced
    target = Path(os.path.realpath(output_dir))
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    for entry in target.parent.iterdir():  # a killed export's (a kill runs no cleanup)
        if _is_staging(entry, target.name):
            shutil.rmtree(entry, ignore_errors=True)
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=_STAGING.format(name=target.name), dir=target.parent)
        )
    except PermissionError:
        if not target.is_dir():
            raise
        # an empty directory of this user's in a parent it cannot write: written in place,
        # as before exports were staged (not atomic there)
        yield target
        return
    # the mode a plain mkdir gives (mkdtemp's is 0700), or that of the directory replaced
    mode = target.stat().st_mode if target.is_dir() else directory_mode()
    os.chmod(staging, stat.S_IMODE(mode))
    try:
        yield staging
        check_export_dir(target)
        os.replace(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # deepest first; one that holds something else stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _chain(error)):
            raise DataError(
                "no space left on the device: nothing was exported (the partial export was "
                "removed); free some and rerun the export",
                where=str(output_dir),
            ) from error
        raise


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

    saved = {} if is_stage_checkpoint(args.ckpt_path) else read_lightning_checkpoint(args.ckpt_path)
    if args.lora == "adapter" and saved:
        # the saved arguments answer before the model loads
        hparams = saved.get("hyper_parameters") or {}
        if isinstance(hparams, dict) and "lora" in hparams and not hparams["lora"]:
            raise no_adapters(f"module ({str(hparams.get('_class_path')).rpartition('.')[2]})")
    data = saved.get("datamodule_hyper_parameters") or {}
    byte_tokens = isinstance(data, dict) and data.get("tokenizer") == "bytes"
    module = load_module(args.ckpt_path)
    model = getattr(module, "model", None)
    if not isinstance(model, nn.Module):
        raise DataError(f"{type(module).__name__} has no model to export", args.ckpt_path)
    if args.lora == "adapter" and not is_lora(model):
        raise no_adapters(f"model ({type(model).__name__})")
    if args.lora == "adapter" and lora_base(model) is None:
        raise ConfigError(ADAPTER_WITHOUT_BASE, where="--lora")
    output_dir = Path(args.output_dir)
    with staged_export(output_dir) as staging:
        export_module(module, staging, lora=args.lora)
    kind = "LoRA adapter" if args.lora == "adapter" else "model"
    print(f"exported the {kind} of {type(module).__name__} to {output_dir}")
    reference = getattr(module, "model_name_or_path", None)
    hint = reload_hint(model, output_dir, args.lora, byte_tokens, reference)
    print(f"  load it with: {hint}")
