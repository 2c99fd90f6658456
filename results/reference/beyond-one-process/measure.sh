#!/bin/bash
# One process against many, on this machine: thread_offloaded, multi_process with 1 and 2 front
# ends, LitServe and Ray Serve (one replica), each with its own defaults, at 0.1x and 2x the
# ceiling, on this CPU and on the emulated H200. From any clone, nothing else running:
#   bash results/reference/beyond-one-process/measure.sh        (about 15 minutes)
# Each setting's sweep CSV lands in results/sweeps/beyond-<device>-<setting>.csv, its runs beside it;
# `python results/reference/beyond-one-process/table.py results/sweeps` prints the table.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
DUR=${DUR:-10}
REF=results/reference
for DEVICE in cpu emulated:h200-bert-base; do
    if [[ $DEVICE == cpu ]]; then
        CEILING=$REF/cpu-2core/ceiling/all-MiniLM-L6-v2__feature-extraction__cpu__t1.json
    else
        CEILING=$REF/emulated-h200-bert-base/ceiling/all-MiniLM-L6-v2__feature-extraction__emulated_h200-bert-base__t1.json
    fi
    NAME=${DEVICE#emulated:}
    run() {  # run SETTING VARIANT [server flags...]
        local setting=$1 variant=$2
        shift 2
        $PY -m servelab sweep --variants "$variant" --rates 0.1x,2x --duration "$DUR" --device "$DEVICE" \
            --ceiling "$CEILING" --no-progress --out "results/sweeps/beyond-$NAME-$setting.csv" -- "$@"
    }
    run thread_offloaded thread_offloaded
    run multi_process-1 multi_process --front-ends 1
    run multi_process-2 multi_process --front-ends 2
    run litserve frameworks/litserve_app
    run ray_serve frameworks/ray_serve_app
done
