#!/usr/bin/env bash
# The CPU benchmark tables of issue 4 (results/ holds the output). quality.py reuses the runs
# already logged under the same --out, so seeds and tasks can be added in several sittings.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/quality.py --task sst2 --train-limit 2000 --max-length 64 --seeds 0
python benchmarks/step_cost.py --steps 1000 --short-steps 50 --out benchmarks/results/step_cost_cpu
python benchmarks/step_cost.py --rows-from benchmarks/results/step_cost_cpu.json --memory --out benchmarks/results/step_cost_cpu
python benchmarks/plot.py benchmarks/results/step_cost_cpu.json benchmarks/results/quality_sst2_cpu.json
python benchmarks/quality.py --task sst2 --train-limit 2000 --max-length 64 --seeds 0 1 2
python benchmarks/quality.py --task mrpc --train-limit 100000 --max-length 128 --seeds 0
python benchmarks/quality.py --task rte --train-limit 100000 --max-length 128 --seeds 0
