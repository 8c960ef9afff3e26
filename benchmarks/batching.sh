#!/usr/bin/env bash
# The batching benchmark in one command: the default in-flight sweep (timed), static batches on
# the same prompts, and transformers' continuous batching, one after the other on one GPU, then
# the table (benchmarks/batching_table.py). Each comparison sweep has a wall-clock cap so that a
# slow mode cannot eat the session; a capped sweep records itself `interrupted` and keeps its
# finished points.
#
#   benchmarks/batching.sh DATASET OUT_DIR [MODEL]
#   STATIC_CAP_S=360 CB_CAP_S=320 CB_SIZES=1,8,64 CARBONTOP_CB_COMPILE_LEVEL=1 benchmarks/batching.sh ...
set -u
dataset=${1:?dataset: a ShareGPT JSON (.json or .json.gz)}
out=${2:?output folder}
model=${3:-llama2-7b}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CARBONTOP_CB_COMPILE_LEVEL=${CARBONTOP_CB_COMPILE_LEVEL:-1}
mkdir -p "$out"

timed() {  # name, command...: runs it, logs it, and records its wall time
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, wall $((SECONDS - t0)) s" | tee -a "$out/times.txt"
}

timed inflight python3 -m carbontop sweep --model "$model" --dataset "$dataset" --out "$out/inflight"
timed static timeout "${STATIC_CAP_S:-360}" python3 -m carbontop sweep --model "$model" \
  --dataset "$dataset" --batching static --out "$out/static"
timed cb timeout "${CB_CAP_S:-320}" python3 -m carbontop sweep \
  --engine benchmarks.transformers_cb:TransformersCB --model "$model" --dataset "$dataset" \
  --batch-sizes "${CB_SIZES:-1,8,64}" --stall-timeout-s "${CB_CAP_S:-320}" --out "$out/cb"
python3 benchmarks/batching_table.py "in-flight (ours)=$out/inflight" "static=$out/static" \
  "transformers CB, level $CARBONTOP_CB_COMPILE_LEVEL=$out/cb" | tee "$out/table.md"
