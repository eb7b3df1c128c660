"""Lightning's scheduler rules, kept under lsframe's manual optimization.

Lightning steps the schedulers of ``configure_optimizers`` (and the ``SWALR`` that
``StochasticWeightAveraging`` installs) only under automatic optimization. :class:`ClosureModule`
steps them itself, by the rules of each scheduler config, as Lightning would:

* ``interval: "step"`` after an optimizer step, ``"epoch"`` after the epoch's last batch (the
  last one the run takes: ``limit_train_batches`` counts), before that batch's callbacks, so a
  checkpoint written at that batch holds the scheduler already stepped;
* ``frequency: n``: at every n-th batch of an epoch (that takes a step) or every n-th epoch;
* a metric scheduler (``ReduceLROnPlateau``, ``monitor``) gets the monitored value from the
  trainer's metrics: interval "epoch" at the epoch's end, after its validation; interval "step"
  after each optimizer step, with the value of the last validation before it. A monitored key
  that is not logged is refused (``strict``, the default) or skips the update with a warning.
  Lightning drops a scheduler config's ``monitor``, ``strict`` and ``reduce_on_plateau`` under
  manual optimization (and warns that the user must step it); :func:`keep_metric_settings`
  takes them from ``configure_optimizers``'s result first;
* every update goes through :meth:`~lightning.pytorch.LightningModule.lr_scheduler_step`.

A ``"step"`` frequency counts the epoch's batches, as Lightning does (at a batch that takes an
optimizer step: with the module's ``accumulate_grad_batches`` > 1 that is not every n-th step).
Differences from Lightning: a metric scheduler of interval "epoch" is updated in the module's
``on_train_epoch_end``, before the callbacks that monitor a metric (Lightning updates it after
them).

A line search refuses an ``lr`` written from outside (it searches its own step size): a scheduler
that is not a :class:`~lsframe.optim.StepSizeSchedule` on one is refused when the fit starts
(:func:`check_line_search_schedulers`), instead of at the step after its first update.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lsframe.errors import ConfigError
from lsframe.optim import StepSizeSchedule, info_for, innermost_optimizer

__all__ = [
    "check_line_search_schedulers",
    "ends_epoch",
    "keep_metric_settings",
    "step_schedulers",
]

#: The keys of a scheduler config that Lightning drops under manual optimization (with a warning
#: that the user must step the scheduler), which lsframe reads itself.
METRIC_KEYS = ("monitor", "strict", "reduce_on_plateau")


def keep_metric_settings(module: pl.LightningModule) -> None:
    """Make the next call of ``module.configure_optimizers`` hand its schedulers' metric keys
    (:data:`METRIC_KEYS`, and an optimizer dict's ``monitor``) to ``module._metric_settings``
    instead of Lightning, which drops them under manual optimization."""
    module.__dict__.pop("configure_optimizers", None)  # one a setup left uncalled
    configure = module.configure_optimizers
    module._metric_settings = {}

    def configure_optimizers() -> Any:
        module.__dict__.pop("configure_optimizers", None)  # once: the class's own from here on
        return _take_metric_settings(configure(), module._metric_settings, None)

    module.configure_optimizers = configure_optimizers


def _take_metric_settings(conf: Any, found: dict[int, tuple[Any, dict]], monitor: Any) -> Any:
    if isinstance(conf, (list, tuple)):
        return type(conf)(_take_metric_settings(c, found, monitor) for c in conf)
    if isinstance(conf, dict) and "optimizer" in conf:
        conf = dict(conf)
        top = conf.pop("monitor", None)
        if "lr_scheduler" in conf:
            conf["lr_scheduler"] = _take_metric_settings(conf["lr_scheduler"], found, top)
        return conf
    if isinstance(conf, dict) and "scheduler" in conf:
        conf = dict(conf)
        settings = {key: conf.pop(key) for key in METRIC_KEYS if key in conf}
        if monitor is not None:
            settings.setdefault("monitor", monitor)
        if settings:
            found[id(conf["scheduler"])] = (conf["scheduler"], settings)
        return conf
    if monitor is not None and not isinstance(conf, torch.optim.Optimizer):
        found[id(conf)] = (conf, {"monitor": monitor})  # a scheduler beside a top-level monitor
    return conf


def _metric_settings(module: pl.LightningModule, scheduler: Any) -> dict[str, Any]:
    kept = getattr(module, "_metric_settings", {}).get(id(scheduler))
    return kept[1] if kept is not None and kept[0] is scheduler else {}


def ends_epoch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether ``batch_idx`` is the last batch this epoch takes (Lightning's own test)."""
    return bool(trainer.is_last_batch) or batch_idx + 1 >= trainer.num_training_batches


def step_schedulers(
    module: pl.LightningModule, interval: Literal["step", "epoch"], on_metric: bool
) -> None:
    """Update the schedulers of ``interval`` that are due (``frequency``): the metric ones
    (``ReduceLROnPlateau``) when ``on_metric``, the others otherwise."""
    trainer = module.trainer
    # Lightning's counts: the epoch's batches (at a batch that took a step), or the epochs
    batch = trainer.fit_loop.epoch_loop.batch_idx
    count = batch + 1 if interval == "step" else trainer.current_epoch + 1
    for config in trainer.lr_scheduler_configs:
        settings = _metric_settings(module, config.scheduler)
        on_plateau = settings.get("reduce_on_plateau") or isinstance(
            config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
        )
        if config.interval != interval or bool(on_plateau) != on_metric:
            continue
        if count % config.frequency:
            continue
        metric = None
        if on_plateau:
            monitor = settings.get("monitor")
            if monitor is None:
                raise ConfigError(
                    f"{type(config.scheduler).__name__} steps on a metric: name it with "
                    "'monitor' in its scheduler config",
                    where=f"{type(module).__name__}.configure_optimizers",
                )
            metric = trainer.callback_metrics.get(monitor)
            if metric is None:
                logged = ", ".join(sorted(trainer.callback_metrics)) or "none yet"
                problem = (
                    f"{type(config.scheduler).__name__} monitors {monitor!r}, which is "
                    f"not logged (logged: {logged})"
                )
                if settings.get("strict", True):
                    raise ConfigError(
                        f"{problem}: monitor a logged metric, or set 'strict': False in its "
                        "scheduler config to skip such updates",
                        where=f"{type(module).__name__}.configure_optimizers",
                    )
                rank_zero_warn(f"{problem}: its update is skipped ('strict': False)")
                continue
        module.lr_scheduler_step(config.scheduler, metric)


def check_line_search_schedulers(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """Refuse, before the first step, what would write ``lr`` into a line search: a scheduler
    of ``configure_optimizers`` that does not schedule ``lr_multiplier``, and
    ``StochasticWeightAveraging`` (its ``SWALR`` sets ``lr`` from its first epoch on); warn
    that ``LearningRateMonitor`` shows the previous step's step size there."""
    for optimizer in trainer.optimizers:
        inner = innermost_optimizer(optimizer)
        if not info_for(inner).searches:
            continue
        name = type(inner).__name__
        for callback in trainer.callbacks:
            lineage = {c.__name__ for c in type(callback).__mro__}
            if "LearningRateMonitor" in lineage:
                rank_zero_warn(
                    f"LearningRateMonitor reads 'lr' before each step, and {name} searches its "
                    "step size inside the step: it shows the previous step's (at the first "
                    "step, the initial guess); the step taken is logged as step_size/<group>"
                )
            if "StochasticWeightAveraging" in lineage:
                raise ConfigError(
                    f"StochasticWeightAveraging anneals and sets 'lr' (its SWALR scheduler), "
                    f"and {name} searches its own step size and refuses an lr written from "
                    "outside: use SWA with an optimizer that takes an lr (AdamW), or drop it",
                    where="trainer.callbacks",
                )
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, StepSizeSchedule):
                continue
            if innermost_optimizer(getattr(scheduler, "optimizer", None)) is not inner:
                continue
            if type(scheduler).__module__ == "lightning.pytorch.tuner.lr_finder":
                finder = any(type(c).__name__ == "LearningRateFinder" for c in trainer.callbacks)
                raise ConfigError(
                    f"the learning-rate finder sweeps 'lr', which {name} does not take: it "
                    "searches its own step size (its lr is only the first trial); drop the "
                    "finder for it",
                    where="trainer.callbacks" if finder else "Tuner.lr_find",
                )
            raise ConfigError(
                f"{type(scheduler).__name__} would write 'lr', and {name} searches its own step "
                "size and refuses an lr written from outside: wrap it as "
                "lsframe.optim.StepSizeSchedule(optimizer, lambda o: <scheduler on o>), which "
                "schedules lr_multiplier",
                where=f"{type(module).__name__}.configure_optimizers",
            )
