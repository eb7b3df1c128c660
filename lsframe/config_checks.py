"""Checks of a parsed configuration, before any weights or data load.

jsonargparse checks types while it parses; the values themselves are checked by the
constructors, which LightningCLI calls only when it builds the objects: the model first (its
pretrained weights load), the optimizer only when the fit starts. :func:`check_config` runs the
cheap part of that work right after parsing, so a bad value ends the command within seconds and
names its full key:

* a null given to an init argument whose annotation does not admit one (``max_change: null``
  for a ``float``, ``betas: null`` for a ``tuple[float, float]``) is refused at its key
  (:func:`lsframe.config_nulls.check_nulls`): jsonargparse lets it through in a class's
  ``init_args``;
* every optimizer (``class_path`` of a ``torch.optim.Optimizer``) is built on a one-element
  probe parameter, so its own argument checks run (``c must be in (0, 1), got -1.0`` at
  ``model.init_args.optimizer.init_args.c``), and one that needs ``param_grouping: parts``
  (registry record) refuses another grouping;
* every callback of lsframe's (``trainer.callbacks[i]``) is built, so its own argument checks
  run (``reserve_p must be in (0, 1], got 2.0`` at ``trainer.callbacks[1].init_args.reserve_p``);
* every DataModule is built (cheap: arguments and paths) and its ``check_files(stage)``, where it
  has one, reads and checks the raw files (GLUE TSVs, idx files) before the model loads;
* every module's ``model_name_or_path`` must resolve (:func:`lsframe.hub.check_pretrained`) and
  its ``config`` dict must name a known ``model_type`` and keys of its config class
  (:func:`lsframe.modules.lm_config.check_model_config`), its
  ``lr_distribution`` must load (values, file syntax) with ``param_grouping: parts``, and its
  ``num_labels`` / ``num_classes`` / ``in_chans`` / ``label_names`` must agree with each
  DataModule's, and its loading options (``dtype``, ...) must be of the right kind;
* the Trainer's settings, the ``checkpoint`` section and ``ckpt_path``
  (:mod:`lsframe.trainer_checks`): precision, the options that belong to the module, the
  accelerator's name, the checkpoint callback's values, the checkpoint file.

Errors are :class:`~lsframe.errors.ConfigError` / :class:`~lsframe.errors.DataError` with the
key or file (:meth:`~lsframe.errors.LsframeError.at`).
"""

from __future__ import annotations

import math
from typing import Any

from lsframe.config_nodes import class_nodes, import_class, located, node_get, plain
from lsframe.config_nulls import check_nulls
from lsframe.errors import ConfigError, LsframeError
from lsframe.trainer_checks import (
    check_accelerator,
    check_barebones,
    check_checkpoint_section,
    check_ckpt_path,
    check_lightning_callback,
    check_precision_setting,
    check_trainer_intervals,
    check_trainer_step_options,
)

#: Attributes a DataModule and a module must agree on (the modules' ``check_data`` keys).
SHARED_ATTRIBUTES = ("num_labels", "num_classes", "in_chans", "label_names")
#: Those a sequence's task head takes from its stage's DataModule (``heads: separate``).
TASK_LABELS = ("num_labels", "label_names")


def on_probe(cls: type, init_args: dict[str, Any], dtype: Any = None) -> Any:
    """Optimizer ``cls`` built with ``init_args`` on one probe parameter of ``dtype`` (default
    float32), in a param group that names its part (what PLASLS needs): its argument checks
    run, nothing else is touched."""
    import torch

    zero = torch.zeros(1, dtype=dtype, requires_grad=True)
    probe = [{"params": [zero], "name": "probe", "part": "probe"}]
    return cls(probe, **init_args)


def parameter_dtype(trainer: Any, module_init_args: dict[str, Any]) -> Any:
    """The dtype the module's parameters will have when its optimizer is built, where the
    config says: ``trainer.precision`` ``16-true``/``bf16-true`` converts them, else the
    module's ``dtype`` loading option (``float16``, ``bfloat16``). None: float32 (or the
    checkpoint's own, ``dtype: auto``, unknown before it loads)."""
    import torch

    precision = str(node_get(trainer, "precision"))
    converted = {"16-true": torch.float16, "bf16-true": torch.bfloat16}
    if precision in converted:
        return converted[precision]
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(module_init_args.get("dtype"))


