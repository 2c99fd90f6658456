#!/bin/bash
# The runs behind the performance goals (README.md beside this file). From any clone:
#   bash results/reference/goals-cpu-2core/measure.sh        (about 10 minutes; nothing else running)
# Runs land in results/runs/*_goals_*; results/reference/curate.py copies them here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
C=results/ceiling/all-MiniLM-L6-v2__feature-extraction__cpu__t1.json
IDLE=results/ceiling/goals-idle-core.json
set -x
# The ceiling as it used to be timed (the load generator's core idle), for comparison only,
# then as the runs use it: with that core kept as busy as Locust keeps it.
$PY -m servelab ceiling --loadgen-duty 0 --out $IDLE
$PY -m servelab ceiling
CEIL=$($PY -c "import json;print(json.load(open('$C'))['ceiling_seq_per_s'])")
B1=$($PY -c "import json;d=json.load(open('$C'));print([r['seq_per_s'] for r in d['by_batch_size'] if r['batch_size']==1][0])")
SLO=$($PY -c "print(round(10*1000/$B1,1))")
R2X=$($PY -c "print(round(2*$CEIL,1))")
R10=$($PY -c "print(round(0.1*$CEIL,1))")
RN=$($PY -c "print(round(2*$B1,1))")
echo "ceiling=$CEIL batch1=$B1 slo=$SLO"
$PY -m servelab bench --variant thread_offloaded --rate $R2X --duration 20 --tag goals_breaker_on
$PY -m servelab bench --variant thread_offloaded --rate $R2X --duration 20 --tag goals_breaker_off --max-queue 0 --queue-timeout-ms 0
$PY -m servelab bench --variant thread_offloaded --rate $R10 --duration 30 --tag goals_low_load
$PY -m servelab bench --variant naive --rate $RN --duration 20 --tag goals_naive_overload
$PY -m servelab bench --variant thread_offloaded --find-max-rate --rate $R10 --slo-ms $SLO --duration 10 --max-queue 0 --queue-timeout-ms 0 --tag goals_maxrate
$PY -m servelab ceiling --out results/ceiling/goals-after.json
set +x
# Each run against both ceilings: the idle-core one (the old denominator) and its own bracket.
$PY - "$IDLE" <<'PY'
import json, sys
from pathlib import Path
idle = json.loads(Path(sys.argv[1]).read_text())["ceiling_seq_per_s"]
print(f"idle-core ceiling {idle:.1f} seq/s")
for run in sorted(Path("results/runs").glob("*_goals_*")):
    s = json.loads((run / "summary.json").read_text())
    b = (s.get("ceiling") or {}).get("bracket") or {}
    if not s.get("achieved_rate"):
        continue
    print(f"{run.name}: achieved {s['achieved_rate']:.1f}/s = {s['achieved_rate'] / idle:.2f} x idle-core ceiling, "
          f"{s['ceiling_ratio']:.2f} x bracket {b.get('before', 0):.1f} -> {b.get('after', 0):.1f}"
          f"{'  ABOVE: ' + b['note'] if b.get('above_ceiling') else ''}")
PY
