#!/usr/bin/env bash
# One GPU host's batch, run at once on one GPU (a batch of 16 leaves it mostly idle):
#   - the ML-1M cold-start benchmark (bench/cold_start.py): PrismRec with the benchmark's frozen text
#     layers, PrismRec with its top text layer fine-tuned, the zero-shot text model and popularity,
#     and SASRec in a process of its own;
#   - SASRec with seeds 42, 43 and 44 on the ML-1M LOO split (bench/gpu_ml1m.py sasrec).
# Needs bench/gpu-assets/minilm and bench/gpu-assets/snapshot-ml-1m (docs/gpu.md). Everything the
# runs write goes into OUT_DIR/gpu-suite.tgz (a GPU host returns few files), with status.txt beside it.
#
#   bench/gpu_suite.sh OUT_DIR [SECONDS]          # SECONDS: each run's limit (default 480)
#   SMOKE=1 SNAPSHOT=DIR bench/gpu_suite.sh OUT_DIR   # the same commands, a few steps each, on the CPU
#   SASREC_SEEDS="" bench/gpu_suite.sh OUT_DIR        # the cold-start runs alone
set -u
out=${1:?usage: bench/gpu_suite.sh OUT_DIR [SECONDS]}
limit=${2:-480}
py=${GPU_PYTHON:-python3}
snapshot=${SNAPSHOT:-bench/gpu-assets/snapshot-ml-1m}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
work=$(mktemp -d)
mkdir -p "$out" "$work/results"
cold=(--snapshot "$snapshot")
sasrec=(--snapshot "$snapshot" --budget-minutes 4)
if [ -n "${SMOKE:-}" ]; then
  cold+=(--dataset ml-100k --smoke --max-cases 30 --sasrec-seconds 5)
  sasrec=(--snapshot "$snapshot" --smoke)
else
  cold+=(--sasrec-seconds 240 --set train.max_minutes=5)
fi

run() {  # name, module and arguments: the run's log and exit status
  local name=$1
  shift
  timeout "$limit" "$py" -m "$@" > "$work/results/$name.log" 2>&1
  echo "$name: exit $?" >> "$work/results/status.txt"
}

run cold-frozen bench.cold_start run "${cold[@]}" --models prismrec,content,popularity \
  --out "$work/results/cold-frozen.json" --work "$work/cold-frozen" &
run cold-finetuned bench.cold_start run "${cold[@]}" --models prismrec --name prismrec-finetuned \
  --set train.lm_trainable_layers=1 --out "$work/results/cold-finetuned.json" --work "$work/cold-finetuned" &
run cold-sasrec bench.cold_start run "${cold[@]}" --models sasrec \
  --out "$work/results/cold-sasrec.json" --work "$work/cold-sasrec" &
for seed in ${SASREC_SEEDS-42 43 44}; do
  run "sasrec-$seed" bench.gpu_ml1m sasrec "${sasrec[@]}" --seed "$seed" \
    --out "$work/results/sasrec-$seed.json" --work "$work/sasrec-$seed" &
done
wait
cp "$work/results/status.txt" "$out/status.txt"
tar -czf "$out/gpu-suite.tgz" -C "$work" results
cat "$out/status.txt"
rm -rf "$work"
