"""Reading back what lsframe wrote: checkpoints and state files, never executing them.

Rule: every file lsframe reads back (``lsframe fit`` checkpoints for ``--ckpt_path`` and
``export``, the sequential runner's ``sequence_state.pt`` and stage checkpoints) is loaded with
``torch.load(..., weights_only=True)``: tensors and plain containers only, no pickled objects, so
reading a file cannot run code from it. A file that is absent raises
:class:`~lsframe.errors.MissingFileError`; one that does not load that way, or lacks what it
should hold, raises :class:`~lsframe.errors.DataError`; both name the file and what was expected.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from lsframe.errors import DataError, MissingFileError

LIGHTNING_CHECKPOINT = "a checkpoint written by lsframe fit"


def _reason(path: Path, error: BaseException) -> str:
    """A short reason why ``torch.load`` failed (its messages run to paragraphs)."""
    import zipfile

    text = str(error)
    if path.stat().st_size == 0:
        return "the file is empty"
    with path.open("rb") as handle:
        zip_magic = handle.read(4) == b"PK\x03\x04"
    if not zip_magic and not zipfile.is_zipfile(path):
        return "not a PyTorch file (torch.save writes a zip archive)"
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"it holds a pickled {refused.group(1)}, which weights_only=True does not load"
    if text.startswith("Weights only load failed"):
        return "it holds pickled objects, which weights_only=True does not load"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(error).__name__
    return f"a truncated or corrupt PyTorch archive ({first})"


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name the same class (``pkg.Class`` and ``pkg.module.Class``)."""
    if a == b:
        return True
    import importlib

    try:
        found = []
        for path in (a, b):
            module, _, name = path.rpartition(".")
            found.append(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError):
        return False
    return found[0] is found[1]


def read_torch_file(path: str | Path, what: str, expected: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or an error naming the file.

    Args:
        path: The file.
        what: What the file is, for the message (``checkpoint``, ``sequence state``).
        expected: What a good file is (``a checkpoint written by lsframe fit``).
        mmap: Map the tensors' bytes instead of reading them (for a caller that reads the
            file's settings, not its tensors: a checkpoint of gigabytes loads in milliseconds).
            A file torch cannot map (the legacy format) is read.

    Raises:
        MissingFileError: there is no such file.
        DataError: the file does not load with ``weights_only=True`` (corrupt, truncated, not a
            PyTorch file, or holding pickled objects).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found; expected {expected}", where=str(path))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception:
                    pass  # not a zip archive (the legacy format, or not torch's): read it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(
            f"cannot read {what}: {_reason(path, error)}; expected {expected}", where=str(path)
        ) from error


def read_lightning_checkpoint(path: str | Path, module_class_path: str | None = None) -> dict:
    """A checkpoint written by ``lsframe fit`` (a dict with a ``state_dict``), read with
    ``weights_only=True``, its tensors mapped from the file, not read: for its settings and
    records (a fit loads the file itself). Read them before the file is written again.

    Args:
        path: The checkpoint file.
        module_class_path: The module class the caller will load it into (``class_path`` of the
            config's model); a checkpoint that names another class is refused.

    Raises:
        MissingFileError: there is no such file.
        DataError: it does not load with ``weights_only=True``, is not a Lightning checkpoint, or
            was written by another module class.
    """
    checkpoint = read_torch_file(path, "checkpoint", LIGHTNING_CHECKPOINT, mmap=True)
    for key in ("state_dict", "pytorch-lightning_version"):
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            from lsframe.sequence_state import is_stage_checkpoint

            stage = (
                "; a stage checkpoint of lsframe sequential becomes a model with "
                f"`lsframe export {path} <output_dir>`"
                if is_stage_checkpoint(path)
                else ""
            )
            raise DataError(
                f"not a Lightning checkpoint (no {key}); expected {LIGHTNING_CHECKPOINT}{stage}",
                where=str(path),
            )
    hparams = checkpoint.get("hyper_parameters") or {}
    saved = hparams.get("_class_path") if isinstance(hparams, dict) else None
    if (
        module_class_path is not None
        and saved is not None
        and not _same_class(saved, module_class_path)
    ):
        raise DataError(
            f"checkpoint of {saved}, but model.class_path is {module_class_path}",
            where=str(path),
        )
    return checkpoint


def model_source(init_args: Any) -> str:
    """What a module's model is built from, as the module's arguments say: its
    ``model_name_or_path`` (Hugging Face) or ``model_name`` (timm), or its ``config``."""
    init_args = init_args if isinstance(init_args, dict) else {}
    for key in ("model_name_or_path", "model_name"):
        if isinstance(init_args.get(key), str):
            return f"{key} {init_args[key]!r}"
    return "model.config" if init_args.get("config") else "the module's arguments"


def weights_do_not_fit(error: BaseException, checkpoint: str | Path, built_from: str) -> DataError:
    """The one line for a checkpoint whose weights do not load into the module rebuilt for it
    (``load_state_dict``'s error: the base model it is built from changed since the checkpoint
    was written): the first mismatch and how many more, at the checkpoint."""
    from lsframe.errors import one_line

    problems = [one_line(line) for line in str(error).splitlines()[1:] if line.strip()]
    first = problems[0] if problems else one_line(error)
    first = first if len(first) <= 300 else first[:300] + " ..."
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return DataError(
        f"the weights do not fit the model built from {built_from} (changed since the "
        f"checkpoint was written?): {first}{more}",
        where=str(checkpoint),
    )
