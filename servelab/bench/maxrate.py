"""The highest open-loop rate a server sustains within its latency objective (MLPerf's server
scenario): a search over load steps, each a full measurement of the running Bench."""

from __future__ import annotations

import math
from pathlib import Path

from servelab.bench import stats
from servelab.bench.loadgen import Load


def search(bench, load: Load, out_dir: Path, *, start_rate: float | None = None, max_steps: int = 8,
           tolerance: float = 0.05) -> dict:
    """Steps of `load` at chosen rates against `bench` (a started servelab.bench.run.Bench) until
    the highest rate whose p99, errors counting as misses, meets bench.setup.slo_ms is found."""
    if start_rate is None:
        if load.scenario == "open" and load.rate:
            start_rate = load.rate
        else:
            start_rate = 0.5 * bench.ceiling.value if bench.ceiling else 10.0
    summaries: list[tuple[float, Path, dict]] = []

    def measure_at(rate: float) -> tuple[float, dict]:
        step_dir = Path(out_dir) / "steps" / f"{len(summaries):02d}_rate_{rate:.2f}"
        summary = bench.measure(load.at_rate(rate), step_dir)
        late = late_share(summary)
        if late > 0.01:
            # Most often a neighbour's blip on the generator's core (at 9 requests a second, one
            # late send in a 10 s step is 1.1%): measure the rate once more before giving it up,
            # since a step that says nothing would count as a failure and end the search low.
            bench.progress(f"  rate {rate:8.2f}/s: the load generator was late on {late:.1%} of its "
                           "sends; measuring it again")
            step_dir = step_dir.with_name(step_dir.name + "_again")
            summary = bench.measure(load.at_rate(rate), step_dir)
            late = late_share(summary)
        summaries.append((rate, step_dir, summary))
        p99 = summary["p99_ms_counting_errors"]
        detail = {
            "dir": str(step_dir),
            "achieved_rate": summary["achieved_rate"],
            "error_fraction": summary["error_fraction"],
            "late_fraction": late,
        }
        bench.progress(
            f"  rate {rate:8.2f}/s: p99 {p99 if p99 is not None else math.inf:9.1f} ms, "
            f"achieved {summary['achieved_rate'] or 0:7.2f}/s, errors {summary['error_fraction']:.1%}"
        )
        if late > 0.01:  # the generator could not keep its schedule: this point says nothing
            detail["invalid"] = "load generator late on more than 1% of sends"
            return math.inf, detail
        return (math.inf if p99 is None else p99), detail

    result = stats.find_max_rate(measure_at, bench.setup.slo_ms, start_rate, max_steps=max_steps,
                                 tolerance=tolerance)
    best = next(((s, d) for r, d, s in summaries if r == result.max_rate), (None, None))
    return {
        "max_sustainable_rate": result.max_rate,
        "lowest_failing_rate": result.lowest_failing_rate,
        "search": result.to_dict()["steps"],
        "best": best[0],
        "best_dir": best[1],
    }


def late_share(summary: dict) -> float:
    """The share of sends the load generator made behind its schedule."""
    return summary["late_sends"] / max(1, summary["requests"])
