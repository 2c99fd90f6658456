#!/usr/bin/env bash
# The simulator checked against measurement (issue 9): capped_batch and thread_offloaded at 0.25x,
# 0.5x, 1x and 2x the ceiling, measured through HTTP on this CPU and on the emulated H200, then
# each run simulated with its own arrivals, inputs and settings.
#
#   bash results/reference/sim-vs-measured/measure.sh        # about 15 minutes on 2 cores
#
# Writes OUT/data/ (calibrations, ceilings, run folders: large, not committed) and
# OUT/comparison.csv (one row per run: measured and simulated rate, p50, p99, mean batch).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/reference/sim-vs-measured}
DATA=$OUT/data
for device in cpu emulated:h200-bert-base; do
    $PY -m servelab simulate --calibrate --device "$device" --results-dir "$DATA"
    $PY -m servelab sweep --variants capped_batch,thread_offloaded --rates 0.25x,0.5x,1x,2x \
        --device "$device" --duration 10 --results-dir "$DATA" --no-progress \
        --out "$DATA/sweep-${device//:/_}.csv"
done
$PY -m servelab simulate --results-dir "$DATA" --out "$OUT/comparison.csv" \
    --replay $(dirname "$DATA"/sweep-*/*/*/summary.json)
