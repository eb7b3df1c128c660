"""Regenerate every benchmark table of lsframe and a report of each paper's claim against it.

    python -m benchmarks.report                 # everything, CPU or GPU (hours on a CPU)
    python -m benchmarks.report --only dps_quality valley_large_batch
    python -m benchmarks.report --report-only   # rebuild REPORT.md from the tables there are
    python -m benchmarks.report --quick --results /tmp/smoke   # every script on tiny slices

(from the repository root). Each step is one benchmark script, ``python -m benchmarks.<script>``,
with the settings its table was made with, writing ``<results>/<name>.{md,json}`` (the search
steps run ``python -m lsframe search``, per pair too, and ``combine``). The scripts log every
finished run to ``<name>.runs.jsonl`` and reuse it, so an interrupted report resumes where it
stopped (the step-cost tables and the searches, which have no runs to reuse, are skipped when
their output exists; ``--force`` redoes them). Then ``<results>/REPORT.md`` compares each paper's
claim with the measured mean ± std over seeds. ``--quick`` runs each script once on a few
examples and steps (CI's smoke test: it checks that the scripts and the report run, not the
claims).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.claims import CLAIMS
from benchmarks.common import ROOT
from benchmarks.specs import DEFAULT, DEFAULT_COST_TABLE, DEFAULT_MODES

BENCH = ROOT / "benchmarks"
GRID = ["adamw@1e-5", "adamw@2e-5", "adamw@5e-5", "adamw@1e-4"]
SEEDS = {"S": ["0", "1", "2", "3", "4"], "M": ["0", "1", "2"]}  # issue 18's settings
# issue 19's step-cost rows: AdamW(foreach) is the base, torch's fused AdamW shown beside; the
# default eager, with its strided alignment and fused
COST_ROWS = ["adamw-const@5e-5", "adamw-fused-const@5e-5", *DEFAULT_MODES]
SEARCH_CONFIG = ROOT / "configs" / "search" / "minilm_sst2_mrpc.yaml"

# name: (script, full arguments, quick arguments), for ``python -m benchmarks.<script>`` or
# ``python -m lsframe``
STEPS: dict[str, tuple[str, list[str], list[str]]] = {
    "quality_sst2": (
        "quality",
        ["--task", "sst2", "--train-limit", "2000", "--max-length", "64", "--seeds", "0", "1", "2"],
        ["--task", "sst2", "--train-limit", "32", "--max-length", "32", "--seeds", "0"]
        + ["--optimizers", "salsa", "adamw@1e-4", "--no-schedulefree"],
    ),
    "quality_mrpc": (
        "quality",
        ["--task", "mrpc", "--train-limit", "100000", "--max-length", "128", "--seeds", "0"],
        None,
    ),
    "quality_rte": (
        "quality",
        ["--task", "rte", "--train-limit", "100000", "--max-length", "128", "--seeds", "0"],
        None,
    ),
    **{
        f"quality_{setting.lower()}_{task}": (
            "quality",
            ["--setting", setting, "--task", task, "--seeds", *SEEDS[setting]]
            + ["--optimizers", DEFAULT, "slope_tracking_adam", "salsa", *GRID, "prodigy"],
            None,
        )
        for setting in ("S", "M")
        for task in ("sst2", "mrpc", "rte")
    },
    "step_cost": (
        "step_cost",
        ["--model", "minilm", "--steps", "1000", "--memory"],
        ["--steps", "4", "--short-steps", "2", "--block", "2", "--optimizers"]
        + ["adamw-const@5e-5", "salsa", "slope_tracking_adam"],
    ),
    **{
        DEFAULT_COST_TABLE.format(model=model): (
            "step_cost",
            ["--model", model, "--steps", "1000", "--memory", "--optimizers", *COST_ROWS],
            ["--model", model, "--steps", "4", "--first", "2", "--block", "2", "--optimizers"]
            + COST_ROWS,
        )
        for model in ("minilm", "small-bert")
    },
    "dps_overhead": (
        "dps",
        ["--overhead", "--steps", "100"],
        ["--overhead", "--steps", "2", "--block", "2"],
    ),
    "dps_quality": (
        "dps",
        ["--tasks", "rte", "mrpc", "--seeds", "0", "1", "2", "3", "4"],
        ["--tasks", "rte", "--seeds", "0", "--train-size", "32", "--epochs", "1"]
        + ["--update-ratio", "0.5"],
    ),
    "valley_large_batch": (
        "valley",
        ["--part", "large-batch", "--seeds", "0", "1", "2"],
        ["--part", "large-batch", "--seeds", "0", "--steps", "2", "--batch-size", "64"],
    ),
    "valley_finetune": (
        "valley",
        ["--part", "finetune", "--seeds", "0", "1", "2"],
        ["--part", "finetune", "--seeds", "0", "--train-limit", "64", "--val-limit", "64"],
    ),
    "forgetting": (
        "forgetting",
        ["--lambdas", "100000", "--seeds", "0", "1", "2"],
        ["--pairs", "sst2-mrpc", "--train-size", "32", "--epochs", "1", "--fisher-batches", "2"]
        + ["--val-limit", "32", "--seeds", "0"],
    ),
    "search": ("search", [], []),
    "search_pairs": ("search", [], []),  # one study per pair, then their combination
    "distribution": (
        "forgetting",
        ["--pairs", "sst2-mrpc", "mrpc-sst2", "--lambdas", "100000", "--distributions", "{best}"]
        + ["bertcl_combined", "{combined}", "--seeds", "0", "1", "2"]
        + ["--reuse-from", "{forgetting_log}"],
        ["--pairs", "sst2-mrpc", "--train-size", "32", "--epochs", "1", "--fisher-batches", "2"]
        + ["--distributions", "{best}", "bertcl_combined", "{combined}", "--seeds", "0"]
        + ["--val-limit", "32", "--reuse-from", "{forgetting_log}"],
    ),
}
FASHION = Path("/usr/share/datasets/fashion-mnist")
DEVICE = "gpu" if torch.cuda.is_available() else "cpu"


SEARCH_PAIRS = ("pair_sst2_mrpc", "pair_mrpc_sst2")


def search_command(results: Path, quick: bool, pair: str | None = None) -> list[str]:
    """A distribution search (``pair``: a one-pair study stacked on the two-pair config); in
    quick mode on a copy of its config with tiny subsets."""
    configs = [SEARCH_CONFIG] + ([SEARCH_CONFIG.with_name(f"{pair}.yaml")] if pair else [])
    out = results / ("search" if pair is None else f"search_{pair}")
    if quick:
        settings = yaml.safe_load(SEARCH_CONFIG.read_text())
        if pair is not None:
            stacked = yaml.safe_load(configs[1].read_text())
            settings["pairs"] = stacked["pairs"]
        settings["search"].update(n_trials=2 if pair is None else 1)
        for stages in settings["pairs"]:
            for stage in stages:
                stage["data"]["init_args"].update(train_subsample=32, val_limit=32, max_length=32)
        configs = [results / f"{out.name}_quick.yaml"]
        configs[0].write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "lsframe", "search"]
    for config in configs:
        argv += ["--config", str(config)]
    return argv + ["--search.output_dir", str(out)]


def commands(name: str, results: Path, quick: bool) -> list[list[str]] | None:
    """The commands of one step, in order (None: the step has no quick version)."""
    script, full, small = STEPS[name]
    if name == "search":
        return [search_command(results, quick)]
    if name == "search_pairs":
        bests = [
            str(results / f"search_{pair}" / "best_distribution.yaml") for pair in SEARCH_PAIRS
        ]
        combine = [sys.executable, "-m", "lsframe", "combine", *bests, "--out", combined(results)]
        return [*(search_command(results, quick, pair) for pair in SEARCH_PAIRS), combine]
    arguments = small if quick else full
    if arguments is None:
        return None
    places = {
        "{best}": str(results / "search" / "best_distribution.yaml"),
        "{combined}": combined(results),
        "{forgetting_log}": str(output(results, "forgetting").with_suffix(".runs.jsonl")),
    }
    arguments = [places.get(a, a) for a in arguments]
    out = output(results, name).with_suffix("")
    return [[sys.executable, "-m", f"benchmarks.{script}", *arguments, "--out", str(out)]]


def combined(results: Path) -> str:
    """Where the combination of the per-pair searches' best distributions goes."""
    return str(results / "search_combined" / "distribution.yaml")


