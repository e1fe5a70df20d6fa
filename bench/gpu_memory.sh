#!/usr/bin/env bash
# One GPU host's batch for training memory and settings, at once on one GPU:
#   - bench.memory on ML-1M: 40 full epochs with the benchmark's settings, early stopping off, bf16,
#     resident and device memory by epoch (its row goes into bench/results/memory.json with
#     `python -m bench.memory --add-run memory-ml1m.json` back on the project's machine);
#   - PrismRec variants of `bench.gpu_ml1m run`, each VARIANT a NAME=STAGE.FIELD=VALUE[,STAGE.FIELD=VALUE]
#     argument, trained to early stopping (at most 6 minutes), their figures in NAME.json.
# Needs bench/gpu-assets/minilm and bench/gpu-assets/ml-1m (docs/gpu.md). What the runs write goes into
# OUT_DIR/gpu-memory.tgz (a GPU host returns few files), with status.txt beside it.
#
#   bench/gpu_memory.sh OUT_DIR [SECONDS [VARIANT ...]]     # SECONDS: each run's limit (default 570)
#   SMOKE=1 bench/gpu_memory.sh OUT_DIR 300 d2=train.dropout=0.2   # a few steps of each on the CPU
#   MEMORY=0 bench/gpu_memory.sh OUT_DIR 280 ...                    # the variants alone
set -u
out=${1:?usage: bench/gpu_memory.sh OUT_DIR [SECONDS [NAME=K=V[,K=V] ...]]}
limit=${2:-570}
shift $(( $# >= 2 ? 2 : 1 ))
py=${GPU_PYTHON:-python3}
dataset=${DATASET_DIR:-bench/gpu-assets/ml-1m}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
work=$(mktemp -d)
mkdir -p "$out" "$work/results"
memory=(--datasets ml-1m --dataset-dir "$dataset" --gpu)
variant=(--dataset "$dataset" --set train.max_minutes=6)
if [ -n "${SMOKE:-}" ]; then
  memory=(--datasets ml-1m --dataset-dir "$dataset" --epochs 2 --max-steps 3)
  variant=(--dataset "$dataset" --smoke)
fi

run() {  # name, module and arguments: the run's log and exit status
  local name=$1
  shift
  timeout "$limit" "$py" -m "$@" > "$work/results/$name.log" 2>&1
  echo "$name: exit $?" >> "$work/results/status.txt"
}

if [ "${MEMORY:-1}" != 0 ]; then
  run memory-ml1m bench.memory "${memory[@]}" --out "$work/results/memory-ml1m.json" &
fi
for spec in "$@"; do
  name=${spec%%=*}
  sets=()
  IFS=, read -ra pairs <<< "${spec#*=}"
  for pair in "${pairs[@]}"; do sets+=(--set "$pair"); done
  run "$name" bench.gpu_ml1m run "${variant[@]}" "${sets[@]}" --work "$work/$name" --copy-to "$work/results/$name" &
done
wait
cp "$work/results/status.txt" "$out/status.txt"
tar -czf "$out/gpu-memory.tgz" -C "$work" results
cat "$out/status.txt"
rm -rf "$work"
