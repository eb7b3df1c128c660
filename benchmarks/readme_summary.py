"""README's summaries of issue 18, read off the quality tables
(``results/quality_{s,m}_<task>_<device>.json``): the learning-rate-free rows against the AdamW
grid per setting and task, and the papers' rules with their defaults and their robust presets
(setting S: one line per rule over the tasks, then one table per task).

Each cell is the dev accuracy's mean ± std over the seeds that ran, with the mean per-seed
difference to the best AdamW grid point on the seeds both ran ("paired"); the best grid point is
the one with the highest mean. The tables are printed and written to
``results/quality_summary_<device>.md``, from where README's copies are taken.

    python -m benchmarks.readme_summary
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks.quality import best_grid_point
from benchmarks.specs import DEFAULT, PREVIOUS_DEFAULT

RESULTS = Path(__file__).parent / "results"
#: the summary's columns: (header, optimizer spec in the quality tables); ``hold_warmup``
#: without the burn-in is in ``results/slope_tracking_pilots_cpu.md``
COLUMNS = (
    ("SlopeTrackingAdam (defaults: burn-in, hold, long-run start, warmup + anneal)", DEFAULT),
    ("its defaults of 2026-12-03 (anneal only)", PREVIOUS_DEFAULT),
    ("its earlier defaults", "slope_tracking_adam"),
    ("SaLSA", "salsa"),
)
#: the other optimizers without a learning rate to choose, or with the grid's best:
#: (header, spec; ``{lr}`` is the best AdamW grid point's)
PEERS = (
    ("Prodigy", "prodigy"),
    ("Schedule-Free AdamW at the best grid point's lr", "schedulefree@{lr}"),
    ("SaLSA, the authors' package", "salsa-reference"),
)
#: QNLI is held out from the defaults' choice (benchmarks.common.DEV_SPLIT)
TASKS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "qnli": "QNLI (held out)"}
#: the settings a task runs in, where not both
ONLY_IN: dict[str, tuple[str, ...]] = {}
#: the papers' rules: (name, spec, its paper defaults, its robust preset)
PRESETS = (
    ("SGDSLS", "sgdsls", "c = 0.1", "c = 0.5"),
    ("AdamSLS", "adamsls", "c = 0.1, no smoothing", "c = 0.5, `smooth=True`"),
    ("PLASLS", "plasls", "c = 0.1, no smoothing", "c = 0.5, `smooth=True`"),
    ("ALSALS", "alsals", "c = 0.3, β = 0.99", "c = 0.5, β = 0.9"),
)


def signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def spread(values: list[float]) -> str:
    """``mean ± std (n seeds`` or ``value (1 seed``; the caller closes the parenthesis."""
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds"


def accuracies(rows: list[dict]) -> dict[str, dict[int, float]]:
    by: dict[str, dict[int, float]] = {}
    for row in rows:
        by.setdefault(row["optimizer"], {})[row["seed"]] = row["acc"]
    return by


def paired(mine: dict[int, float], best: dict[int, float]) -> str | None:
    """The mean per-seed difference of ``mine`` to ``best`` on their shared seeds, signed; None
    when they share none."""
    differences = [mine[s] - best[s] for s in mine if s in best]
    return signed(statistics.mean(differences)) if differences else None


def against(mine: dict[int, float] | None, best: dict[int, float]) -> str:
    """A row's cell: its spread, and its mean paired difference to ``best`` on shared seeds."""
    if not mine:
        return "–"
    difference = paired(mine, best)
    note = f"; paired {difference}" if difference else ""
    return spread(list(mine.values())) + note + ")"


def best_of_grid(label: str, rows: list[dict]) -> str:
    best = best_grid_point(rows, "acc")
    if best is None:
        raise ValueError(f"{label}: no AdamW grid runs")
    return best


def specs_line(label: str, rows: list[dict], specs: Callable[[str], list[str]]) -> str:
    """One line of a table of cells: ``label``, a cell for each of ``specs(best)`` (``best``:
    the best grid point's spec) paired against ``best``, that point (mean ± std, lr), the
    majority class."""
    acc = accuracies(rows)
    best = best_of_grid(label, rows)
    cells = [against(acc.get(spec), acc[best]) for spec in specs(best)]
    grid = [f"{spread(list(acc[best].values()))}), {best.split('@')[1]}"]
    return "| " + " | ".join([label, *cells, *grid, f"{rows[0]['majority']:.3f}"]) + " |"


def summary_line(label: str, rows: list[dict]) -> str:
    """One line of the table: ``label``, each of :data:`COLUMNS`, the best grid point, the
    majority class."""
    return specs_line(label, rows, lambda best: [spec for _, spec in COLUMNS])


def peers_line(label: str, rows: list[dict]) -> str:
    """One line of the peers' table: ``label``, the default, each of :data:`PEERS` (at the best
    grid point's lr), the best grid point, the majority class."""
    return specs_line(
        label,
        rows,
        lambda best: [DEFAULT, *(spec.format(lr=best.split("@")[1]) for _, spec in PEERS)],
    )


def cells_table(results: Path, device: str, columns: list[str], line: Callable) -> str:
    """A table with one ``line(label, rows)`` per setting and task whose quality table exists,
    under the header ``setting, task``, ``columns``, the best grid point, the majority class."""
    header = ["setting, task", *columns, "best AdamW, lr", "majority class"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in ("S", "M"):
        for task, name in TASKS.items():
            if setting not in ONLY_IN.get(task, (setting,)):
                continue
            path = results / f"quality_{setting.lower()}_{task}_{device}.json"
            if not path.exists():
                print(f"readme_summary: no {path.name}: its line is left out")
                continue
            lines.append(line(f"{setting}, {name}", json.loads(path.read_text())["rows"]))
    return "\n".join(lines)


def summary_table(results: Path, device: str) -> str:
    return cells_table(results, device, [name for name, _ in COLUMNS], summary_line)


def peers_table(results: Path, device: str) -> str:
    columns = [COLUMNS[0][0].split(" (")[0], *(name for name, _ in PEERS)]
    return cells_table(results, device, columns, peers_line)


def presets_table(rows: list[dict], label: str) -> str:
    """The papers' rules with their defaults and their robust presets (``name+robust``) on one
    quality table's ``rows``, SaLSA and the authors' SaLSA package beside them."""
    acc = accuracies(rows)
    best = acc[best_of_grid(label, rows)]
    lines = ["| method | paper default | measured | lsframe preset `robust` | measured |"]
    lines.append("|---|---|---|---|---|")
    for name, spec, default, preset in PRESETS:
        mine, robust = against(acc.get(spec), best), against(acc.get(f"{spec}+robust"), best)
        lines.append(f"| {name} | {default} | {mine} | {preset} | {robust} |")
    salsa, authors = against(acc.get("salsa"), best), against(acc.get("salsa-reference"), best)
    lines.append(
        f"| SaLSA | c = 0.5, β3 = 0.9 | {salsa} | (its defaults) | authors' package: {authors} |"
    )
    return "\n".join(lines)


def brief(mine: dict[int, float] | None, best: dict[int, float], seeds: int) -> str:
    """A short cell: the mean, and the mean paired difference to ``best`` on shared seeds; the
    seed count only where it is not the row's planned ``seeds``."""
    if not mine:
        return "–"
    difference = paired(mine, best)
    notes = [difference] if difference else []
    if len(mine) != seeds:
        notes.append(f"{len(mine)} seed{'s' if len(mine) > 1 else ''}")
    return f"{statistics.mean(mine.values()):.3f}" + (f" ({'; '.join(notes)})" if notes else "")


def presets_overview(tables: dict[str, list[dict]]) -> str:
    """The papers' rules on every task of setting S (``tables``: task name → quality rows), one
    line per rule: its paper default → its robust preset, measured on each task (3 seeds), with
    SaLSA → the authors' package (5 seeds), then each task's best AdamW point and majority class.
    """
    names = list(tables)
    lines = ["| method | paper default → lsframe preset `robust` | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    acc = {task: accuracies(rows) for task, rows in tables.items()}
    grid_best = {task: best_of_grid(task, rows) for task, rows in tables.items()}
    best = {task: acc[task][grid_best[task]] for task in names}

    def line(label: str, before: str, after: str, seeds: int) -> str:
        cells = [
            " → ".join(brief(acc[t].get(spec), best[t], seeds) for spec in (before, after))
            for t in names
        ]
        return f"| {label} | " + " | ".join(cells) + " |"

    for name, spec, default, preset in PRESETS:
        lines.append(line(f"{name} | {default} → {preset}", spec, f"{spec}+robust", 3))
    lines.append(line("SaLSA | lsframe's → the authors' package", "salsa", "salsa-reference", 5))
    cells = [
        f"{statistics.mean(best[t].values()):.3f} ({grid_best[t].split('@')[1]}); "
        f"{tables[t][0]['majority']:.3f}"
        for t in names
    ]
    lines.append("| best AdamW (lr); majority class | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument(
        "--device", default="cpu", help="the tables' suffix: cpu, gpu or bf16_gpu (quality --bf16)"
    )
    args = parser.parse_args()
    results = Path(args.results)
    table = summary_table(results, args.device)
    text = f"Issue 18's bar, per setting and task:\n\n{table}\n"
    peers = peers_table(results, args.device)
    text += (
        "\nThe other optimizers without a learning rate to choose (Prodigy, the authors' "
        "SaLSA), or with the best grid point's (Schedule-Free), against the same best point:"
        f"\n\n{peers}\n"
    )
    ran = {}
    for task in TASKS:
        path = results / f"quality_s_{task}_{args.device}.json"
        rows = json.loads(path.read_text())["rows"] if path.exists() else []
        if any(r["optimizer"] in {spec for _, spec, _, _ in PRESETS} for r in rows):
            ran[TASKS[task]] = rows
    if ran:
        overview = presets_overview(ran)
        text += (
            "\nThe papers' rules in setting S: mean dev accuracy (paired difference to the "
            f"best AdamW point), paper default → robust preset:\n\n{overview}\n"
        )
    for task, rows in ran.items():
        text += f"\nThe papers' rules, setting S, {task}:\n\n{presets_table(rows, task)}\n"
    print(text)
    (results / f"quality_summary_{args.device}.md").write_text(text)


if __name__ == "__main__":
    main()
