"""The event-by-event replay of one model worker, its queue and its breaker.

There is one worker and one FIFO queue, so the simulation needs no general event list: the
worker's clock only moves forward, to the next arrival or to its own deadline, and arrivals that
come while it computes are admitted (or refused) in order when it finishes. That is exact for a
single FIFO worker, and it runs a million requests in about two seconds, several times faster
than the same worker written as SimPy processes (results/reference/sim-vs-measured/simpy_speed.py
times both).

Where the time goes, per batch of b requests padded to L tokens (servelab/costmodel.BatchCost):
- host(b, L): the pipeline's own CPU work; on a CPU device, the forward pass too.
- device(b, L): the forward pass on an accelerator, a wait that holds neither core nor GIL.
- the server's own work outside the pipeline (HttpCost): per batch, per request answered, and
  per request refused (a 503 or 504 is parsed and answered on the same core).
The worker is busy for the sum: one core does it all, one piece after the other. A request is
answered when its batch's pipeline call returns, plus its own HTTP time.

What thread offloading changes is when the server *reads* requests, not how fast it computes:
on a blocking server, requests that arrive while the model runs are not even read (nor refused,
nor timed out) until it returns; an offloaded one takes them in as they come, and pays for each
hand-over to the worker thread and back. One might expect the event loop to do its HTTP work
during an accelerator's wait, for free. Measured on one core, it barely does
(results/reference/sim-vs-measured/): the loop rarely has that work ready during the wait, and
when it has, the worker thread then waits for the GIL (CPython hands it over every 5 ms,
sys.getswitchinterval()). So the simulator counts no such overlap; the calibration's
thread_offloaded run measures what offloading costs.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from servelab.costmodel import BatchCost
from servelab.sim.plan import SloPlan
from servelab.sim.policy import Policy

ANSWERED, REFUSED, TIMED_OUT = 200, 503, 504


@dataclass(frozen=True)
class HttpCost:
    """The server's own work outside the pipeline call, measured (servelab/sim/calibration.py)."""

    per_request_s: float  # parse, queue, answer, JSON, for each request answered
    per_batch_s: float = 0.0  # the worker's own turn per batch: collecting, metrics, waking handlers
    per_refusal_s: float = 0.0  # a 503 or 504: parsed and answered on the same core
    offload_s: float = 0.0  # thread-offloaded servers: handing each batch to a thread and back
    idle_extra_s: float = 0.0  # latency only: the client's own time, a cold core's slower start

    def to_dict(self) -> dict:
        return asdict(self)


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
    device_s: float = 0.0  # of which the accelerator's own (0 when the CPU is the device)
    real_tokens: int = 0
    end_s: float = 0.0  # the last answer


