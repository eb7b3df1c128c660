"""``python -m benchmarks.report --quick``: every benchmark script and the report run end to end
on tiny slices (a smoke test of the scripts; the tables it writes are not evidence).

``benchmarks`` is a package at the repository root, importable as the README's test command
(``python -m pytest`` from the root) runs the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.claims import CLAIMS
from benchmarks.report import FASHION, STEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(1500)  # every benchmark script in turn: ~8 min on one CI core
def test_the_quick_report_runs_every_benchmark_and_writes_the_report(minilm, shared_data, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--quick", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    assert "--quick" in report and "NOT evidence" in report
    papers = {claim.paper for claim in CLAIMS}  # P0 … P4, and lsframe's own claims
    rows = [line for line in report.splitlines() if line.split(" | ")[0][2:] in papers]
    assert len(rows) == len(CLAIMS)
    for name in STEPS:
        assert f"- `{name}`: " in report, name
    tables = {p.name for p in tmp_path.glob("*.md")}
    for name in ("quality_sst2", "step_cost", "dps_quality", "forgetting", "distribution"):
        assert any(t.startswith(name) for t in tables), name
    assert (tmp_path / "search" / "best_distribution.yaml").is_file()
    assert (tmp_path / "search_combined" / "distribution.yaml").is_file()  # two pairs, combined
    # every claim whose table was written is read, not "not measured"
    unmeasured = {"quality_mrpc", "quality_rte", "forgetting_sweep"}  # full mode only
    unmeasured.add("p1_final_loss_gpt2")  # P1's protocol: benchmarks/run_cpu.sh, not the report
    unmeasured |= {f"quality_{s}_{t}" for s in "sm" for t in ("sst2", "mrpc", "rte")}
    if not FASHION.is_dir():
        unmeasured.add("valley_large_batch")  # skipped without Debian's dataset-fashion-mnist
    for claim, row in zip(CLAIMS, rows):
        assert ("not measured yet" in row) == (claim.table in unmeasured), row

    # the distribution table reuses the forgetting table's plain and EWC runs instead of redoing them
    def runs(name):
        lines = (tmp_path / f"{name}.runs.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    shared = [r for r in runs("distribution_cpu") if r["distribution"] == "flat"]
    assert len(shared) == 2 and all(r in runs("forgetting_cpu") for r in shared)


def test_the_default_step_cost_claim_names_the_modes_that_hold_and_a_short_run_cannot_hold():
    from benchmarks.claims import default_step_cost

    def row(name, first, whole, steps=1000, memory=1.0):
        return {
            "optimizer": name,
            "first": {"total": first, "steps": 300},
            "whole": {"total": whole, "steps": steps},
            "peak_vs_adamw": memory,
        }

    rows = [
        row("slope_tracking_adam", 1.21, 1.42),
        row("slope_tracking_adam+sampled", 1.01, 1.06),
        row("slope_tracking_adam+fused", 0.71, 0.73),
    ]
    measured, verdict = default_step_cost(1.10)(rows)
    assert verdict == "holds with slope_tracking_adam+sampled and slope_tracking_adam+fused"
    assert "slope_tracking_adam+sampled 1.01× (≤300) / 1.06× (≤1000)" in measured
    assert default_step_cost(1.05)(rows)[1] == "holds with slope_tracking_adam+fused"
    rows[2]["peak_vs_adamw"] = 1.2  # too much memory: that mode misses too
    assert default_step_cost(1.05)(rows)[1] == "missed"
    short = [row("slope_tracking_adam", 1.0, 1.0, steps=300)]
    assert default_step_cost(1.05)(short)[1] == "holds over 300 steps only (1000 not run)"
