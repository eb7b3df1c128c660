"""PNG plots of the benchmark results (needs matplotlib: pip install 'lsframe[bench]').

python -m benchmarks.plot benchmarks/results/step_cost_cpu.json benchmarks/results/quality_sst2_cpu.json

A run log (``<out>.runs.jsonl`` whose rows have ``per_step`` diagnostics) gives ``<out>.png``:
each line search's accepted step size per step against AdamW's lr schedule (the grid's best lr),
its sufficient-decrease ratios and its trials per step, and a step-size tracker's alignment
(first seed of each optimizer).

python -m benchmarks.plot benchmarks/results/step_sizes_sst2_cpu.runs.jsonl

``--default-steps PNG`` draws the learning-rate-free default's steps against AdamW's instead,
one panel per run log:

python -m benchmarks.plot --default-steps benchmarks/results/default_steps_m_cpu.png \\
    benchmarks/results/quality_m_{sst2,mrpc,rte}_cpu.runs.jsonl
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
    """The AdamW grid point with the best mean dev metric, as the quality tables pick it
    (``benchmarks.quality.best_grid_point``: a pilot such as ``adamw@3e-4`` or a marked
    diagnostic row such as ``adamw@1e-4^late_half`` is none), if the log has one."""
    from benchmarks.quality import best_grid_point  # torch and lsframe only here

    metric = next((k for k in ("acc", "dev_acc", "f1") if any(k in r for r in rows)), None)
    return best_grid_point(rows, metric) if metric else None


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


def plot_default_steps(logs: dict[str, list[dict]], spec: str, out: Path) -> None:
    """One panel per run log (a task): the step each of ``spec``'s seeds takes, its η times the
    schedule's multiplier (η alone is what its run log holds; the multiplier is the best AdamW
    row's step size over its lr, the same warmup and cosine over the same steps), against
    AdamW's step at the grid's best lr and, where that is not its top, at 1e-4, with each row's
    mean dev accuracy in the legend."""
    from benchmarks.specs import logged_as

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 4.2), squeeze=False)
    for ax, (task, rows) in zip(axes[0], logs.items()):
        rows = [r for r in rows if r.get("per_step")]
        adamw = best_adamw(rows)
        reference = next(r for r in rows if r["optimizer"] == adamw)
        schedule = next(iter(reference["per_step"]["step_size"].values()))
        multiplier = [v / float(adamw.partition("@")[2]) for v in schedule]
        runs = [
            r
            for r in rows
            if r["optimizer"] == logged_as(spec, len(schedule)) and len(r["per_step"]["step_size"])
        ]
        accuracy = statistics.fmean(r["acc"] for r in runs)
        for i, run in enumerate(sorted(runs, key=lambda r: r.get("seed", 0))):
            eta = next(iter(run["per_step"]["step_size"].values()))
            step = [e * m for e, m in zip(eta, multiplier)]
            label = f"the default, {len(runs)} seeds ({accuracy:.3f})" if i == 0 else None
            ax.plot(range(1, len(step) + 1), step, color="tab:blue", lw=1, alpha=0.8, label=label)
        references = {adamw: "k--"}
        references.setdefault("adamw@1e-4", "k:")
        for name, style in references.items():
            seeds = [r for r in rows if r["optimizer"] == name]
            if not seeds:
                continue
            mean = statistics.fmean(r["acc"] for r in seeds)
            values = next(iter(seeds[0]["per_step"]["step_size"].values()))
            ax.plot(range(1, len(values) + 1), values, style, lw=1.3, label=f"{name} ({mean:.3f})")
        ax.set(yscale="log", ylim=(1e-6, 3e-4), xlabel="step", title=task)
        ax.legend(fontsize=8, loc="lower left")
    axes[0][0].set_ylabel("step size (η × the schedule's multiplier)")
    fig.suptitle(
        f"{out.stem}: the learning-rate-free default's step against AdamW's (mean dev accuracy)",
        fontsize=9,
    )
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
    parser.add_argument(
        "--default-steps",
        metavar="PNG",
        help="instead: one figure of the default's steps against AdamW's, a panel per run log",
    )
    arguments = parser.parse_args()
    if arguments.default_steps:
        from benchmarks.common import read_run_log
        from benchmarks.specs import DEFAULT

        logs = {}
        for name in arguments.results:
            if not Path(name).is_file():
                parser.error(f"no such file {name}")
            task = Path(name).name.removeprefix("quality_").removesuffix(".runs.jsonl")
            logs[task] = read_run_log(Path(name))
        plot_default_steps(logs, DEFAULT, Path(arguments.default_steps))
        print(f"wrote {arguments.default_steps}")
        return
    for name in arguments.results:
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
