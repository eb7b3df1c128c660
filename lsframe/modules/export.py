"""Export a trained model as a Hugging Face directory (``lsframe export``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn


def export_pretrained(model: nn.Module, output_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``, if it has ``save_pretrained``) with
    ``save_pretrained`` into ``output_dir``; LoRA adapters are merged into a copy first, so the
    directory loads with the plain ``AutoModelFor...from_pretrained``.

    Raises:
        TypeError: ``model`` is not a Hugging Face model (no ``save_pretrained``).
    """
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(output_dir)
    return output_dir
