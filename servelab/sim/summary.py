"""A simulated run's summary, in the schema of a measured one (servelab/bench/stats.py), so the
same tables, plots and comparisons take both."""

from __future__ import annotations

from collections.abc import Sequence

from servelab.bench import stats
from servelab.sim.engine import Outcome

# As the load generator's defaults (loadtests/_options.py): past these, a client has given up.
DRAIN_S = 30.0
REQUEST_TIMEOUT_S = 60.0


def request_rows(outcome: Outcome, intended: Sequence[float] | None = None, *,
                 drain_s: float = DRAIN_S, request_timeout_s: float = REQUEST_TIMEOUT_S) -> list[dict]:
    """One row per request, as the load generator writes them. Latency counts from the intended
    send (`intended`, default: the arrival), as in a measured run; an answer later than the
    client's timeout is status 0, and one after the drain is status -1 (still waiting)."""
    arrivals = outcome.arrivals
    intended = arrivals if intended is None else intended
    stop = max(intended) + drain_s if len(arrivals) else 0.0
    rows = []
    for sent, arrived, served, latency in zip(intended, arrivals, outcome.status, outcome.latency_s,
                                             strict=True):
        status, answered = served, arrived + latency
        if latency > request_timeout_s:
            status, answered = 0, arrived + request_timeout_s
        if answered > stop:
            status, answered = -1, None
        rows.append({"intended_send_s": sent, "actual_send_s": arrived,
                     "lateness_ms": (arrived - sent) * 1000, "status": status,
                     "latency_ms": None if answered is None else (answered - sent) * 1000})
    return rows


def summarize(outcome: Outcome, slo_ms: float, intended: Sequence[float] | None = None, **limits) -> dict:
    """The bench's summary fields (rates, percentiles, goodput, errors, batching, where the
    model's time went) for a simulated run."""
    summary = stats.summarize(request_rows(outcome, intended, **limits), slo_ms)
    sizes, lengths = outcome.batch_sizes, outcome.batch_lengths
    batches, items = len(sizes), sum(sizes)
    padded = sum(b * length for b, length in zip(sizes, lengths, strict=True))
    summary |= {
        "batches": batches,
        "batched_items": items,
        "compute_s": outcome.compute_s,
        "tokens": outcome.real_tokens,
        "padded_tokens": padded,
        "mean_batch_size": items / batches if batches else None,
        "mean_batch_compute_ms": outcome.compute_s / batches * 1000 if batches else None,
        "batches_by_close_reason": dict(sorted(outcome.close_reasons.items())),
    }
    span = summary["span_s"]
    device_busy = outcome.device_s / span if span > 0 and outcome.device_s else None
    return summary | stats.where_time_went(summary, span) | {"device_busy_fraction": device_busy}
