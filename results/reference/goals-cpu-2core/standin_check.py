"""Does the ceiling's stand-in for the load generator match the generator? Run from the repo root
after measure.sh (it reads the goals runs in results/runs/):

    .venv/bin/python results/reference/goals-cpu-2core/standin_check.py

1. CPU share: what Locust used during each run (first send to last answer), and what the
   stand-in really used when asked to replay it (both read from the OS with psutil).
2. Effect: quick ceilings with the generator's core idle, at Locust's largest measured share,
   and fully busy, in interleaved rounds (so drift hits each condition alike).
Writes standin_check.json beside this file.
"""

import json
import statistics
from pathlib import Path

from servelab.bench.bracket import QuickCeiling
from servelab.bench.machine import parse_cores

HERE = Path(__file__).resolve().parent
ROUNDS = 5

shares = []
for run in sorted(Path("results/runs").glob("*_goals_*")):
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    after = (manifest.get("quick_ceilings") or {}).get("after") or {}
    shares.append({"run": run.name, "offered_rate": summary.get("offered_rate"),
                   "locust_share": summary.get("loadgen_cpu_share"),
                   "stand_in_asked": after.get("loadgen_duty"), "stand_in_used": after.get("measured_duty")})
    print(f"{run.name}: Locust {summary.get('loadgen_cpu_share') or 0:.3f} of its core; "
          f"stand-in asked {after.get('loadgen_duty') or 0:.3f}, used {after.get('measured_duty') or 0:.3f}")

locust = max((s["locust_share"] or 0 for s in shares), default=0.08)
duties = {"idle": 0.0, "Locust's largest share": round(locust, 3), "fully busy": 1.0}
rates: dict[str, list[float]] = {name: [] for name in duties}
with QuickCeiling(model=None, task=None, device="cpu", torch_threads=1, cores=parse_cores("auto", "server"),
                  loadgen_cores=parse_cores("auto", "locust"), batch_sizes=(4, 8, 16), seconds=3.0) as quick:
    for _ in range(ROUNDS):
        for name, duty in duties.items():
            rates[name].append(quick.measure(duty)["seq_per_s"])
effect = {name: {"duty": duties[name], "median_seq_per_s": statistics.median(values), "rounds": values}
          for name, values in rates.items()}
for name, row in effect.items():
    low, high = min(row["rounds"]), max(row["rounds"])
    print(f"{name:24} duty {row['duty']:.3f}: median {row['median_seq_per_s']:.1f} seq/s over {ROUNDS} "
          f"rounds ({low:.1f}-{high:.1f})")
(HERE / "standin_check.json").write_text(json.dumps({"cpu_share": shares, "effect": effect}, indent=2) + "\n")
