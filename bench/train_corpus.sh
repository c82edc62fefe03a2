#!/usr/bin/env bash
# Reproduce docs/results.md: datasets from the shared corpus, every model trained within a CPU budget, each
# evaluated on the test split. Usage: bench/train_corpus.sh RUNS_DIR [MODEL...]
#   CORPUS (default ../shared/corpus) and SPLITS ("by-file random") can be set in the environment.
set -euo pipefail
runs=${1:?usage: bench/train_corpus.sh RUNS_DIR [MODEL...]}
shift
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(nin1 nin2 nin_parallel nin_small cnn_small cnn_large nin_large cnn_deeppacket)
corpus=${CORPUS:-$(dirname "$0")/../../shared/corpus}
mkdir -p "$runs"

# Budgets (this 2-core CPU): every model sees every training row (the large ones train at 400-600 packets/s, so
# 15 epochs of NIN_large take up to half an hour); early stopping on validation macro-F1 throughout.
budget() {
  case $1 in
    nin1) echo "--epochs 30 --patience 6" ;;
    nin2) echo "--epochs 15 --patience 5" ;;
    cnn_deeppacket) echo "--epochs 14 --patience 4" ;;
    *) echo "--epochs 15 --patience 4" ;;
  esac
}

for split in ${SPLITS:-by-file random}; do
  data="$runs/data-$split"
  [ -d "$data" ] || pktnin dataset build "$corpus/labels.csv" --out "$data" --label-column task_category \
    --split "$split" --no-progress
  for model in "${models[@]}"; do
    ckpt="$runs/$split-$model.keras"
    result="$runs/$split-$model.test.json"
    # The test result marks a finished model (a checkpoint alone may be a run still in progress).
    [ -f "$result" ] && continue
    if [ "$model" = nin_parallel ]; then
      pktnin fuse "$runs/$split-nin1.keras" "$runs/$split-nin2.keras" --data "$data" --out "$ckpt"
    else
      # shellcheck disable=SC2046
      pktnin train "$model" --data "$data" --out "$ckpt" --class-weighting balanced \
        --seed 0 --no-progress $(budget "$model") ${TRAIN_ARGS:-}
    fi
    pktnin evaluate "$ckpt" --data "$data" --split test --out "$result" > "$runs/$split-$model.test.txt"
  done
done