def check_optimizer(
    key: str, cls: type, init_args: dict[str, Any], grouping: Any, dtype: Any = None
) -> None:
    """Build optimizer ``cls`` with ``init_args`` on a probe parameter of the module's
    ``dtype`` (its argument checks run now, e.g. an ``eps`` that rounds to 0 in float16);
    refuse a ``param_grouping`` other than ``parts`` for one whose registry record needs it
    (PLASLS)."""
    from lsframe.optim import info_for

    for name, value in init_args.items():  # torch takes lr=inf: every parameter would be NaN
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{name} must be finite, got {value!r}", where=f"{key}.init_args.{name}"
            )
    try:
        on_probe(cls, init_args, dtype)
    except (LsframeError, ValueError, TypeError) as error:
        raise located(error, f"{key}.init_args", init_args) from error
    needs = info_for(cls).param_grouping
    owner = key.rsplit(".init_args.", 1)[0] if ".init_args." in key else None
    if needs == "parts" and owner is not None and grouping not in (None, "parts"):
        raise ConfigError(
            f"{cls.__name__} needs one param group per part: set param_grouping: parts, "
            f"got {grouping!r}",
            where=f"{owner}.init_args.param_grouping",
        )


def check_scheduler(key: str, cls: type, init_args: dict[str, Any]) -> None:
    """Build scheduler ``cls`` with ``init_args`` on a probe optimizer, as the module will call
    it (the optimizer alone; a ``total_steps`` left None is filled in later)."""
    import torch

    from lsframe.modules.optimizer_setup import refuse_metric_scheduler

    refuse_metric_scheduler(cls, key)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        cls(probe, **init_args)
    except (LsframeError, ValueError, TypeError) as error:
        raise located(error, f"{key}.init_args", init_args) from error


def check_callback(
    key: str, cls: type, init_args: dict[str, Any], step_limits: list[int] | None = None
) -> None:
    """Build one of lsframe's callbacks with ``init_args`` (their constructors check and store
    their arguments, nothing more), so a bad value is refused at ``<key>.init_args.<name>``
    before the model loads, not when the Trainer is built. A callback whose settings depend on
    the run's length (``check_run_steps``, e.g. DPS's stages) is checked against each of
    ``step_limits``, the ``max_steps`` the config gives its fits."""
    try:
        callback = cls(**init_args)
        check_run_steps = getattr(callback, "check_run_steps", None)
        if callable(check_run_steps):
            for steps in step_limits or []:
                check_run_steps(steps)
    except (LsframeError, ValueError, TypeError) as error:
        raise located(error, f"{key}.init_args", init_args) from error


def step_limits(config: Any) -> list[int]:
    """The positive ``max_steps`` of each fit a config runs: the trainer section's, and for
    ``lsframe sequential`` and ``search`` each stage's own (``stages``, ``pairs``), or the
    trainer's where a stage leaves it unset. A fit with no limit there gives none."""
    default = node_get(node_get(config, "trainer"), "max_steps")
    stages = list(node_get(config, "stages") or [])
    stages += [stage for pair in node_get(config, "pairs") or [] for stage in pair or []]
    limits = [default] if not stages else []
    for stage in stages:
        own = node_get(node_get(stage, "init_args") or stage, "max_steps")
        limits.append(default if own is None else own)
    return sorted({n for n in limits if isinstance(n, int) and not isinstance(n, bool) and n > 0})


def build_datamodule(key: str, cls: type, init_args: dict[str, Any], stage: str) -> Any:
    """The DataModule ``cls(**init_args)`` (arguments and paths checked), after its
    ``check_files(stage)`` where it has one."""
    try:
        data = cls(**init_args)
    except (LsframeError, ValueError, TypeError, FileNotFoundError) as error:
        raise located(error, f"{key}.init_args", init_args) from error
    check_files = getattr(data, "check_files", None)
    if callable(check_files):
        try:
            check_files(stage)
        except LsframeError as error:
            raise error.at(f"{key}.init_args") from error
    return data


def check_distribution_setting(key: str, distribution: Any, grouping: Any) -> None:
    """What of a module's ``lr_distribution`` can be checked without the model: it needs
    ``param_grouping: parts``, and its values (a preset, a mapping or a file: syntax and
    numbers) must load (:func:`lsframe.lr_distribution.load_distribution`). Part names need the
    model and are checked when it is built."""
    import warnings

    from lsframe.lr_distribution import load_distribution

    if grouping not in (None, "parts"):
        raise ConfigError(
            f"lr_distribution needs param_grouping: parts (one param group per part), got "
            f"{grouping!r}",
            where=f"{key}.init_args.param_grouping",
        )
    try:
        with warnings.catch_warnings():  # the module warns when it is built
            warnings.simplefilter("ignore")
            load_distribution(distribution)
    except LsframeError as error:
        raise error.at(f"{key}.init_args") from error


