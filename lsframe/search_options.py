"""The options of ``lsframe search`` (:class:`SearchOptions`, the ``search`` section), the
contiguous groups of parts that share a sampled learning rate, and the check that
``search.base_lr`` is the learning rate the module's optimizer is configured with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lsframe.config_checks import on_probe
from lsframe.config_nodes import import_class, node_get, plain
from lsframe.errors import ConfigError
from lsframe.optim import info_for
from lsframe.validation import check_int_at_least, check_interval, check_positive


@dataclass
class SearchOptions:
    """Options of the learning-rate distribution search.

    Args:
        n_trials: Finished trials the study should hold (P3: 50).
        lr_low: Lower bound of each part's learning rate (log-uniform). Default: 1e-7.
        lr_high: Upper bound. Default: 1e-3.
        base_lr: The learning rate in the module's optimizer config; multipliers = lr / base_lr.
        groups: Tie the parts into this many contiguous groups by depth (one learning rate per
            group; None: one per part). Part ``i`` of ``P`` goes to group ``floor(i·K/P)``.
        sampler: ``tpe`` (multivariate TPE) or ``gp`` (Gaussian process).
        pruner: ``hyperband`` or ``none``.
        storage: Optuna storage: a journal file path (default) or an RDB URL (``sqlite:///...``).
        study_name: Name of the study in the storage; an output_dir holds one study's results.
        output_dir: Where trials, the best distribution and the plot go.
        seed: Sampler seed; trial ``n`` draws with a seed drawn from ``(seed, n)``, so that
            processes sharing the study do not repeat one another's draws, and studies of
            different seeds share none.
        num_parts: Parts the model is cut into (:func:`lsframe.parts.split_into_parts`).
    """

    n_trials: int = 50
    lr_low: float = 1e-7
    lr_high: float = 1e-3
    base_lr: float = 2e-5
    groups: int | None = None
    sampler: Literal["tpe", "gp"] = "tpe"
    pruner: Literal["hyperband", "none"] = "hyperband"
    storage: str | None = None
    study_name: str = "lr_distribution"
    output_dir: str = "runs/search"
    seed: int = 0
    num_parts: int = 10

    def __post_init__(self) -> None:
        """Check the options when they are made (the command line makes them right after
        parsing): counts are positive integers, ``0 < lr_low < lr_high``, ``base_lr > 0``,
        ``groups`` (when set) at least 1 and at most ``num_parts``, which is at least 3."""
        check_int_at_least(1, **{"search.n_trials": self.n_trials})
        check_int_at_least(3, **{"search.num_parts": self.num_parts})
        check_positive(**{"search.base_lr": self.base_lr})
        if self.groups is not None:
            check_interval(1, self.num_parts, False, False, **{"search.groups": self.groups})
        check_positive(**{"search.lr_low": self.lr_low, "search.lr_high": self.lr_high})
        if not self.lr_low < self.lr_high:
            raise ConfigError(
                f"search: need 0 < lr_low < lr_high, got lr_low={self.lr_low:g}, "
                f"lr_high={self.lr_high:g}",
                where="search.lr_low",
            )


def part_groups_by_depth(
    parts: list[str], groups: int | None, num_parts: int | None = None
) -> list[list[str]]:
    """Parts in order, cut into ``groups`` contiguous chunks (each part alone when None).
    ``num_parts``: the ``K`` the parts were cut with, named when ``groups`` exceeds them (a
    shallow model gives fewer parts than ``K``)."""
    if groups is None:
        return [[p] for p in parts]
    if num_parts is not None and isinstance(groups, int) and groups > len(parts) >= 1:
        raise ConfigError(
            f"search.groups must be in [1, {len(parts)}], got {groups}: the model splits into "
            f"{len(parts)} parts at num_parts {num_parts} ({', '.join(parts)})",
            where="search.groups",
        )
    check_interval(1, len(parts), False, False, **{"search.groups": groups})
    chunks: list[list[str]] = [[] for _ in range(groups)]
    for i, part in enumerate(parts):
        chunks[i * groups // len(parts)].append(part)
    return chunks


def base_lr_problem(optimizer: Any, options: SearchOptions) -> str | None:
    """Why ``search.base_lr`` does not fit ``optimizer`` (None: it does). The sampled learning
    rates are multipliers of ``base_lr``, so it must be the optimizer's lr; a line search's
    multipliers scale its searched step, so any ``base_lr`` is only their unit there."""
    lr = None if info_for(optimizer).searches else optimizer.param_groups[0].get("lr")
    if lr is None or math.isclose(lr, options.base_lr, rel_tol=1e-9):
        return None
    return (
        f"search.base_lr is {options.base_lr:g} but the model's optimizer lr is {lr:g}: the "
        "sampled learning rates are multipliers of base_lr, so set them equal"
    )


def check_base_lr(model: Any, options: SearchOptions) -> None:
    """:func:`base_lr_problem` on the configured optimizer, built on a probe parameter (the
    config check has built it once already), before any weights load."""
    node = node_get(node_get(model, "init_args"), "optimizer")
    class_path = node_get(node, "class_path")
    cls = import_class(class_path) if isinstance(class_path, str) else None
    if cls is None:  # the module's default optimizer: checked on the probe module
        return
    problem = base_lr_problem(on_probe(cls, plain(node_get(node, "init_args")) or {}), options)
    if problem:
        raise ConfigError(problem, where="search.base_lr")
