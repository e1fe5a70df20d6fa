#!/usr/bin/env bash
# PrismRec's ML-1M quality row with error bars, from one GPU host: bench/gpu_ml1m.py run with ML-1M's
# benchmark settings (bench/quality.py's DATASET_SETTINGS) once per seed, all at once on one GPU (a
# batch of 16 leaves it mostly idle), each to early stopping or its training budget; then `combine`
# (each seed's figures, the mean and the sd). Needs bench/gpu-assets/minilm and bench/gpu-assets/ml-1m
# (`make bench-gpu-prepare`, docs/gpu.md). Everything lands in OUT_DIR: gpu-ml1m.{json,md} (the
# combined table), seed-N/gpu-ml1m.json and seed-N.log per seed, status.txt.
#
#   bench/gpu_seeds.sh OUT_DIR [MINUTES]     # MINUTES: each seed's training budget (default 7)
#   SEEDS="42 43" bench/gpu_seeds.sh OUT_DIR
#   SMOKE=1 bench/gpu_seeds.sh OUT_DIR       # a few CPU steps per seed, nothing combined (a check)
#
# Back on the project's machine, with OUT_DIR's gpu-ml1m.{json,md} copied into bench/results/:
#   python -m bench.quality --dataset ml-1m --merge-runs prismrec=bench/results/gpu-ml1m.json
set -u
out=${1:?usage: bench/gpu_seeds.sh OUT_DIR [MINUTES]}
minutes=${2:-7}
py=${GPU_PYTHON:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$out"
: > "$out/status.txt"
files=()
for seed in ${SEEDS-42 43 44}; do
  args=(--set "train.seed=$seed" --work "$out/work-$seed" --copy-to "$out/seed-$seed")
  if [ -n "${SMOKE:-}" ]; then
    args+=(--smoke)
  else
    args+=(--set "train.max_minutes=$minutes")
  fi
  (
    "$py" -m bench.gpu_ml1m run "${args[@]}" > "$out/seed-$seed.log" 2>&1
    echo "seed $seed: exit $?" >> "$out/status.txt"
  ) &
  files+=("$out/seed-$seed/gpu-ml1m.json")
done
wait
rm -rf "$out"/work-*
cat "$out/status.txt"
if grep -qv ": exit 0$" "$out/status.txt"; then
  echo "a seed failed: see $out/seed-N.log" >&2
  exit 1
fi
if [ -z "${SMOKE:-}" ]; then
  "$py" -m bench.gpu_ml1m combine "${files[@]}" --out "$out" \
    --note "bench/gpu_seeds.sh: the seeds at once on one GPU, ${minutes}-minute training budget each."
fi
