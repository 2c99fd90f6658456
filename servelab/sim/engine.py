"""The event-by-event replay of one model worker, its queue and its breaker.

There is one worker and one FIFO queue, so the simulation needs no general event list: the
worker's clock only moves forward, to the next arrival or to its own deadline, and arrivals that
come while it computes are admitted (or refused) in order when it finishes. That is exact for a
single FIFO worker, and it runs about a million requests in a few seconds, several times faster
than the same model written as SimPy processes (measured in tests/test_sim.py's notes and the
closing note of issue 9).

Where the time goes, per batch of b requests padded to L tokens (servelab/costmodel.BatchCost):
- host(b, L): the pipeline's own CPU work; on a CPU device, the forward pass too.
- device(b, L): the forward pass on an accelerator, a wait that holds neither core nor GIL.
- http_s per request: the HTTP path (parse, queue, answer, JSON), on the server's one core.
A request is answered when its batch's pipeline call returns plus its own HTTP time. The worker
is busy for host + device + b * http_s, except on a thread-offloaded server, where the event loop
does the HTTP work while the device computes: host + max(device, b * http_s). On a blocking
server, requests that arrive while the model runs are not even read until it returns.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from servelab.costmodel import BatchCost
from servelab.sim.policy import Policy

ANSWERED, REFUSED, TIMED_OUT = 200, 503, 504


@dataclass
class Outcome:
    """Per request: its status and seconds from arrival to answer; per batch: what ran."""

    arrivals: Sequence[float]
    status: list[int]
    latency_s: list[float]
    batch_sizes: list[int] = field(default_factory=list)
    batch_lengths: list[int] = field(default_factory=list)  # padded length of each batch
    close_reasons: Counter = field(default_factory=Counter)
    compute_s: float = 0.0  # time inside pipeline calls, as a server's /metrics counts it
    real_tokens: int = 0
    end_s: float = 0.0  # the last answer


def simulate(arrivals: Sequence[float], lengths: Sequence[int], policy: Policy, cost: BatchCost,
             http_s: float) -> Outcome:
    """Serve requests arriving at `arrivals` (seconds, ascending), request i being lengths[i]
    tokens long, with `policy`, batch times from `cost` and http_s of HTTP work per request."""
    n = len(arrivals)
    if len(lengths) != n:
        raise ValueError(f"{n} arrivals but {len(lengths)} lengths")
    status = [0] * n
    latency = [0.0] * n
    out = Outcome(arrivals, status, latency)
    admitted_at = [0.0] * n  # when the event loop queued it: a queue timeout counts from there
    queue: deque[int] = deque()
    max_queue, timeout = policy.max_queue, policy.queue_timeout_s
    cap = policy.max_batch_size or n
    wait = policy.max_wait_s
    next_arrival = 0  # index of the first request not yet seen by the server

    def expire(now: float) -> None:
        # One timeout for all, so jobs expire in queue order: only the head can be due.
        while queue and admitted_at[queue[0]] + timeout <= now:
            j = queue.popleft()
            status[j] = TIMED_OUT
            latency[j] = admitted_at[j] + timeout - arrivals[j]

    def admit(until: float, seen_at: float | None = None) -> None:
        """Queue or refuse every arrival up to `until`. seen_at: when a blocked event loop
        finally reads them (None: each is read when it arrives)."""
        nonlocal next_arrival
        while next_arrival < n and arrivals[next_arrival] <= until:
            i = next_arrival
            next_arrival += 1
            now = arrivals[i] if seen_at is None else seen_at
            if timeout is not None:
                expire(now)
            if max_queue is not None and len(queue) >= max_queue:
                status[i] = REFUSED
                latency[i] = now - arrivals[i] + http_s
            else:
                admitted_at[i] = now
                queue.append(i)

    now = 0.0
    while True:
        if timeout is not None:
            expire(now)
        if not queue:  # idle: the next arrival starts the next batch
            if next_arrival >= n:
                break
            now = max(now, arrivals[next_arrival])
            admit(now)
            continue
        batch = [queue.popleft()]
        deadline = now + wait
        while True:
            if len(batch) >= cap:
                reason = "size_cap"
                break
            if timeout is not None:
                expire(now)
            if queue:  # already queued: joins at once
                batch.append(queue.popleft())
                continue
            limit = now + wait if policy.wait_restarts else deadline
            if next_arrival < n and arrivals[next_arrival] <= limit and wait > 0:
                now = arrivals[next_arrival]
                admit(now)
                continue
            if wait <= 0:
                reason = "drained"
            else:
                reason = "get_timeout" if policy.wait_restarts else "deadline"
                now = limit
            break
        b = len(batch)
        length = max(lengths[j] for j in batch)
        host, device = cost.host_s(b, length), cost.device_s(b, length)
        answered = now + host + device + http_s
        for j in batch:
            status[j] = ANSWERED
            latency[j] = answered - arrivals[j]
        out.batch_sizes.append(b)
        out.batch_lengths.append(length)
        out.close_reasons[reason] += 1
        out.compute_s += host + device
        out.real_tokens += sum(lengths[j] for j in batch)
        out.end_s = max(out.end_s, answered)
        http = b * http_s
        now += host + (max(device, http) if policy.offloaded else device + http)
        admit(now, seen_at=None if policy.offloaded else now)
    return out
