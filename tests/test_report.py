"""``benchmarks/report.py --quick``: every benchmark script and the report run end to end on tiny
slices (a smoke test of the scripts; the tables it writes are not evidence)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_report_runs_every_benchmark_and_writes_the_report(minilm, shared_data, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from claims import CLAIMS
    from report import STEPS

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--quick"]
        + ["--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    assert "--quick" in report and "NOT evidence" in report
    rows = [line for line in report.splitlines() if line.startswith("| P")]
    assert len(rows) == len(CLAIMS)
    for name in STEPS:
        assert f"- `{name}`: " in report, name
    tables = {p.name for p in tmp_path.glob("*.md")}
    for name in ("quality_sst2", "step_cost", "dps_quality", "forgetting", "distribution"):
        assert any(t.startswith(name) for t in tables), name
    assert (tmp_path / "search" / "best_distribution.yaml").is_file()
    assert (tmp_path / "search_combined" / "distribution.yaml").is_file()  # two pairs, combined
    # every claim whose table was written is read, not "not measured"
    measured = [row for row in rows if "not measured yet" not in row]
    assert len(measured) >= len(CLAIMS) - 3  # full mode only: MRPC/RTE quality, the λ sweep

    # the distribution table reuses the forgetting table's plain and EWC runs instead of redoing them
    def runs(name):
        lines = (tmp_path / f"{name}.runs.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    shared = [r for r in runs("distribution_cpu") if r["distribution"] == "flat"]
    assert len(shared) == 2 and all(r in runs("forgetting_cpu") for r in shared)