def output(results: Path, name: str) -> Path:
    """``<results>/<name>_<cpu|gpu>.json``, the table a step writes."""
    return results / f"{name}_{DEVICE}.json"


def run_step(name: str, results: Path, quick: bool, force: bool) -> str:
    argvs = commands(name, results, quick)
    if argvs is None:
        return "skipped in quick mode"
    if name.startswith("valley_large") and not FASHION.is_dir():
        return "skipped: Debian's dataset-fashion-mnist is not installed"
    if not quick and not force:  # the steps that cannot resume from logged runs
        if name == "search" and (results / "search" / "best_distribution.yaml").exists():
            return "kept (best_distribution.yaml exists; --force searches again)"
        if name == "search_pairs" and Path(combined(results)).exists():
            return "kept (search_combined/distribution.yaml exists; --force searches again)"
        timed = name.startswith("step_cost") or name == "dps_overhead"
        if timed and output(results, name).exists():
            return "kept (its table exists; --force redoes it)"
    started = time.perf_counter()
    for argv in argvs:
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
        subprocess.run(argv, check=True, cwd=ROOT)
    print(f"=== {name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return f"ran in {time.perf_counter() - started:.0f} s"


def protocol_section(tables: dict[str, dict], device: str = DEVICE) -> list[str]:
    """The claims measured in their papers' own protocols, per table: the table's setting (its
    own first line), each claim's verdict and, for those that do not hold, what the
    measurements point to (each text once)."""
    lines = ["", "## The papers' protocols", ""]
    by_table: dict[str, list] = {}
    for claim in CLAIMS:
        if claim.protocol:
            by_table.setdefault(claim.key(device), []).append(claim)
    for table, claims in by_table.items():
        setting = tables[table]["meta"] if table in tables else "not run yet."
        lines.append(f"- `{table}`. Protocol: {setting}")
        diagnoses: list[str] = []
        for claim in claims:
            measured, verdict = claim.evaluate(tables, device)
            verdict = measured if verdict == "–" else verdict
            lines.append(f"  - {claim.paper}: {claim.text}: **{verdict}**.")
            held = verdict.split(" (")[0] == "holds"  # not "holds at 1 of 2 …"
            if not held and claim.diagnosis not in ("", *diagnoses):
                diagnoses.append(claim.diagnosis)
        lines += [f"  - What the measurements point to: {text}" for text in diagnoses]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(BENCH / "results"))
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--force", action="store_true", help="redo tables that cannot resume")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    results = Path(args.results)
    if args.quick and results.resolve() == (BENCH / "results").resolve():
        results = Path(tempfile.mkdtemp(prefix="lsframe_quick_"))
    results.mkdir(parents=True, exist_ok=True)
    status = {}
    if not args.report_only:
        for name in args.only or list(STEPS):
            status[name] = run_step(name, results, args.quick, args.force)
    # this machine kind's tables, and the GPU's for the claims that name it (P2 in fp32, the
    # GPU runs of issues 18 and 19), keyed by file stem
    tables = {
        p.stem: json.loads(p.read_text())
        for kind in sorted({DEVICE, "gpu"})
        for p in sorted(results.glob(f"*_{kind}.json"))
    }
    lines = [
        "# lsframe: each paper's claim against what lsframe measured",
        "",
        "Regenerated by `python -m benchmarks.report`"
        + (" --quick (tiny settings: NOT evidence for or against any claim)" if args.quick else "")
        + f". Tables of this machine kind ({DEVICE}), and of a GPU where a claim says so; each "
        "table's own file (`<table>.md`) gives its setting, command and machine.",
        "",
        "| paper | claim | lsframe measured (mean ± std over seeds) | verdict | table |",
        "|---|---|---|---|---|",
    ]
    for claim in CLAIMS:
        measured, verdict = claim.evaluate(tables, DEVICE)
        lines.append(
            f"| {claim.paper} | {claim.text} | {measured} | {verdict} | `{claim.key(DEVICE)}` |"
        )
    lines += protocol_section(tables)
    if status:
        lines += ["", "Steps of this invocation:", ""]
        lines += [f"- `{name}`: {what}" for name, what in status.items()]
    report = results / "REPORT.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