def check_module_step_options(key: str, init_args: dict[str, Any]) -> None:
    """The module's ``accumulate_grad_batches`` (an integer >= 1), ``gradient_clip_val``
    (None or > 0) and ``num_parts`` (an integer >= 3), checked at their keys before the model
    loads (the module checks them again when built, as a Python user builds it)."""
    from lsframe.modules.policy import check_step_options
    from lsframe.validation import check_int_at_least

    options = ("accumulate_grad_batches", "gradient_clip_val")
    try:
        check_step_options(**{name: init_args[name] for name in options if name in init_args})
        if "num_parts" in init_args:
            check_int_at_least(3, num_parts=init_args["num_parts"])
    except (LsframeError, ValueError, TypeError) as error:
        raise located(error, f"{key}.init_args", init_args) from error


def check_module(
    key: str,
    init_args: dict[str, Any],
    data: list[tuple[str, Any]],
    names: tuple[str, ...] = SHARED_ATTRIBUTES,
) -> None:
    """A module's model reference resolves, and its shared attributes ``names`` agree with the
    data."""
    from lsframe.hub import check_pretrained, config_position_limit, position_limit

    reference = init_args.get("model_name_or_path")
    if isinstance(reference, str):
        try:
            check_pretrained(reference)
        except LsframeError as error:
            where = f"{key}.init_args.model_name_or_path"
            raise type(error)(error.message, where=where) from error
    if init_args.get("config") is not None:  # a model built from a config (CausalLMModule)
        from lsframe.modules.lm_config import check_model_config

        try:
            check_model_config(init_args["config"])
        except LsframeError as error:
            raise error.at(f"{key}.init_args") from error
    limit = position_limit(reference) if isinstance(reference, str) else None
    if limit is None and isinstance(init_args.get("config"), dict):  # a model built from a config
        limit = config_position_limit(init_args["config"], f"{key}.init_args.config")
    for data_key, datamodule in data if limit is not None else ():
        for name in ("max_length", "block_size"):  # a text or a language-model DataModule
            length = getattr(datamodule, name, None)
            if isinstance(length, int) and length > limit[0]:
                raise ConfigError(
                    f"{name} {length} is longer than the model's {limit[0]} positions ({limit[1]})",
                    where=f"{data_key}.init_args.{name}",
                )
    distribution = init_args.get("lr_distribution")
    if distribution is not None:
        check_distribution_setting(key, distribution, init_args.get("param_grouping"))
    check_loading_setting(key, init_args)
    check_shared_attributes(key, init_args, data, names)


def check_shared_attributes(
    key: str, init_args: dict[str, Any], data: list[tuple[str, Any]], names: tuple[str, ...]
) -> None:
    """The module's attributes ``names`` (``num_labels``, ...) agree with each DataModule's."""
    for data_key, datamodule in data:
        for name in names:
            mine = comparable(init_args.get(name))
            theirs = comparable(getattr(datamodule, name, None))
            if mine is not None and theirs is not None and mine != theirs:
                at = "" if data_key == "data" else f" at {data_key}"
                raise ConfigError(
                    f"{name} is {mine} but the data{at} ({type(datamodule).__name__}) "
                    f"has {theirs}: set it to {theirs}",
                    where=f"{key}.init_args.{name}",
                )


def comparable(value: Any) -> Any:
    """A value as the config spells it (a DataModule's tuple of names is a list)."""
    return list(value) if isinstance(value, tuple) else value


def check_loading_setting(key: str, init_args: dict[str, Any]) -> None:
    """A module's loading options (``dtype``, ``revision``, ``trust_remote_code``,
    ``attn_implementation``: :func:`lsframe.hub.loading_options`) are of the right kind, and
    apply to a model built from ``config``
    (:func:`lsframe.modules.lm_config.from_config_options`)."""
    from lsframe.hub import LOADING_OPTIONS, loading_options
    from lsframe.modules.lm_config import from_config_options

    given = {name: init_args[name] for name in LOADING_OPTIONS if name in init_args}
    if not given:
        return
    try:
        options = loading_options(**given)
        if init_args.get("config") is not None:
            from_config_options(options)
    except LsframeError as error:
        raise error.at(f"{key}.init_args") from error


