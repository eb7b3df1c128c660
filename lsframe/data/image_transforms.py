"""The data configs of image models: normalisation at the images' own size, or timm's data
config of a model name (input size, interpolation, mean, std, crop) and its transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lsframe.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fixed_size_config(
    input_size: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[str, Any]:
    """The data config of images used at their own size (no resize, no crop)."""
    return {"input_size": input_size, "mean": mean, "std": std, "crop_pct": 1.0}


def timm_data_config(model_name: str) -> dict[str, Any]:
    """timm's data config of ``model_name`` (``input_size``, ``interpolation``, ``mean``,
    ``std``, ``crop_pct``, ``crop_mode``): what ``timm.data.resolve_model_data_config`` gives the
    model built from that name, read from its pretrained config without building it. A name with
    a tag (``vit_tiny_patch16_224.augreg_in21k``) picks that tag's weights' config.

    Raises:
        ConfigError: timm does not know ``model_name`` (names ``data.timm_model``).
    """
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    if not timm.is_model(model_name):
        raise ConfigError(
            f"timm has no model {model_name!r} (timm.list_models() lists them)",
            argument="data.timm_model",
        )
    try:
        pretrained_cfg = get_pretrained_cfg(model_name)
    except RuntimeError as error:  # timm: "Invalid pretrained tag (...)"
        raise ConfigError(str(error), argument="data.timm_model") from error
    return resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})


def timm_transforms(model_name: str) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms of timm's data config of ``model_name``
    (:func:`timm_data_config`, ``timm.data.create_transform``): random-resized crop, flip and
    colour jitter at the model's input size for training; resize and ``crop_pct`` centre crop for
    evaluation; both with the model's interpolation and normalisation."""
    from timm.data import create_transform

    config = timm_data_config(model_name)
    return create_transform(**config, is_training=True), create_transform(**config)
