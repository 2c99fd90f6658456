"""The table of slo_aware against the others, from the runs measure.sh made (newest run of each tag).

    python results/reference/slo-cpu-2core/table.py [--tag slo] [--runs results/runs]
    python results/reference/slo-cpu-2core/table.py --runs results/reference/slo-cpu-2core   # curated

Ratios are to each run's own ceiling: the mean of the quick ceilings timed just before and after it
(its bracket), else the ceiling file. Wasted compute: the share of answers computed and sent
later than the objective (each answer costs the model about the same, so this is the share of its
work that bought nothing); refusals cost no model work at all in any of these variants.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CONTENDERS = ["slo_aware", "thread_offloaded", "thread_offloaded_tuned", "capped_batch"]


def newest(runs: Path, tag: str, name: str) -> dict | None:
    """The newest finished run called <time>_<variant>_<commit>_TAG_NAME, or the curated folder NAME."""
    found = [*sorted(runs.glob(f"*_{tag}_{name}")), runs / name]
    found = [p for p in found if (p / "summary.json").is_file()]
    return json.loads((found[-1] / "summary.json").read_text()) if found else None


def ceiling(s: dict) -> float:
    return s["achieved_rate"] / s["ceiling_ratio"] if s.get("ceiling_ratio") else s["ceiling_seq_per_s"]


def goodput(s: dict | None) -> str:
    return f"{s['goodput_rate'] / ceiling(s):.2f}" if s else "-"


def late_share(s: dict | None) -> str:
    if not s or not s["ok"]:
        return "-"
    on_time = s["goodput_fraction"] * s["requests"]
    return f"{(s['ok'] - on_time) / s['ok']:.1%}"


def refused(s: dict | None) -> str:
    return f"{s['error_fraction']:.0%}" if s else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="slo")
    parser.add_argument("--runs", type=Path, default=REPO / "results" / "runs")
    args = parser.parse_args()
    rows = ["| server | max rate, p99 <= objective | goodput 2x | goodput 4x | p50 at 10% | late answers 2x "
            "(wasted compute) | refused 2x |", "|---|---|---|---|---|---|---|"]
    for name in CONTENDERS:
        get = {load: newest(args.runs, args.tag, f"{name}_{load}")
               for load in ("maxrate", "2x", "4x", "low")}
        m = get["maxrate"]
        max_rate = (f"{m['max_sustainable_rate']:.1f}/s = {m['max_sustainable_rate'] / ceiling(m):.2f}"
                    if m and m.get("max_sustainable_rate") else "-")
        low = f"{get['low']['latency_ms']['p50']:.1f} ms" if get["low"] else "-"
        rows.append(f"| {name} | {max_rate} | {goodput(get['2x'])} | {goodput(get['4x'])} | {low} | "
                    f"{late_share(get['2x'])} | {refused(get['2x'])} |")
    rows += ["", "| slo_aware at 2x | achieved / ceiling | goodput / ceiling | padding | mean batch |",
             "|---|---|---|---|---|"]
    parts = ("sorting", "sizing", "admission")
    ablation = [("all parts", "slo_aware_2x")] + [(f"without {part}", f"without_{part}_2x") for part in parts]
    ablation.append(("without sizing nor sorting", "without_sizing_sorting_2x"))
    for label, name in ablation:
        s = newest(args.runs, args.tag, name)
        if s:
            rows.append(f"| {label} | {s['ceiling_ratio']:.2f} | {goodput(s)} | {s['padding_share']:.0%} | "
                        f"{s['mean_batch_size']:.1f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
