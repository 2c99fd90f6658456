"""The numbers a run is judged by: percentiles, rates, goodput, and the max-sustainable-rate search.

Pure functions of the per-request rows, no I/O, so they are unit-tested on hand-made data
(tests/test_bench_stats.py): hand-written metric code is where benchmarks go wrong.

Conventions:
- Latency is measured from the request's intended send time (`latency_ms` in the rows).
- Percentiles interpolate linearly between the two nearest ranks (numpy's default), so
  percentile([1, 2, 3, 4], 50) == 2.5.
- A request is `ok` when its status is 200. Status 0 = no answer (transport error), -1 = still
  waiting when the load generator stopped: both are errors.
- Rates are per second of the run's span: from the first intended send to the last answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100), linear between closest ranks; None for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not in [0, 100]")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    """p50, p90, p99, max and mean of a list of latencies (all None when empty)."""
    out = {f"p{p}": percentile(latencies_ms, p) for p in PERCENTILES}
    out["max"] = max(latencies_ms) if latencies_ms else None
    out["mean"] = sum(latencies_ms) / len(latencies_ms) if latencies_ms else None
    return out


def p99_counting_errors(rows: Sequence[dict], p: float = 99) -> float:
    """The p-th percentile latency where an error counts as never answered (infinite latency).

    The max-sustainable-rate search uses this: a server that sheds 2% of requests with fast
    503s has no good p99, however quick its 503s.
    """
    if not rows:
        return math.inf
    values = [r["latency_ms"] if is_ok(r) else math.inf for r in rows]
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low, high = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    if math.isinf(high):
        return math.inf
    return low + (high - low) * (rank - math.floor(rank))


def is_ok(row: dict) -> bool:
    return row["status"] == 200


def span_s(rows: Sequence[dict]) -> float:
    """Seconds from the first intended send to the last answer (or send, if none answered)."""
    starts = [r["intended_send_s"] for r in rows]
    ends = [r["intended_send_s"] + r["latency_ms"] / 1000 for r in rows if r.get("latency_ms") is not None]
    ends += [r["actual_send_s"] for r in rows]
    return max(ends) - min(starts) if rows else 0.0


def summarize(rows: Sequence[dict], slo_ms: float, late_ms: float = 10.0) -> dict:
    """The summary of one load run from its per-request rows.

    rows: dicts with intended_send_s, actual_send_s, lateness_ms, latency_ms (None if no
    answer), status (int). slo_ms: the latency objective for goodput.
    """
    n = len(rows)
    ok = [r for r in rows if is_ok(r)]
    ok_latencies = [r["latency_ms"] for r in ok]
    within = sum(1 for v in ok_latencies if v <= slo_ms)
    seconds = span_s(rows)
    intended = [r["intended_send_s"] for r in rows]
    send_window = max(intended) - min(intended) if n > 1 else 0.0
    statuses = Counter(str(r["status"]) for r in rows if not is_ok(r))
    lateness = [r["lateness_ms"] for r in rows]
    p99_all = p99_counting_errors(rows)
    return {
        "requests": n,
        "ok": len(ok),
        "errors": n - len(ok),
        "error_fraction": (n - len(ok)) / n if n else 0.0,
        "errors_by_status": dict(sorted(statuses.items())),
        "span_s": seconds,
        # (n - 1) gaps between n sends: the rate the arrivals actually had.
        "sent_rate": (n - 1) / send_window if send_window > 0 else None,
        "achieved_rate": len(ok) / seconds if seconds > 0 else None,
        "latency_ms": latency_stats(ok_latencies),
        "p99_ms_counting_errors": None if math.isinf(p99_all) else p99_all,
        "slo_ms": slo_ms,
        "goodput_rate": within / seconds if seconds > 0 else None,
        "goodput_fraction": within / n if n else 0.0,
        "late_ms": late_ms,
        "late_sends": sum(1 for v in lateness if v > late_ms),
        "max_lateness_ms": max(lateness) if lateness else None,
    }


def batch_stats(before: dict, after: dict) -> dict:
    """Batching seen by the server between two /metrics scrapes (see parse_metrics).

    mean_batch_size = (sum of batch sizes) / (number of batches), from the histogram's deltas.
    """

    def delta(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta("servelab_batch_size_count")
    items = delta("servelab_batch_size_sum")
    compute_s = delta("servelab_batch_compute_seconds_sum")
    has_compute = any(name == "servelab_batch_compute_seconds_sum" for name, _ in after)
    reasons = Counter()
    statuses = Counter()
    for (name, labels), value in after.items():
        labels_dict = dict(labels)
        if name == "servelab_batches_total" and "close_reason" in labels_dict:
            reasons[labels_dict["close_reason"]] = value - before.get((name, labels), 0.0)
        if name == "servelab_requests_total" and "status" in labels_dict:
            statuses[labels_dict["status"]] = value - before.get((name, labels), 0.0)
    return {
        "batches": batches,
        "batched_items": items,
        "compute_s": compute_s if has_compute else None,
        "tokens": delta("servelab_batch_tokens_total", kind="real"),
        "padded_tokens": delta("servelab_batch_tokens_total", kind="padded"),
        "mean_batch_size": items / batches if batches else None,
        "mean_batch_compute_ms": compute_s / batches * 1000 if batches and has_compute else None,
        "batches_by_close_reason": {k: v for k, v in sorted(reasons.items()) if v},
        "server_requests_by_status": {k: v for k, v in sorted(statuses.items()) if v},
    }


def where_time_went(batching: dict, span_s: float) -> dict:
    """The two figures that explain a ratio to the ceiling (batching: from batch_stats).

    model_busy_fraction: the model's compute time over the run's wall time (first send to last
    answer); busy_seq_per_s: sequences per second of compute time. Achieved throughput is about
    their product, so a low ratio is either idling (busy fraction) or slow batches; padding_share
    (padded positions over all positions computed) says how much of the slowness is padding,
    and the rest is the HTTP path sharing the model's core.
    """
    compute_s, items = batching.get("compute_s"), batching.get("batched_items")
    padded, real = batching.get("padded_tokens"), batching.get("tokens")
    return {
        "model_busy_fraction": compute_s / span_s if compute_s is not None and span_s > 0 else None,
        "busy_seq_per_s": items / compute_s if compute_s and items else None,
        "padding_share": 1 - real / padded if padded else None,
    }


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {(sample name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


# --- The max-sustainable-rate search ------------------------------------------------------------


@dataclass
class SearchStep:
    rate: float
    p99_ms: float  # counting errors as infinite
    passed: bool
    detail: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    max_rate: float | None  # the highest rate that passed; None if none did
    lowest_failing_rate: float | None
    steps: list[SearchStep]

    def to_dict(self) -> dict:
        out = asdict(self)
        for step in out["steps"]:
            step["p99_ms"] = None if math.isinf(step["p99_ms"]) else step["p99_ms"]
        return out


def find_max_rate(
    measure: Callable[[float], tuple[float, dict]],
    slo_ms: float,
    start_rate: float,
    *,
    factor: float = 2.0,
    tolerance: float = 0.05,
    max_steps: int = 10,
    min_rate: float = 0.1,
) -> SearchResult:
    """The highest offered rate whose p99 latency stays under slo_ms, as MLPerf's Server scenario.

    measure(rate) runs the load at that open-loop rate and returns (p99_ms counting errors as
    infinite, detail dict). First bracket: from start_rate, multiply by `factor` while it passes,
    or divide while it fails; then bisect between the highest pass and the lowest fail until
    they are within `tolerance` (relative) or max_steps measurements are spent.
    """
    steps: list[SearchStep] = []

    def check(rate: float) -> bool:
        p99, detail = measure(rate)
        passed = p99 <= slo_ms
        steps.append(SearchStep(rate, p99, passed, detail))
        return passed

    low: float | None = None  # highest passing rate
    high: float | None = None  # lowest failing rate
    rate = start_rate
    while len(steps) < max_steps:
        if check(rate):
            low = rate
            if high is not None:
                break
            rate *= factor
        else:
            high = rate
            if low is not None:
                break
            rate /= factor
            if rate < min_rate:
                break
    while low is not None and high is not None and len(steps) < max_steps and (high - low) > tolerance * low:
        mid = (low + high) / 2
        if check(mid):
            low = mid
        else:
            high = mid
    return SearchResult(low, high, steps)


def flatten(summary: dict, prefix: str = "") -> dict:
    """{"latency_ms": {"p99": 5}} -> {"latency_ms.p99": 5}: one CSV column per number."""
    out = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            continue
        else:
            out[name] = value
    return out
