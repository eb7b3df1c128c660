"""LoRA adapters from PyPI ``peft`` (optional extra ``lsframe[peft]``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lsframe.errors import ConfigError
from lsframe.parts_stacks import has_params


def task_head_names(model: nn.Module) -> list[str]:
    """The task head of a Hugging Face model: its top-level children that hold parameters,
    other than the backbone (``getattr(model, model.base_model_prefix)``). ``classifier`` for
    BERT, ``pre_classifier`` and ``classifier`` for DistilBERT, ``pooler`` and ``classifier``
    for DeBERTa-v2, ``classification_head`` for BART and T5, ``score`` for GPT-2 and Llama.
    Empty for a model without a ``base_model_prefix`` backbone (a plain ``nn.Module``)."""
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if isinstance(prefix, str) and prefix else None
    if not isinstance(backbone, nn.Module) or backbone is model:
        return []
    return [
        name
        for name, child in model.named_children()
        if child is not backbone and has_params(child)
    ]


def apply_lora(model: nn.Module, options: dict[str, Any], task_type: str) -> nn.Module:
    """Wrap ``model`` with LoRA; only the adapters (and the task head) stay trainable.

    For ``SEQ_CLS`` without ``modules_to_save`` the task head trains whole
    (:func:`task_head_names`): peft's own default keeps only modules named ``classifier`` or
    ``score`` trainable, which left BART's and T5's ``classification_head`` and DistilBERT's
    ``pre_classifier`` at their random initialisation. A ``SEQ_CLS`` wrap where nothing but the
    adapters trains is refused.

    Args:
        model: A Hugging Face model.
        options: ``peft.LoraConfig`` arguments (``r``, ``lora_alpha``, ``target_modules``, ...).
        task_type: ``SEQ_CLS`` (keeps the classifier head trainable) or ``CAUSAL_LM``.

    Raises:
        ConfigError: at ``lora``, when no parameter outside the adapters trains under
            ``SEQ_CLS`` (a head named neither ``classifier`` nor ``score`` in a model peft
            cannot see into, with no ``modules_to_save``).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("model.lora needs PyPI peft: pip install 'lsframe[peft]'") from error
    if task_type == "SEQ_CLS" and options.get("modules_to_save") is None:
        head = task_head_names(model)
        if head:
            options = {**options, "modules_to_save": head}
    try:
        config = LoraConfig(task_type=task_type, **options)
    except TypeError as error:
        raise ValueError(f"model.lora: {error}") from error
    wrapped = get_peft_model(model, config)
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n]
    if task_type == "SEQ_CLS" and not trained:
        raise ConfigError(
            f"under LoRA only the adapters of {type(model).__name__} would train: its "
            "classifier head would stay at its initialisation; name the head's modules in "
            "lora.modules_to_save",
            argument="lora",
        )
    return wrapped
