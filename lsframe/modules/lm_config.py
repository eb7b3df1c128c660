"""A causal LM built from ``model.config`` (random initialisation): the loading options that
apply to it, checked before anything is built (by :func:`lsframe.config_checks.check_module`
and again by the module's constructor)."""

from __future__ import annotations

from typing import Any

from lsframe.errors import ConfigError


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
