"""Export a trained model for use without lsframe (``lsframe export``).

Three layouts, chosen by the model:

* a Hugging Face model (``save_pretrained``): ``config.json`` (with ``id2label`` /
  ``label2id`` where the module knew its class names), ``model.safetensors`` and the tokenizer;
  loads with ``AutoModelFor....from_pretrained(dir)``;
* a LoRA model (PyPI ``peft``): ``lora="merge"`` (default) merges the adapters into a copy and
  writes the plain Hugging Face model above; ``lora="adapter"`` writes the adapter alone
  (``adapter_config.json``, ``adapter_model.safetensors``, with the task head) and the
  tokenizer, for ``PeftModel.from_pretrained(base, dir)``;
* a timm model: ``model.safetensors`` and timm's ``config.json`` (architecture, ``model_args``
  such as ``num_classes`` / ``in_chans``, ``label_names``), for
  ``timm.create_model("local-dir:<dir>", pretrained=True)``.

A model loaded from a ``.gguf`` file (dequantised by transformers) is written as the plain
float model it is (:func:`without_gguf`); the adapter alone of a LoRA model on such a base is
written as any adapter, and its load line loads the base with ``gguf_file=``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from torch import nn

from lsframe.errors import ConfigError

#: The values of ``lora``: merge the adapters into the model, or write the adapter alone.
LORA_MODES = ("merge", "adapter")


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model with adapters (what ``model.lora`` builds)."""
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


#: Why ``lora="adapter"`` cannot serve a LoRA model whose base was built from a config.
ADAPTER_WITHOUT_BASE = (
    "the base model was built from model.config, whose initial weights are saved nowhere, so "
    "the adapter alone could not be loaded; export the merged model (lora 'merge', the default)"
)


def lora_base(model: nn.Module) -> str | None:
    """The pretrained model a LoRA model's adapters sit on (None: a base built from a config)."""
    config = next(iter(model.peft_config.values()))
    return config.base_model_name_or_path or None


def is_timm(model: nn.Module) -> bool:
    """Whether ``model`` is a timm model (it carries timm's ``pretrained_cfg``)."""
    return isinstance(getattr(model, "pretrained_cfg", None), dict) and not hasattr(
        model, "save_pretrained"
    )


def export_pretrained(
    model: nn.Module,
    output_dir: str | Path,
    tokenizer: Any = None,
    *,
    lora: Literal["merge", "adapter"] = "merge",
    label_names: list[str] | tuple[str, ...] | None = None,
    data_config: dict[str, Any] | None = None,
    from_scratch: bool = False,
) -> Path:
    """Write ``model`` into ``output_dir`` in the layout of the module docstring, and
    ``tokenizer`` beside it where it has ``save_pretrained``.

    Args:
        model: A Hugging Face model, a peft model around one, or a timm model.
        output_dir: The directory to write (created; files of the same names are replaced).
        tokenizer: Saved into the same directory (not for timm models).
        lora: For a LoRA model: ``merge`` writes a plain Hugging Face model, ``adapter`` the
            adapter alone.
        label_names: Class names in class-index order. A Hugging Face model keeps those of its
            config (set when the module loaded it); a timm model gets them as ``label_names``.
        data_config: For a timm model, the preprocessing it was trained with (timm's keys:
            ``input_size``, ``mean``, ``std``, ...), written into its ``pretrained_cfg`` in
            place of that of the weights it started from (ImageNet's, for a model trained
            from scratch on MNIST).
        from_scratch: A timm model trained from random initialisation: its export leaves out
            the published weights' provenance (:data:`WEIGHTS_PROVENANCE`: ``tag``, licence,
            papers, hub id), which its name's ``pretrained_cfg`` carries.

    Raises:
        ConfigError: ``lora`` is not one of :data:`LORA_MODES`, or is ``adapter`` for a model
            without adapters.
        TypeError: ``model`` is neither a Hugging Face nor a timm model.
    """
    if lora not in LORA_MODES:
        raise ConfigError(f"lora must be 'merge' or 'adapter', got {lora!r}", argument="lora")
    output_dir = Path(output_dir)
    if lora == "adapter" and not is_lora(model):
        raise ConfigError(
            f"lora='adapter' needs LoRA adapters, but the {type(model).__name__} has none (the "
            "module was trained without model.lora); export the whole model with lora='merge'",
            argument="lora",
        )
    if lora == "adapter" and lora_base(model) is None:
        raise ConfigError(ADAPTER_WITHOUT_BASE, argument="lora")
    if is_timm(model):
        return _export_timm(model, output_dir, label_names, data_config, from_scratch)
    if is_lora(model) and lora == "merge":
        model = copy.deepcopy(model).merge_and_unload()
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"{type(model).__name__} is neither a Hugging Face model (no save_pretrained) nor a "
            "timm model"
        )
    # an adapter alone holds no base weights: peft writes it whatever the base was loaded from
    (model if is_lora(model) else without_gguf(model)).save_pretrained(output_dir)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(output_dir)
    return output_dir


