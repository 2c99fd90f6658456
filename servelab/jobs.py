"""Jobs and the queue that feeds the model worker.

A job is one accepted request: its input, its arrival time and a future that will hold its one
answer. The queue is an asyncio.Queue of jobs with two additions the circuit breaker needs:
a length limit (503 at once when full) and a per-job timer (504 at the timeout, even while the
model is busy: a timer, not a check made at dequeue). A job that times out or whose client
leaves stays in the underlying queue but is skipped when taken, so it is never computed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


class QueueFull(Exception):
    """No room: the request gets 503 at once."""


class WillBeLate(QueueFull):
    """Admitted, this request would finish past the latency objective: 503 at once, with a
    Retry-After from the same prediction (slo_aware's admission)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """The job waited longer than --queue-timeout-ms without being started: 504."""


class ServiceUnavailable(Exception):
    """The server is shutting down, or its model loop has died: 503."""


_ids = itertools.count(1)
_id_prefix = os.urandom(3).hex()


def new_request_id() -> str:
    return f"{_id_prefix}-{next(_ids):07d}"


@dataclass(eq=False)
class Job:
    text: str
    future: asyncio.Future
    arrived: float  # loop.time() when the server began reading the request
    id: str = field(default_factory=new_request_id)
    tokens: int = 0  # its input's length in tokens, where a variant plans by length
    predicted_done: float | None = None  # when the plan expected to answer it, where there is one
    started: float | None = None  # when the model worker took it
    answered: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        return self.started is None and not self.future.done()


class _Jobs(asyncio.Queue):
    """asyncio.Queue, and a look at what is queued (as its own subclasses use self._queue)."""

    def queued(self) -> Iterator[Job]:
        return iter(self._queue)


class JobQueue:
    """FIFO of jobs. `get`, `get_nowait`, `empty` and `qsize` behave like asyncio.Queue's.

    admit: called with each new job before it is queued; it may raise QueueFull (or WillBeLate)
    to refuse it. Where a variant plans (slo_aware), it is the admission rule.
    """

    def __init__(self, max_queue: int | None = None, queue_timeout_s: float | None = None):
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.admit: Callable[[Job], None] | None = None  # set by the variant's model loop
        self._jobs: _Jobs = _Jobs()
        self._waiting = 0  # jobs in _jobs still to be started: the breaker's signal
        self.waiting_tokens = 0  # their tokens, where the admit hook counted them: a planner's signal

    def qsize(self) -> int:
        return self._waiting

    def empty(self) -> bool:
        return self._waiting == 0

    def put(self, text: str, arrived: float | None = None, tokens: int = 0) -> Job:
        """Accept a job, or raise QueueFull when max_queue jobs are already waiting.

        arrived: when the server began reading the request (loop.time(); default: now). The queue
        timeout counts from there, so time spent reading and parsing under a burst counts too;
        a request already past it raises QueueTimeout here, and is never queued.
        tokens: its length in tokens, where the caller has counted them (or the admit hook may)."""
        if self.max_queue is not None and self._waiting >= self.max_queue:
            raise QueueFull(f"{self._waiting} requests are already waiting")
        loop = asyncio.get_running_loop()
        now = loop.time()
        arrived = now if arrived is None else arrived
        if self.queue_timeout_s is not None and now - arrived >= self.queue_timeout_s:
            raise QueueTimeout(f"waited {(now - arrived) * 1000:.0f} ms before it could even be queued")
        job = Job(text, loop.create_future(), arrived, tokens=tokens)
        if self.admit:
            self.admit(job)
        if self.queue_timeout_s is not None:
            job.timer = loop.call_at(arrived + self.queue_timeout_s, self._expire, job)
        self._waiting += 1
        self.waiting_tokens += job.tokens
        self._jobs.put_nowait(job)
        return job

    async def get(self) -> Job:
        # Give the event loop a few turns first. asyncio.Queue.get on a non-empty queue never
        # yields, so a worker on the event loop would hold every answer it has set (and every
        # new request) until the queue drains: a burst of 50 would all be answered at the end.
        # Two turns let a handler wake from its future and write its response; three is slack.
        for _ in range(3):
            await asyncio.sleep(0)
        while True:
            job = await self._jobs.get()
            if job.waiting:
                return self._start(job)

    def waiting_jobs(self) -> list[Job]:
        """The jobs still to be started, oldest first (without taking them)."""
        return [job for job in self._jobs.queued() if job.waiting]

    def get_nowait(self) -> Job:
        while True:
            job = self._jobs.get_nowait()  # raises asyncio.QueueEmpty
            if job.waiting:
                return self._start(job)

    def drop(self, job: Job, outcome: BaseException) -> bool:
        """Take a job out before it starts (timeout, client gone, shutdown). False if too late."""
        if not job.waiting:
            return False
        self._waiting -= 1
        self.waiting_tokens -= job.tokens
        if job.timer:
            job.timer.cancel()
        job.future.set_exception(outcome)
        return True

    def drop_all(self, outcome: BaseException) -> int:
        dropped = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except asyncio.QueueEmpty:
                return dropped
            dropped += self.drop(job, outcome)

    def _start(self, job: Job) -> Job:
        self._waiting -= 1
        self.waiting_tokens -= job.tokens
        if job.timer:
            job.timer.cancel()
        job.started = asyncio.get_running_loop().time()
        return job

    def _expire(self, job: Job) -> None:
        waited_ms = (asyncio.get_running_loop().time() - job.arrived) * 1000
        self.drop(job, QueueTimeout(f"waited {waited_ms:.0f} ms in the queue without being started"))
