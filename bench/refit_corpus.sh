#!/usr/bin/env bash
# Refit on train+val (docs/results.md, "Refit on train+val"): each model already trained by bench/train_corpus.sh
# is trained again on the training and validation files, with the settings of its train-only run and for the
# epochs that run picked by validation macro-F1; nin_parallel refits both branches of its fused checkpoint and
# keeps that run's alpha. Each refit model is evaluated on the test split.
# Usage: bench/refit_corpus.sh RUNS_DIR [MODEL...]   (default: nin_parallel; SPLIT defaults to by-file)
set -euo pipefail
runs=${1:?usage: bench/refit_corpus.sh RUNS_DIR [MODEL...]}
shift
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(nin_parallel)
split=${SPLIT:-by-file}
data="$runs/data-$split"

# The train options that reproduce a train-only checkpoint, with --epochs set to its best epoch.
refit_args() {
  python - "$1" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["training"]
args = ["--epochs", t["best_epoch"], "--seed", t["seed"], "--batch", t["batch"], "--dropout", t["dropout"],
        "--class-weighting", t["class_weighting"], "--augment", t.get("augment", "none")]
for key in ("max_per_class", "max_per_flow", "max_train"):
    if t.get(key) is not None:
        args += ["--" + key.replace("_", "-"), t[key]]
print(" ".join(map(str, args)))
EOF
}

json_of() { echo "${1%.keras}.json"; }

refit_one() {  # refit_one PRESET TRAIN_ONLY_CKPT OUT_CKPT
  # shellcheck disable=SC2046
  pktnin train "$1" --data "$data" --out "$3" --fit train+val --no-progress $(refit_args "$(json_of "$2")")
}

for model in "${models[@]}"; do
  out="$runs/$split-$model-refit.keras"
  result="$runs/$split-$model-refit.test.json"
  [ -f "$result" ] && continue
  if [ "$model" = nin_parallel ]; then
    fused_json="$runs/$split-nin_parallel.json"
    read -r alpha nin1 nin2 < <(python -c "import json, sys; m = json.load(open(sys.argv[1])); b = m['training']['branches']; print(m['alpha'], b['nin1']['checkpoint'], b['nin2']['checkpoint'])" "$fused_json")
    for branch in nin1 nin2; do  # each branch is evaluated too, as $split-nin1-refit / $split-nin2-refit
      [ -f "$runs/$split-$branch-refit.test.json" ] && continue
      [ "$branch" = nin1 ] && src=$nin1 || src=$nin2
      refit_one "$branch" "$src" "$runs/$split-$branch-refit.keras"
      pktnin evaluate "$runs/$split-$branch-refit.keras" --data "$data" --split test \
        --out "$runs/$split-$branch-refit.test.json" > "$runs/$split-$branch-refit.test.txt"
    done
    pktnin fuse "$runs/$split-nin1-refit.keras" "$runs/$split-nin2-refit.keras" --data "$data" --out "$out" \
      --alpha "$alpha"
  else
    refit_one "$model" "$runs/$split-$model.keras" "$out"
  fi
  pktnin evaluate "$out" --data "$data" --split test --out "$result" > "${result%.json}.txt"
done
