"""LoRA adapters from PyPI ``peft`` (optional extra ``lsframe[peft]``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def apply_lora(model: nn.Module, options: dict[str, Any], task_type: str) -> nn.Module:
    """Wrap ``model`` with LoRA; only the adapters (and the task head) stay trainable.

    Args:
        model: A Hugging Face model.
        options: ``peft.LoraConfig`` arguments (``r``, ``lora_alpha``, ``target_modules``, ...).
        task_type: ``SEQ_CLS`` (keeps the classifier head trainable) or ``CAUSAL_LM``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("model.lora needs PyPI peft: pip install 'lsframe[peft]'") from error
    try:
        config = LoraConfig(task_type=task_type, **options)
    except TypeError as error:
        raise ValueError(f"model.lora: {error}") from error
    return get_peft_model(model, config)
