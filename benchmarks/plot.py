"""PNG plots of the benchmark results (needs matplotlib: pip install 'lsframe[bench]').

python -m benchmarks.plot benchmarks/results/step_cost_cpu.json benchmarks/results/quality_sst2_cpu.json

A run log (``<out>.runs.jsonl`` whose rows have ``per_step`` diagnostics) gives ``<out>.png``:
each line search's accepted step size per step against AdamW's lr schedule (the grid's best lr),
its sufficient-decrease ratios and its trials per step, and a step-size tracker's alignment
(first seed of each optimizer).

python -m benchmarks.plot benchmarks/results/step_sizes_sst2_cpu.runs.jsonl
"""

from __future__ import annotations

import json
import statistics
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


def best_adamw(rows: list[dict]) -> str | None:
    """The AdamW grid point (``adamw@<lr>``) with the best mean dev metric, if the log has one."""
    grid = {r["optimizer"] for r in rows if r["optimizer"].startswith("adamw@")}
    metric = next((k for k in ("acc", "dev_acc", "f1") if any(k in r for r in rows)), None)

    def score(spec: str) -> float:
        values = [r[metric] for r in rows if r["optimizer"] == spec and metric in r]
        return statistics.fmean(values) if values else float("-inf")

    return max(sorted(grid), key=score) if grid and metric else None


def plot_step_sizes(rows: list[dict], out: Path) -> None:
    """Step sizes per step (log scale; failed searches crossed) with AdamW at the grid's best lr
    as the reference schedule; for the line searches, the sufficient-decrease ratios on the
    searched steps and the trials per step; for the step-size trackers, the step alignment
    (rolling mean of 10)."""
    rows = [r for r in rows if r.get("per_step")]
    adamw = best_adamw(rows)
    firsts = {}
    for row in rows:  # the first seed logged of each optimizer
        if "trials" in row["per_step"] or row["optimizer"] == adamw:
            firsts.setdefault(row["optimizer"], row)
    searching = [n for n, r in firsts.items() if n != adamw and any(r["per_step"]["trials"])]
    tracking = [n for n, r in firsts.items() if any(a is not None for a in alignments(r))]
    panels = 1 + 2 * bool(searching) + bool(tracking)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False)
    sizes, *others = axes[0]
    ratios, trials = (others.pop(0), others.pop(0)) if searching else (None, None)
    aligned = others.pop(0) if tracking else None
    for name, row in firsts.items():
        per_step = row["per_step"]
        for group, values in per_step["step_size"].items():
            steps = range(1, len(values) + 1)
            label = name if len(per_step["step_size"]) == 1 else f"{name} [{group}]"
            if name == adamw:
                sizes.plot(steps, values, "k--", lw=1.5, label=f"{name} (warmup + cosine)")
                continue
            (line,) = sizes.plot(steps, values, lw=1, label=label)
            failed = [s for s, f in zip(steps, per_step["failed"]) if f]
            sizes.plot(failed, [values[s - 1] for s in failed], "x", color=line.get_color())
        if name in searching:
            searched = [(s, r) for s, r in enumerate(per_step["ratio"], 1) if r is not None]
            if searched:
                ratios.plot(*zip(*searched), ".", label=name)
            trials.plot(range(1, len(per_step["trials"]) + 1), per_step["trials"], lw=1, label=name)
        if name in tracking:
            values = [0.0 if a is None else a for a in alignments(row)]
            aligned.plot(range(1, len(values) + 1), rolling(values, 10), lw=1, label=name)
    sizes.set(yscale="log", xlabel="step", ylabel="step size / lr", title="accepted step size")
    if searching:
        ratios.axhline(1.0, color="grey", ls=":", lw=1, label="1: the first-order prediction")
        ratios.set_yscale("symlog", linthresh=0.1)
        ratios.set(
            xlabel="step",
            ylabel="(f(x) − f(trial)) / (η · slope)",
            title="sufficient-decrease ratio (searched steps)",
        )
        trials.set(xlabel="step", ylabel="forward-only trials", title="trials per step")
    if tracking:
        aligned.axhline(0.0, color="grey", ls=":", lw=1)
        aligned.set(
            xlabel="step", ylabel="cos(g_t, d_t−1)", title="step alignment (rolling mean of 10)"
        )
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.suptitle(f"{out.stem}: first seed of each optimizer; × a failed search", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def alignments(row: dict) -> list[float | None]:
    """A step-size tracker's per-step alignment (empty for the other optimizers)."""
    return row["per_step"].get("alignment") or []


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Draw the figures of benchmark results: a step-cost or quality JSON "
        "(<name>.png beside it) or a quality run log, <name>.runs.jsonl (its step sizes)."
    )
    parser.add_argument("results", nargs="+", help="*.json results or *.runs.jsonl run logs")
    for name in parser.parse_args().results:
        path = Path(name)
        if not path.is_file():
            parser.error(f"no such file {name}")
        if name.endswith(".runs.jsonl"):
            out = path.with_name(path.name.removesuffix(".runs.jsonl") + ".png")
            from benchmarks.common import read_run_log  # lsframe and torch only here

            rows = read_run_log(path)
            plot_step_sizes(rows, out)
            print(f"wrote {out}")
            continue
        result = json.loads(path.read_text())
        kind = plot_step_cost if "step_sizes" in result["rows"][0] else plot_quality
        kind(result, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