def without_gguf(model: nn.Module) -> nn.Module:
    """``model``, or for one loaded from a ``.gguf`` file a plain copy of it. transformers
    dequantises a GGUF checkpoint into ordinary tensors but keeps its quantizer, whose
    ``save_pretrained`` refuses to write; the copy is the same architecture built from the
    config without ``quantization_config``, holding the same weights (dtype kept)."""
    method = str(getattr(model, "quantization_method", "")).lower()
    if getattr(model, "hf_quantizer", None) is None or "gguf" not in method:
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config).to(next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


#: ``pretrained_cfg`` keys that describe where a timm name's published weights come from: not
#: true of a model trained from random initialisation, so left out of its export.
WEIGHTS_PROVENANCE = (
    "tag",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "file",
    "license",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
)


def _export_timm(
    model: nn.Module,
    output_dir: Path,
    label_names: list[str] | tuple[str, ...] | None,
    data_config: dict[str, Any] | None = None,
    from_scratch: bool = False,
) -> Path:
    from timm.models import save_for_hf

    config = {"label_names": [str(n) for n in label_names]} if label_names else None
    original = model.pretrained_cfg
    if from_scratch:
        model.pretrained_cfg = {k: v for k, v in original.items() if k not in WEIGHTS_PROVENANCE}
    try:
        save_for_hf(
            model,
            str(output_dir),
            model_config=config,
            safe_serialization=True,
            data_config=copy.deepcopy(data_config),
        )
    finally:
        model.pretrained_cfg = original
    return output_dir


def export_module(
    module: nn.Module, output_dir: str | Path, lora: Literal["merge", "adapter"] = "merge"
) -> Path:
    """Export the model of an lsframe module (``module.model``) with :func:`export_pretrained`,
    with the module's tokenizer (if it has one) and class names (``label_names``, if any)."""
    model = module.model
    tokenizer = None if is_timm(model) else getattr(module, "tokenizer", None)
    label_names = getattr(module, "label_names", None)
    data_config = getattr(module, "data_config", None) if is_timm(model) else None
    hparams = getattr(module, "hparams", {})
    from_scratch = is_timm(model) and "pretrained" in hparams and not hparams["pretrained"]
    return export_pretrained(
        model,
        output_dir,
        tokenizer,
        lora=lora,
        label_names=label_names,
        data_config=data_config,
        from_scratch=from_scratch,
    )


def gguf_file(reference: str | None) -> Path | None:
    """The ``.gguf`` file a model reference (``package:`` or a path) names, else None."""
    if reference is None:
        return None
    from lsframe.hub import resolve_pretrained

    path = Path(resolve_pretrained(reference)).expanduser()
    return path.absolute() if path.suffix == ".gguf" else None


#: What the load line of a model trained on byte tokens adds: no tokenizer is written for it.
BYTE_TOKENS_NOTE = (
    "  # inputs are raw UTF-8 bytes as token ids 0-255 (data.tokenizer: bytes); no tokenizer is "
    "written: list(text.encode('utf-8'))"
)


def reload_hint(
    model: nn.Module,
    output_dir: str | Path,
    lora: str = "merge",
    byte_tokens: bool = False,
    base_reference: str | None = None,
) -> str:
    """How to load what :func:`export_pretrained` wrote for ``model``, as one line of Python;
    for a model trained on byte tokens (``byte_tokens``) with a comment saying so. An adapter's
    base is loaded from the module's model reference (``base_reference``) where that is a
    ``.gguf`` file: ``from_pretrained(<its directory>, gguf_file=<its name>)``, since the
    adapter's ``base_model_name_or_path`` names only the directory."""
    if byte_tokens:
        return reload_hint(model, output_dir, lora, base_reference=base_reference) + (
            BYTE_TOKENS_NOTE
        )
    where = str(output_dir)
    if is_timm(model):
        return f'timm.create_model("local-dir:{where}", pretrained=True)'
    if is_lora(model) and lora == "adapter":
        base = model.get_base_model()
        labels = getattr(base.config, "num_labels", None)
        head = ""
        if labels is not None and "Classification" in type(base).__name__:
            # the adapter holds no config: the class names come back through the base's
            names = dict(getattr(base.config, "id2label", None) or {})
            head = f", num_labels={labels}"
            if any(name != f"LABEL_{i}" for i, name in names.items()):
                label2id = {name: i for i, name in names.items()}
                head += f", id2label={names!r}, label2id={label2id!r}"
        source = f'"{lora_base(model)}"'
        gguf = gguf_file(base_reference)
        if gguf is not None:
            source = f'"{gguf.parent}", gguf_file="{gguf.name}"'
        return (
            f"PeftModel.from_pretrained({type(base).__name__}.from_pretrained("
            f'{source}{head}), "{where}")'
        )
    if is_lora(model):
        model = model.get_base_model()
    return f'{type(model).__name__}.from_pretrained("{where}")'
