#!/bin/bash
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
set -x
$PY -m servelab ceiling
C=results/ceiling/all-MiniLM-L6-v2__feature-extraction__cpu__t1.json
CEIL=$($PY -c "import json;print(json.load(open('$C'))['ceiling_seq_per_s'])")
B1=$($PY -c "import json;d=json.load(open('$C'));print([r['seq_per_s'] for r in d['by_batch_size'] if r['batch_size']==1][0])")
SLO=$($PY -c "print(round(10*1000/$B1,1))")
R2X=$($PY -c "print(round(2*$CEIL,1))")
R10=$($PY -c "print(round(0.1*$CEIL,1))")
RN=$($PY -c "print(round(2*$B1,1))")
echo "ceiling=$CEIL batch1=$B1 slo=$SLO"
$PY -m servelab bench --variant thread_offloaded --rate $R2X --duration 20 --tag breaker_on
$PY -m servelab bench --variant thread_offloaded --rate $R2X --duration 20 --tag breaker_off --max-queue 0 --queue-timeout-ms 0
$PY -m servelab bench --variant thread_offloaded --rate $R10 --duration 30 --tag low_load
$PY -m servelab bench --variant naive --rate $RN --duration 20 --tag naive_overload
$PY -m servelab bench --variant thread_offloaded --find-max-rate --rate $R10 --slo-ms $SLO --duration 10 --max-queue 0 --queue-timeout-ms 0 --tag maxrate
$PY -m servelab ceiling
