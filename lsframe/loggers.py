"""Loggers for the commands that run several fits (``sequential``, ``search``).

``trainer.logger`` is given as for ``fit`` (``class_path`` + ``init_args``, a list of them, or
``true``/``false``), but a sequence runs one fit per stage, so it is a recipe: each stage, and
the sequence's summary, builds its own logger from it (:class:`LoggerSpec`). Any Lightning logger
works:

* TensorBoard and CSV (and their subclasses) write to ``<output_dir>/<label>``: the runner sets
  their ``save_dir`` (``output_dir``), ``name`` (empty) and ``version`` (the label, e.g.
  ``stage_0_sst2`` or ``summary``); their other arguments are kept;
* any other logger (MLflow, W&B, Comet, Neptune, your own) is built with its arguments as given;
  when it has a ``run_name`` (MLflow) or ``name`` argument left empty, the run is named
  ``<output_dir>/<label>``.

The default (``trainer.logger`` unset or ``true``) is TensorBoard with ``default_hp_metric``
off.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lsframe.errors import ConfigError
from lsframe.set_aside import set_aside

#: Loggers that write to ``<save_dir>/<name>/<version>``.
FILE_LOGGERS: tuple[type[Logger], ...] = (TensorBoardLogger, CSVLogger)


@dataclass(frozen=True)
class LoggerSpec:
    """A logger class and its arguments, built afresh for each fit by :meth:`build`."""

    cls: type[Logger]
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self, output_dir: str | Path, label: str) -> Logger:
        """A new logger for the fit (or summary) ``label`` of a run kept in ``output_dir``."""
        kwargs = dict(self.init_args)
        if issubclass(self.cls, FILE_LOGGERS):
            kwargs.update(save_dir=str(output_dir), name="", version=label)
        else:
            parameters = inspect.signature(self.cls).parameters
            for key in ("run_name", "name"):  # MLflow's run_name; W&B, Comet, Neptune: name
                if key in parameters:
                    if kwargs.get(key) is None:
                        kwargs[key] = f"{output_dir}/{label}"
                    break
        return self.cls(**kwargs)


def logger_specs(value: Any, key: str = "trainer.logger") -> list[LoggerSpec]:
    """The recipes of a ``trainer.logger`` value: ``None``/``True`` the TensorBoard default,
    ``False`` none; else one per item of ``value`` (a list or a single item), each a
    ``{"class_path", "init_args"}`` mapping (or a jsonargparse Namespace) or a Logger class.

    Raises:
        ConfigError: an item is something else (a Logger *instance* cannot serve several fits),
            or its class does not import or is not a Lightning Logger; naming ``key``.
    """
    if value is None or value is True:
        return [LoggerSpec(TensorBoardLogger, {"default_hp_metric": False})]
    if value is False:
        return []
    if isinstance(value, (list, tuple)):
        return [_spec(item, f"{key}[{i}]") for i, item in enumerate(value)]
    return [_spec(value, key)]


def _spec(item: Any, key: str) -> LoggerSpec:
    if isinstance(item, type) and issubclass(item, Logger):
        return LoggerSpec(item)
    if isinstance(item, Namespace):
        item = item.as_dict()
    if isinstance(item, Mapping) and isinstance(item.get("class_path"), str):
        init_args = item.get("init_args") or {}
        if isinstance(init_args, Namespace):
            init_args = init_args.as_dict()
        return LoggerSpec(_logger_class(item["class_path"], key), dict(init_args))
    raise ConfigError(
        "give the logger as class_path (+ init_args), or its class: each fit of the run builds "
        f"its own, so a {type(item).__name__} cannot serve",
        where=key,
    )


def _logger_class(class_path: str, key: str) -> type[Logger]:
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "lightning.pytorch.loggers")
        cls = getattr(module, name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"logger class {class_path} does not import", where=key) from error
    if not (isinstance(cls, type) and issubclass(cls, Logger)):
        raise ConfigError(f"{class_path} is not a Lightning Logger", where=key)
    return cls


def readable_progress_bar(trainer: Any) -> None:
    """Show small metrics (a step size of 1.7e-4) in Lightning's Rich progress bar: its default
    format ``.3f`` prints them as 0.000, so a bar left at that default gets ``.3g`` (TQDM's bar
    already uses three significant digits). A format the user chose is kept."""
    from lightning.pytorch.callbacks import RichProgressBar

    bar = trainer.progress_bar_callback
    if isinstance(bar, RichProgressBar) and bar.theme.metrics_format == ".3f":
        # a copy: the default theme object may be shared by every RichProgressBar
        bar.theme = replace(bar.theme, metrics_format=".3g")


def keep_csv_metrics(run_dir: Path, prog: str) -> None:
    """Move a continued run's ``metrics.csv`` to ``metrics.<k>.csv`` (the first free ``k``):
    Lightning's CSVLogger deletes the file it finds in the folder it logs to, and with it the
    metrics logged before the resume (``prog`` says so: ``lsframe fit``)."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return
    kept = set_aside(metrics, lambda k: f"metrics.{k}.csv")
    print(f"{prog}: the metrics logged before the resume are kept in {kept.name} ({run_dir})")


def keep_stopped_logs(run_dir: Path, prog: str) -> None:
    """Move the logs of a run that stopped without a checkpoint to resume from (killed, or
    failed) aside to ``<run_dir>.stopped-<k>`` (the first free ``k``), before the run starts
    again from its beginning in ``run_dir``: TensorBoard would read both attempts' event files
    as one run, whose curves go back to step 0 part-way (``prog`` says where they went)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    kept = set_aside(run_dir, lambda k: f"{run_dir.name}.stopped-{k}")
    print(f"{prog}: the logs of the attempt that stopped are kept in {kept}")
