"""A causal LM built from ``model.config`` (random initialisation): the checks of its config
dict and of the loading options that apply to it, run before anything is built (by
:func:`lsframe.config_checks.check_module` and again by the module's constructor)."""

from __future__ import annotations

import copy
import difflib
import inspect
import warnings
from typing import Any

from lsframe.errors import ConfigError

#: Keys of ``PretrainedConfig`` in transformers 4, in which hub ``config.json`` files were
#: written, and keys such files carry beside a config class's own (``auto_map``): transformers 5
#: stores them unused, and so are they taken here, without a word.
WRITTEN_BY_EARLIER_TRANSFORMERS = frozenset(
    """return_dict output_hidden_states output_attentions torchscript torch_dtype use_bfloat16
    tf_legacy_loss pruned_heads tie_word_embeddings chunk_size_feed_forward is_encoder_decoder
    is_decoder cross_attention_hidden_size add_cross_attention tie_encoder_decoder max_length
    min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature
    top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens architectures
    finetuning_task id2label label2id num_labels tokenizer_class prefix bos_token_id
    pad_token_id eos_token_id sep_token_id decoder_start_token_id task_specific_params
    problem_type gradient_checkpointing transformers_version use_cache auto_map
    quantization_config model_name layer_types""".split()
)


def close_matches(name: str, known: list[str] | set[str], count: int = 3) -> str:
    """``"; did you mean a, b?"`` for the names of ``known`` closest to ``name``, else ``""``."""
    found = difflib.get_close_matches(name, sorted(known), n=count)
    return f"; did you mean {', '.join(found)}?" if found else ""


def known_config_keys(config_class: type) -> set[str]:
    """The keys a config class takes: its and ``PretrainedConfig``'s constructor arguments and
    public attributes (``num_labels``, ``torch_dtype``, ...), and its ``attribute_map``'s
    aliases (GPT-2's ``hidden_size`` for ``n_embd``)."""
    from transformers import PretrainedConfig

    known: set[str] = set(getattr(config_class, "attribute_map", {}) or {})
    for cls in (config_class, PretrainedConfig):
        known |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        known |= {
            name
            for name in dir(cls)
            if not name.startswith("_") and not callable(getattr(cls, name, None))
        }
    known |= set(config_class().to_dict())
    return known


def check_model_config(config: Any) -> Any:
    """The transformers config that ``model.config`` describes, built (cheap: no weights).

    Rule: the dict needs a ``model_type`` transformers knows. Transformers stores a key its
    config class does not take as a plain attribute and builds its default instead
    (``n_layr: 2`` gave GPT-2's 12 ``n_layer``), so each top-level key (nested ``*_config``
    dicts are not checked) that the class does not take (:func:`known_config_keys`) and
    transformers stores is refused where it is close to one it takes (a typo), and otherwise
    warned about as stored but unused: a real hub ``config.json`` carries keys of earlier
    transformers (GPT-2's ``n_ctx``) and loose extras (``auto_map``), which pass without a word
    where :data:`WRITTEN_BY_EARLIER_TRANSFORMERS` lists them or they start with ``_``. A key
    transformers consumes without storing it (a legacy ``rope_theta``) passes. The caller's
    dict is left as it was.

    Raises:
        ConfigError: at ``argument`` ``model.config.<key>``, with the closest known names.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    if not isinstance(config, dict):
        raise ConfigError(
            f"model.config must be a mapping of config keys, got {config!r}",
            argument="model.config",
        )
    given = copy.deepcopy(dict(config))  # transformers fills nested dicts in place
    if "model_type" not in given:
        raise ConfigError(
            "model.config needs a model_type (e.g. gpt2)", argument="model.config.model_type"
        )
    model_type = given.pop("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        hint = close_matches(str(model_type), set(CONFIG_MAPPING_NAMES))
        raise ConfigError(
            f"unknown model_type {model_type!r}{hint}", argument="model.config.model_type"
        )
    built = AutoConfig.for_model(model_type, **given)
    known = known_config_keys(CONFIG_MAPPING[model_type])
    stored = set(vars(built))
    for key in given:
        if key in known or key not in stored or key.startswith("_"):
            continue
        if key in WRITTEN_BY_EARLIER_TRANSFORMERS:
            continue
        hint = close_matches(key, known)
        if hint:
            raise ConfigError(
                f"{type(built).__name__} has no key {key!r}{hint}",
                argument=f"model.config.{key}",
            )
        warnings.warn(
            f"model.config.{key} is stored by {type(built).__name__} but not used by it",
            stacklevel=2,
        )
    return built


def from_config_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``from_config`` arguments for a module's loading options
    (:func:`lsframe.hub.loading_options`) when the model is built from ``model.config``:
    ``dtype`` (float32 unless given) and ``attn_implementation``.

    Raises:
        ConfigError: ``revision`` or ``trust_remote_code``, which name a repository there is
            not, or ``dtype: auto``, the dtype of stored weights there are not.
    """
    import torch

    for name in ("revision", "trust_remote_code"):
        if name in options:
            raise ConfigError(
                f"{name} applies to a pretrained model, but the model is built from "
                "model.config: remove it",
                argument=f"model.{name}",
            )
    if options.get("dtype") == "auto":
        raise ConfigError(
            "dtype 'auto' keeps the dtype of stored weights, but a model built from "
            "model.config has none: give float32, bfloat16 or float16",
            argument="model.dtype",
        )
    built = {"dtype": options.get("dtype", torch.float32)}
    if "attn_implementation" in options:
        built["attn_implementation"] = options["attn_implementation"]
    return built
