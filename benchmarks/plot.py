"""PNG plots of the benchmark results (needs matplotlib: pip install 'lsframe[bench]').

python -m benchmarks.plot benchmarks/results/step_cost_cpu.json benchmarks/results/quality_sst2_cpu.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rolling(values: list[float], width: int = 25) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def plot_step_cost(result: dict, out: Path) -> None:
    fig, (sizes, seconds) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in result["rows"]:
        steps = range(1, len(row["step_sizes"]) + 1)
        sizes.plot(steps, row["step_sizes"], label=row["optimizer"], lw=1)
        seconds.plot(steps, rolling(row["seconds"]), label=row["optimizer"], lw=1)
    sizes.set(yscale="log", xlabel="step", ylabel="step size / lr", title="step size")
    seconds.set(xlabel="step", ylabel="seconds per step (rolling mean of 25)", title="step cost")
    sizes.legend(fontsize=8)
    fig.suptitle(result["meta"][:120], fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_quality(result: dict, out: Path) -> None:
    rows = result["rows"]
    metric = "acc"
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    means = [statistics.fmean(r[metric] for r in rows if r["optimizer"] == n) for n in names]
    spreads = [
        statistics.stdev(v) if len(v := [r[metric] for r in rows if r["optimizer"] == n]) > 1 else 0
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(range(len(names)), means, yerr=spreads, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set(ylabel=f"dev {metric}", ylim=(min(means) - 0.05, max(means) + 0.03))
    fig.suptitle(result["meta"][:120], fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        result = json.loads(path.read_text())
        kind = plot_step_cost if "step_sizes" in result["rows"][0] else plot_quality
        kind(result, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