def check_config(
    config: Any, stage: str = "fit", task_heads: bool = False
) -> list[tuple[str, Any]]:
    """Run the checks of this module on a parsed config (see the module docstring).

    Args:
        config: The parsed jsonargparse Namespace of one command (``fit``'s section for
            LightningCLI; the whole config for ``sequential`` and ``search``).
        stage: What the data will serve (``fit``, ``validate``, ...), for ``check_files``.
        task_heads: A sequence's stages, whose ``num_labels`` / ``label_names`` the caller
            checks (each task may have its own head: :mod:`lsframe.sequence_checks`).

    Returns:
        ``(key, DataModule)`` for every DataModule built on the way.

    Raises:
        ConfigError, DataError: the first problem, at its full key or file.
    """
    from lightning.pytorch import Callback, LightningDataModule, LightningModule
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    check_precision_setting(node_get(config, "trainer"))
    check_trainer_intervals(node_get(config, "trainer"))
    check_barebones(node_get(config, "trainer"))
    modules: list[tuple[str, dict[str, Any]]] = []
    data: list[tuple[str, Any]] = []
    grouping: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    limits = step_limits(config)
    for key, node in class_nodes(config):
        cls = import_class(node_get(node, "class_path"))
        init_args = plain(node_get(node, "init_args")) or {}
        if cls is None:
            continue
        check_nulls(key, cls, init_args)
        if issubclass(cls, LightningModule):
            check_module_step_options(key, init_args)
            modules.append((key, init_args))
            grouping[key] = init_args.get("param_grouping")
            dtypes[key] = parameter_dtype(node_get(config, "trainer"), init_args)
        elif issubclass(cls, Optimizer):
            owner = key.rsplit(".init_args.", 1)[0]
            check_optimizer(key, cls, init_args, grouping.get(owner), dtypes.get(owner))
        elif issubclass(cls, LRScheduler):
            check_scheduler(key, cls, init_args)
        elif issubclass(cls, LightningDataModule):
            data.append((key, build_datamodule(key, cls, init_args, stage)))
        elif issubclass(cls, Callback) and cls.__module__.startswith("lsframe."):
            check_callback(key, cls, init_args, limits)
        elif issubclass(cls, Callback):
            check_lightning_callback(key, cls, init_args)
    check_trainer_step_options(node_get(config, "trainer"), modules[0][0] if modules else "model")
    names = tuple(n for n in SHARED_ATTRIBUTES if not task_heads or n not in TASK_LABELS)
    for key, init_args in modules:
        check_module(key, init_args, data, names)
    return data


def check_parsed(config: Any) -> list[tuple[str, Any]]:
    """The checks of this module on what LightningCLI parsed: the chosen subcommand's section
    (:func:`check_config` with the subcommand as the data's stage) and its ``ckpt_path``.
    Returns the DataModules built on the way, as :func:`check_config` does."""
    subcommand = node_get(config, "subcommand")
    section = node_get(config, subcommand) if subcommand else config
    if section is None:
        return []
    data = check_config(section, stage=subcommand or "fit")
    check_accelerator(node_get(section, "trainer"))
    if subcommand == "fit":
        check_checkpoint_section(section)
    if subcommand == "predict":
        check_predicts(section)
    check_ckpt_path(section, subcommand or "fit")
    return data


def check_predicts(section: Any) -> None:
    """``predict`` needs a module with its own ``predict_step`` or ``forward`` (Lightning's
    default ``predict_step`` calls ``forward`` on the batch, which a ClosureModule does not
    define) and a DataModule with a ``predict_dataloader``: refused at the class before
    anything loads."""
    import lightning.pytorch as pl

    for key, method, base in (
        ("model", "predict_step", pl.LightningModule),
        ("data", "predict_dataloader", pl.LightningDataModule),
    ):
        class_path = node_get(node_get(section, key), "class_path")
        cls = import_class(class_path) if isinstance(class_path, str) else None
        inherited = cls is not None and getattr(cls, method, None) is getattr(base, method)
        if key == "model" and inherited:  # Lightning's predict_step calls forward on the batch
            inherited = cls.forward is pl.LightningModule.forward
        if inherited:
            hint = (
                "; validate or test give its loss and perplexity, and a model written by "
                "lsframe export generates with transformers"
                if key == "model"
                else ""
            )
            raise ConfigError(
                f"{cls.__name__} has no {method}, so predict has nothing to run{hint}",
                where=f"{key}.class_path",
            )
