"""Pure functions over what a run left behind: a server's --trace batches, its /metrics text,
its manifest, and the client's request rows. The only I/O is reading the file a function is given
(and clear(), which empties a trace); no plotting (plots.py draws what these return)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from servelab.bench.stats import parse_metrics, percentile

# --- What a server saw: its trace, its metrics and its settings ------------------------------------


def read_trace(path: Path) -> list[dict]:
    """The --trace file: one dict per batch (times in the server's monotonic seconds)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def clear(path: Path) -> None:
    """Empty a trace file the server is still appending to (warm-up batches go away)."""
    Path(path).write_text("")


def first_waits_ms(batches: list[dict]) -> list[float]:
    """For each batch, how long its first request waited from arrival until the batch closed."""
    return [(b["closed"] - b["requests"][0]["arrived"]) * 1000 for b in batches]


def lag(before: str, after: str) -> dict:
    """The event-loop lag seen between two /metrics scrapes: how many stalls, their total, and
    the histogram bucket holding the longest one (lag is observed every 50 ms)."""
    b, a = parse_metrics(before), parse_metrics(after)
    name = "servelab_event_loop_lag_seconds"

    def delta(sample, labels=()):
        key = (sample, labels)
        return a.get(key, 0.0) - b.get(key, 0.0)

    buckets = sorted(
        (float(dict(labels)["le"]), delta(sample, labels))
        for sample, labels in a
        if sample == f"{name}_bucket"
    )
    longest_low, longest_high = 0.0, 0.0
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count > previous_count:
            longest_low, longest_high = previous_bound, bound
        previous_bound, previous_count = bound, count
    return {
        "observations": delta(f"{name}_count"),
        "total_lag_s": delta(f"{name}_sum"),
        "longest_lag_s_between": (longest_low, longest_high),
    }


def server_settings(run_dir: Path) -> str:
    """The batching and breaker settings a run's server had (from its manifest), in words."""
    settings = json.loads((Path(run_dir) / "manifest.json").read_text())["server"]["info"]["settings"]
    parts = []
    for key, name, unit in (("max_wait_ms", "wait", " ms"), ("max_batch_size", "cap", ""),
                            ("max_queue", "queue", ""), ("queue_timeout_ms", "timeout", " ms")):
        value = settings.get(key)
        if value is not None:
            parts.append(f"{name} {_fmt(float(value)) if value else 'off'}{unit if value else ''}")
    return ", ".join(parts) or "none"


def _fmt(v) -> str:
    """A number as written in labels: 20.0 as "20", 2.5 as "2.5"."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# --- Load results over time ----------------------------------------------------------------------


def per_second(rows: list[dict], slo_ms: float, bin_s: float = 1.0) -> list[dict]:
    """A run's requests (bench's requests.csv rows) by the second they were due: offered rate,
    goodput (200 within slo_ms), 503 and 504 rates, p50 and p99 of the successful requests."""
    if not rows:
        return []
    t0 = min(r["intended_send_s"] for r in rows)
    bins: dict[int, list[dict]] = {}
    for r in rows:
        bins.setdefault(int((r["intended_send_s"] - t0) // bin_s), []).append(r)
    out = []
    for k in range(max(bins) + 1):
        group = bins.get(k, [])
        ok = [r["latency_ms"] for r in group if r["status"] == 200]
        statuses = Counter(r["status"] for r in group)
        out.append({
            "t_s": k * bin_s,
            "offered_per_s": len(group) / bin_s,
            "ok_per_s": len(ok) / bin_s,
            "goodput_per_s": sum(1 for v in ok if v <= slo_ms) / bin_s,
            "503_per_s": statuses.get(503, 0) / bin_s,
            "504_per_s": statuses.get(504, 0) / bin_s,
            "other_errors_per_s": sum(v for s, v in statuses.items() if s not in (200, 503, 504)) / bin_s,
            "p50_ok_ms": percentile(ok, 50),
            "p99_ok_ms": percentile(ok, 99),
        })
    return out


def recovered_after(rows: list[dict], end_s: float, slo_ms: float) -> float | None:
    """Notebook 4: seconds after end_s until every later second's p99 of 200s is within slo_ms
    (per_second rows); None if that never happens before the run ends."""
    late = [r for r in rows if r["t_s"] >= end_s]
    for i, r in enumerate(late):
        if all(x["p99_ok_ms"] is not None and x["p99_ok_ms"] <= slo_ms for x in late[i:] if x["ok_per_s"]):
            return r["t_s"] - end_s
    return None