def simulate(arrivals: Sequence[float], lengths: Sequence[int], policy: Policy, cost: BatchCost,
             http: HttpCost | float) -> Outcome:
    """Serve requests arriving at `arrivals` (seconds, ascending), request i being lengths[i]
    tokens long, with `policy`, batch times from `cost` and the server's own work from `http`
    (a number: seconds per request, nothing per batch). A planned policy (slo_aware) batches
    and admits by servelab/sim/plan.py instead of by a wait and a cap."""
    if not isinstance(http, HttpCost):
        http = HttpCost(float(http))
    plan = SloPlan.for_policy(policy, cost, lengths) if policy.planned else None
    http_s, refusal_s = http.per_request_s, http.per_refusal_s
    n = len(arrivals)
    if len(lengths) != n:
        raise ValueError(f"{n} arrivals but {len(lengths)} lengths")
    status = [0] * n
    latency = [0.0] * n
    out = Outcome(arrivals, status, latency)
    admitted_at = [0.0] * n  # when the event loop queued it: a queue timeout counts from there
    queue: deque[int] = deque()
    max_queue, timeout = policy.max_queue, policy.queue_timeout_s
    if plan and timeout is None:  # slo_aware: the objective is the queue timeout, as a backstop
        timeout = plan.slo_s
    queued_tokens = 0  # of the requests in the queue: what admission reads
    busy_until = 0.0  # when the batch being computed is predicted to end
    cap = policy.max_batch_size or n
    wait = policy.max_wait_s
    next_arrival = 0  # index of the first request not yet seen by the server
    refused_work = 0.0  # HTTP seconds spent on 503s and 504s, not yet taken off the worker's time

    def expire(now: float) -> None:
        # One timeout for all, so jobs expire in queue order: only the head can be due.
        nonlocal refused_work, queued_tokens
        while queue and admitted_at[queue[0]] + timeout <= now:
            j = queue.popleft()
            queued_tokens -= lengths[j]
            status[j] = TIMED_OUT
            latency[j] = admitted_at[j] + timeout - arrivals[j]
            refused_work += refusal_s

    def admit(until: float, seen_at: float | None = None) -> None:
        """Queue or refuse every arrival up to `until`. seen_at: when a blocked event loop
        finally reads them (None: each is read when it arrives)."""
        nonlocal next_arrival, refused_work, queued_tokens
        while next_arrival < n and arrivals[next_arrival] <= until:
            i = next_arrival
            next_arrival += 1
            now = arrivals[i] if seen_at is None else seen_at
            if timeout is not None:
                expire(now)
            full = max_queue is not None and len(queue) >= max_queue
            if full or (plan and plan.refuses(arrivals[i], now, busy_until, len(queue), queued_tokens,
                                              lengths[i])):
                status[i] = REFUSED
                latency[i] = now - arrivals[i] + refusal_s
                refused_work += refusal_s
            else:
                admitted_at[i] = now
                queue.append(i)
                queued_tokens += lengths[i]

    def take_waited(now: float) -> tuple[list[int], str, float]:
        """The other variants' collect_batch: the oldest request, then whatever is queued or
        arrives before the wait ends, up to the cap. Returns the batch, why it closed, and when."""
        nonlocal queued_tokens
        batch = [queue.popleft()]
        queued_tokens -= lengths[batch[0]]
        deadline = now + wait
        while True:
            if len(batch) >= cap:
                return batch, "size_cap", now
            if timeout is not None:
                expire(now)
            if queue:  # already queued: joins at once
                batch.append(queue.popleft())
                queued_tokens -= lengths[batch[-1]]
                continue
            limit = now + wait if policy.wait_restarts else deadline
            if next_arrival < n and arrivals[next_arrival] <= limit and wait > 0:
                now = arrivals[next_arrival]
                admit(now)
                continue
            if wait <= 0:
                return batch, "drained", now
            return batch, "get_timeout" if policy.wait_restarts else "deadline", limit

    def take_planned(now: float) -> tuple[list[int], str | None]:
        """slo_aware's collect_batch: the oldest request (a 504 now if it is late even alone),
        then the prefix of the queue that answers the most on time; the oldest that would be late
        in it get their 504 now."""
        nonlocal refused_work, queued_tokens

        def time_out(j: int) -> None:
            nonlocal refused_work, queued_tokens
            queued_tokens -= lengths[j]
            status[j] = TIMED_OUT
            latency[j] = now - arrivals[j] + refusal_s
            refused_work += refusal_s

        oldest = queue[0]
        if "admission" in plan.parts and plan.late_even_alone(lengths[oldest], arrivals[oldest], now):
            time_out(queue.popleft())
            return [], None
        if "sizing" not in plan.parts:
            late, size = 0, min(len(queue), plan.max_batch_size)
        else:
            considered = list(itertools.islice(queue, plan.max_batch_size))
            late, size = plan.size([lengths[j] for j in considered], [arrivals[j] for j in considered], now)
        for _ in range(late):
            time_out(queue.popleft())
        batch = [queue.popleft() for _ in range(size)]
        queued_tokens -= sum(lengths[j] for j in batch)
        return batch, "planned" if queue else "drained"

    now = 0.0
    while True:
        if timeout is not None:
            expire(now)
        if not queue:  # idle: the next arrival starts the next batch
            if next_arrival >= n:
                break
            idle = arrivals[next_arrival] - now
            if idle > 0:  # the refusals' work was done while the worker waited
                refused_work = max(0.0, refused_work - idle)
                now = arrivals[next_arrival]
            admit(now)
            continue
        if plan:
            batch, reason = take_planned(now)
            if not batch:
                continue
            passes = [[batch[i] for i in part] for part in plan.split([lengths[j] for j in batch])]
            busy_until = now + plan.seconds([[lengths[j] for j in part] for part in passes])
        else:
            batch, reason, now = take_waited(now)
            passes = [batch]
        offload = http.offload_s if policy.offloaded else 0.0
        for part in passes:  # one pipeline call per pass; a request is answered when its pass ends
            b = len(part)
            length = max(lengths[j] for j in part)
            host, device = cost.host_s(b, length), cost.device_s(b, length)
            # Its own HTTP work and the worker's turn are in every answer's time; so is
            # idle_extra_s, measured at light load, where it matters (under load, queueing dwarfs it).
            answered = now + http.per_batch_s + host + device + offload + http_s + http.idle_extra_s
            for j in part:
                status[j] = ANSWERED
                latency[j] = answered - arrivals[j]
            out.batch_sizes.append(b)
            out.batch_lengths.append(length)
            out.close_reasons[reason] += 1
            out.compute_s += host + device
            out.device_s += device
            out.real_tokens += sum(lengths[j] for j in part)
            out.end_s = max(out.end_s, answered)
            own = http.per_batch_s + b * http_s + refused_work
            refused_work = 0.0
            now += host + device + offload + own
            if plan:
                plan.observe([lengths[j] for j in part])
        admit(now, seen_at=None if policy.offloaded else now)
    return out
