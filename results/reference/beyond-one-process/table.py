"""The side-by-side table of measure.sh's sweeps: python table.py FOLDER (results/sweeps).

The ratio is to the reference ceiling (the file measure.sh passes), not to each run's bracket of
quick ceilings: beside LitServe and Ray, whose idle processes poll and keep the server's core
busy, the bracket itself measured 20-25% low, and a ratio above 1 followed (README.md)."""

import csv
import sys
from pathlib import Path

SETTINGS = ["thread_offloaded", "multi_process-1", "multi_process-2", "litserve", "ray_serve"]


def number(row, key, fmt):
    value = row.get(key)
    return format(float(value), fmt) if value not in (None, "") else "-"


def ratio(row) -> str:
    if not row.get("achieved_rate") or not row.get("ceiling.value"):
        return "-"
    return f"{float(row['achieved_rate']) / float(row['ceiling.value']):.2f}"


def main(folder: Path) -> None:
    for device in ("cpu", "h200-bert-base"):
        print(f"\n{device}: answered/s (x ceiling) at 2x, p50 at 0.1x, statuses at 2x, "
              "server CPU per answer at 2x")
        for setting in SETTINGS:
            path = folder / f"beyond-{device}-{setting}.csv"
            if not path.is_file():
                continue
            rows = {r["rate"]: r for r in csv.DictReader(path.open())}
            low, high = rows.get("0.1x", {}), rows.get("2x", {})
            statuses = {k.removeprefix("errors_by_status."): v for k, v in high.items()
                        if k.startswith("errors_by_status.") and v}
            per_answer = "-"
            if high.get("server_cpu_share") and high.get("achieved_rate"):
                per_answer = f"{1e3 * float(high['server_cpu_share']) / float(high['achieved_rate']):.2f} ms"
            print(f"  {setting:18} {number(high, 'achieved_rate', '.1f'):>7} "
                  f"({ratio(high)})  "
                  f"p50 {number(low, 'latency_ms.p50', '.1f'):>6} ms  "
                  f"errors {statuses or '{}'}  CPU/answer {per_answer}  {high.get('failed') or ''}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/sweeps"))
