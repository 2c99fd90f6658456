#!/bin/bash
# slo_aware against the variants it grew from, on this CPU (README.md beside this file). From any clone:
#   bash results/reference/slo-cpu-2core/measure.sh          (about 40 minutes; nothing else running)
# Runs land in results/runs/*_slo_*; `python results/reference/slo-cpu-2core/table.py` makes the table,
# and results/reference/curate.py copies runs here. DEVICE=emulated:h200-bert-base for the emulated
# accelerator (then TAG=slo_h200 keeps its runs apart). ONLY=slo_aware measures slo_aware and its
# ablation alone, to re-measure it after a change (each run is still a ratio to its own bracket).
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cpu}
TAG=${TAG:-slo}
DUR=${DUR:-20}
ONLY=${ONLY:-}
CEILING_FILE=results/ceiling/${TAG}-ceiling.json
set -x
$PY -m servelab ceiling --device "$DEVICE" --out "$CEILING_FILE"
read -r CEIL B1 < <($PY - "$CEILING_FILE" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
b1 = [r["seq_per_s"] for r in d["by_batch_size"] if r["batch_size"] == 1][0]
print(d["ceiling_seq_per_s"], b1)
PY
)
# The objective, as results/reference/goals-cpu-2core/ set it: p99 within 10x one input's time.
SLO=$($PY -c "print(round(10 * 1000 / $B1, 1))")
R10=$($PY -c "print(round(0.1 * $CEIL, 1))")
R2X=$($PY -c "print(round(2 * $CEIL, 1))")
R4X=$($PY -c "print(round(4 * $CEIL, 1))")
echo "ceiling=$CEIL batch1=$B1 slo=$SLO"
COMMON=(--device "$DEVICE" --slo-ms "$SLO" --ceiling "$CEILING_FILE")

# Each contender: max rate at p99 <= objective, 2x and 4x overload, 10% load.
contender() {
    local name=$1; shift
    $PY -m servelab bench --find-max-rate --rate "$R10" --duration 10 --tag "${TAG}_${name}_maxrate" "${COMMON[@]}" "$@"
    $PY -m servelab bench --rate "$R2X" --duration "$DUR" --tag "${TAG}_${name}_2x" "${COMMON[@]}" "$@"
    $PY -m servelab bench --rate "$R4X" --duration "$DUR" --tag "${TAG}_${name}_4x" "${COMMON[@]}" "$@"
    $PY -m servelab bench --rate "$R10" --duration 30 --tag "${TAG}_${name}_low" "${COMMON[@]}" "$@"
}
contender slo_aware --variant slo_aware -- --slo-ms "$SLO"

if [ "$ONLY" != slo_aware ]; then
# thread_offloaded by hand: its breaker swept at 2x; the best goodput is its tuned setting.
SWEEP=results/sweeps/${TAG}-tuning.csv
$PY -m servelab sweep --variants thread_offloaded --max-queue 4,8,16,32 \
    --queue-timeout-ms "$($PY -c "print(round($SLO / 2))"),$SLO" --rates 2x --duration "$DUR" \
    --out "$SWEEP" "${COMMON[@]}"
TUNED=$($PY - "$SWEEP" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
best = max(rows, key=lambda r: float(r["goodput_rate"] or 0))
print(f"--max-queue {best['max_queue']} --queue-timeout-ms {best['queue_timeout_ms']}")
PY
)
echo "thread_offloaded tuned: $TUNED"

contender thread_offloaded --variant thread_offloaded
# shellcheck disable=SC2086
contender thread_offloaded_tuned --variant thread_offloaded $TUNED
contender capped_batch --variant capped_batch
fi

# Each part of the plan off in turn, at 2x: what it is worth. Without sizing, batches take up to
# thread_offloaded's fixed cap of 16; the same without sorting too is what sorting alone is worth.
for parts in sorting sizing admission sizing_sorting; do
    without=(); for part in ${parts//_/ }; do without+=(--without "$part"); done
    cap=(); [[ "$parts" == sizing* ]] && cap=(--max-batch-size 16)
    $PY -m servelab bench --variant slo_aware --rate "$R2X" --duration "$DUR" --tag "${TAG}_without_${parts}_2x" \
        "${COMMON[@]}" -- --slo-ms "$SLO" "${without[@]}" "${cap[@]}"
done
# slo_aware sorts its batches by length, which the ceiling above (batches in corpus order) does
# not: the same ceiling with batches of one length, its denominator for the ratios above 1.
$PY -m servelab ceiling --device "$DEVICE" --length-sorted --out "results/ceiling/${TAG}-ceiling-length-sorted.json"
set +x
$PY results/reference/slo-cpu-2core/table.py --tag "$TAG"
