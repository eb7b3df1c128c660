"""The comparisons every benchmark table makes: the best point of a learning-rate grid, and a
row's per-seed differences to it (paired on the seeds both have logged)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def best_point(
    rows: Sequence[dict], metric: str, points: Sequence[str], lower_is_better: bool = False
) -> str | None:
    """The point of ``points`` (optimizer specs) whose logged runs have the best mean ``metric``
    (the highest, or the lowest with ``lower_is_better``); None before any of them is logged."""
    means = {}
    for name in points:
        values = [r[metric] for r in rows if r["optimizer"] == name and metric in r]
        if values:
            means[name] = statistics.fmean(values)
    if not means:
        return None
    return (min if lower_is_better else max)(means, key=means.__getitem__)


def paired_differences(rows: Sequence[dict], metric: str, name: str, baseline: str) -> list[float]:
    """``metric`` of each run of ``name`` minus that of ``baseline``'s run of the same seed, over
    the seeds ``baseline`` has logged (in ``name``'s order)."""
    by_seed = {r["seed"]: r[metric] for r in rows if r["optimizer"] == baseline}
    return [
        r[metric] - by_seed[r["seed"]]
        for r in rows
        if r["optimizer"] == name and r["seed"] in by_seed
    ]
