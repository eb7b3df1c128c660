"""README's summary of issue 18: the learning-rate-free rows against the AdamW grid, per setting
and task, read off the quality tables (``results/quality_{s,m}_<task>_<device>.json``).

Each cell of :data:`ROWS` is the dev accuracy's mean ± std over the seeds that ran, with the mean
per-seed difference to the best AdamW grid point on the seeds both ran ("paired"); the best grid
point is the one with the highest mean. The table is printed and written to
``results/quality_summary_<device>.md``, from where README's copy is taken.

    python -m benchmarks.readme_summary
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.quality import GRID

RESULTS = Path(__file__).parent / "results"
#: the columns: (header, optimizer spec in the quality tables)
ROWS = (
    ("SlopeTrackingAdam (defaults)", "slope_tracking_adam"),
    ("the variant", "slope_tracking_adam+significant+fresh_peak+slope@1e-4~anneal"),
    ("SaLSA", "salsa"),
)
TASKS = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE"}


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


def summary_line(label: str, rows: list[dict]) -> str:
    """One line of the table: ``label``, each of :data:`ROWS`, the best grid point, the majority
    class."""
    acc = accuracies(rows)
    grid = {name: acc[name] for name in GRID if name in acc}
    if not grid:
        raise ValueError(f"{label}: no AdamW grid runs")
    best = max(grid, key=lambda name: statistics.mean(grid[name].values()))
    cells = []
    for _, spec in ROWS:
        mine = acc.get(spec)
        if not mine:
            cells.append("–")
            continue
        paired = [mine[s] - grid[best][s] for s in mine if s in grid[best]]
        note = f"; paired {signed(statistics.mean(paired))}" if paired else ""
        cells.append(spread(list(mine.values())) + note + ")")
    cells.append(f"{spread(list(grid[best].values()))}), {best.split('@')[1]}")
    cells.append(f"{rows[0]['majority']:.3f}")
    return f"| {label} | " + " | ".join(cells) + " |"


def summary_table(results: Path, device: str) -> str:
    header = ["setting, task", *(name for name, _ in ROWS), "best AdamW, lr", "majority class"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in ("S", "M"):
        for task, name in TASKS.items():
            path = results / f"quality_{setting.lower()}_{task}_{device}.json"
            if path.exists():
                lines.append(
                    summary_line(f"{setting}, {name}", json.loads(path.read_text())["rows"])
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--device", default="cpu", help="the tables' suffix: cpu or gpu")
    args = parser.parse_args()
    table = summary_table(Path(args.results), args.device)
    print(table)
    (Path(args.results) / f"quality_summary_{args.device}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
