"""SLO-aware: thread_offloaded, with every batch planned against a latency objective.

thread_offloaded's knobs (a 2 ms wait, a cap of 16, a queue of 64) know nothing of time. Here one
number decides, --slo-ms, through a cost model t(b, L) = a + k*b*L of one forward pass over b
inputs padded to L tokens, refitted from the batches this server actually ran:

- sizing: a batch takes as many queued requests as can be answered while the oldest still meets
  the objective, unless answering the oldest 504 now lets more be answered on time over the
  next two batches (Clipper sizes batches against an objective too, by trial; this plans);
- sorting: the batch is sorted by length and cut into micro-batches wherever the padding saved
  pays for another forward pass (TEI batches by tokens for the same reason);
- admission: a request that would be answered past the objective gets 503 at once, with a
  Retry-After from the same prediction, and one that can no longer make it is answered 504
  rather than computed: no work that will certainly be late is done.

`--without sizing|sorting|admission` turns one part off, to measure what it is worth.

Run:    python server_variants/slo_aware.py --slo-ms 150
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
"""

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.costmodel import CostModel, OnlineCost, fit
from servelab.jobs import Job, JobQueue, QueueTimeout, WillBeLate
from servelab.metrics import PlanMetrics
from servelab.server import Server

VARIANT = "slo_aware"
DEFAULTS = {
    "max_batch_size": 256,
    "max_batch_size_help": "requests per planned batch at most (with --without sizing, the fixed cap)",
    "max_batch_tokens": 16384,
    "slo_headroom": 0.2,
    "slo_ms": None,
    # No queue limit and no fixed timeout: admission bounds the queue by predicted time, and the
    # objective is the queue timeout, as a backstop for a prediction that was wrong.
    "max_connections": 1000,
}
OBJECTIVE_PER_INPUT = 10  # default objective: 10x one input's measured time, as results/ judge it
MIN_DEFAULT_OBJECTIVE_MS = 20.0  # an HTTP round trip through Python takes a few ms whatever the model

MEASURED_SENTENCE = "the quick brown fox jumps over the lazy dog while a small bird sings"

log = logging.getLogger("slo_aware")


class Plan:
    """The objective, the cost model and the work already promised: what each decision reads."""

    def __init__(self, server: Server):
        settings = server.settings
        self.server, self.queue, self.model = server, server.queue, server.model
        self.max_batch_size, self.max_batch_tokens = settings.max_batch_size, settings.max_batch_tokens
        self.parts = {"sizing", "sorting", "admission"} - set(settings.without or [])
        self.cost: OnlineCost | None = None  # measured by start()
        self.slo_s = self.budget_s = self.serve_budget_s = math.inf
        self.busy_until = 0.0  # when the batch being computed is predicted to end
        # Recent padded/real tokens and requests per forward pass, for admission's estimate of
        # how the queue will be cut into passes.
        self.padding, self.per_pass = 1.0, 1.0
        self.metrics = PlanMetrics(server.metrics.registry)

    async def start(self) -> None:
        """Measure the model once: the first cost model, and the default objective."""
        settings = self.server.settings
        first, one_input_s = await asyncio.to_thread(measure_first_cost, self.model)
        if settings.slo_ms is None:
            measured_ms = round(OBJECTIVE_PER_INPUT * one_input_s * 1000, 1)
            settings.slo_ms = max(MIN_DEFAULT_OBJECTIVE_MS, measured_ms)
        self.slo_s = settings.slo_ms / 1000
        # The plan sees a request from when its headers are read to when its answer is set; the
        # client also waits for the rest (its request read, its answer written, both slower when
        # the loop is busy refusing an overload): 15 ms of 163 at 2x on the 2-core reference CPU.
        # Admission keeps the whole headroom: it predicts the queue ahead from averages. Once a
        # request is in, sizing times one pass of known lengths, and keeps half: a request is
        # given up only if it would be late even then.
        self.budget_s = self.slo_s * (1 - settings.slo_headroom)
        self.serve_budget_s = self.slo_s * (1 - settings.slo_headroom / 2)
        if settings.queue_timeout_ms is None:  # not given: the objective is the backstop (0 is off)
            self.queue.queue_timeout_s = self.slo_s
        self.cost = OnlineCost(first)
        self.metrics.objective.set(self.slo_s)
        log.info("objective %.0f ms (one input took %.1f ms at start-up); "
                 "t(b, L) = %.2f ms + %.2f us x b x L",
                 settings.slo_ms, one_input_s * 1000, first.a * 1000, first.k * 1e6)

    # -- admission: on the event loop, before a request is queued --------------------------

    def admit(self, job: Job) -> None:
        # Estimated, not tokenized: under overload most requests are refused, and on an accelerator
        # the tokenizer's time per request would come out of the one core that serves them all.
        # The worker counts exactly, once, for the batches it runs (count_tokens).
        job.tokens = self.model.estimate_tokens(job.text)
        if "admission" not in self.parts or self.cost is None:  # not measured yet: it waits
            return
        job.predicted_done = self.predicted_done(job)
        late_s = job.predicted_done - (job.arrived + self.budget_s)
        if late_s > 0:
            raise WillBeLate(
                f"it would be answered in {(job.predicted_done - job.arrived) * 1000:.0f} ms; the plan "
                f"allows {self.budget_s * 1000:.0f} ms of the {self.slo_s * 1000:.0f} ms objective",
                retry_after_s=max(1, math.ceil(late_s)),  # by then the work ahead has shrunk by late_s
            )

    def predicted_done(self, job: Job) -> float:
        """The batch being computed, then everything queued, then this job: all of it padded and
        cut into forward passes as recent batches were."""
        tokens = job.tokens + self.queue.waiting_tokens
        passes = math.ceil((self.queue.qsize() + 1) / self.per_pass)
        start = max(asyncio.get_running_loop().time(), self.busy_until)
        return start + passes * self.cost.model.a + self.cost.model.k * self.padding * tokens

    # -- sizing and sorting: by the worker, when the model is free -------------------------

    def seconds(self, passes: list[list[Job]]) -> float:
        """Predicted time to compute these passes, one after the other (inputs sorted by length)."""
        return sum(self.cost.seconds(len(part), max(j.tokens for j in part)) for part in passes)

    def late_even_alone(self, job: Job, now: float) -> bool:
        return now + self.cost.seconds(1, job.tokens) > job.arrived + self.serve_budget_s

    def size(self, jobs: list[Job], now: float) -> tuple[int, int]:
        """Of these queued jobs, oldest first: how many of the oldest to answer 504, and how many
        after them to compute. Two candidates, each timed as one pass (the best cut is never
        slower) within the batch limits:

        - the oldest first: the longest prefix whose pass ends within the oldest job's objective.
          It gives up no one, but once the queue falls behind, the oldest has little time left,
          so batches shrink, and small batches fall further behind. Where a pass costs nearly as
          much at any size (an accelerator), the server spirals down to batches of one or two.
        - the most on time: the prefix with the most answers predicted on time; the oldest that
          would be late in it are answered 504 now. It keeps batches large, but gives up the
          oldest even where a small batch for them, then one for the rest, would answer them all.

        So the oldest are given up only where that answers more on time over the next two
        batches. (BentoML cancels the head request whenever its fitted time says it will miss,
        without weighing what keeping it would cost the others.)"""
        _, late, size = self.most_on_time(jobs, now)
        if not late:  # the two rules agree: no one is given up
            return 0, size
        keep = self.oldest_first(jobs, now)  # 0: the oldest is late even alone
        if keep and (self.on_time_in_two_batches(jobs, now, 0, keep)
                     >= self.on_time_in_two_batches(jobs, now, late, size)):
            return 0, keep
        return late, size

    def passes_ending(self, jobs: list[Job], now: float) -> Iterator[tuple[int, float]]:
        """For each prefix of the queue within the batch limits: its size, and when its pass would end."""
        longest = 0
        for size in range(1, min(len(jobs), self.max_batch_size) + 1):
            longest = max(longest, jobs[size - 1].tokens)
            if size > 1 and size * longest > self.max_batch_tokens:
                return  # one input always fits: it is never longer than the model's maximum
            yield size, now + self.cost.seconds(size, longest)

    def oldest_first(self, jobs: list[Job], now: float) -> int:
        deadline = jobs[0].arrived + self.serve_budget_s
        return max((size for size, done in self.passes_ending(jobs, now) if done <= deadline), default=0)

    def most_on_time(self, jobs: list[Job], now: float) -> tuple[int, int, int]:
        """(answers on time, how many of the oldest would be late, how many after them are not)."""
        best, late = (0, 0, 1), 0
        for size, done in self.passes_ending(jobs, now):
            while late < size and jobs[late].arrived + self.serve_budget_s < done:
                late += 1  # deadlines come in queue order: the late ones are the oldest
            if size - late > best[0]:
                best = (size - late, late, size - late)
        return best

    def on_time_in_two_batches(self, jobs: list[Job], now: float, late: int, size: int) -> int:
        """Answers on time if jobs[late:late + size] are computed now, then the best batch of the rest."""
        batch, rest = jobs[late:late + size], jobs[late + size:]
        done = now + self.cost.seconds(size, max(job.tokens for job in batch))
        on_time = sum(job.arrived + self.serve_budget_s >= done for job in batch)
        return on_time + (self.most_on_time(rest, done)[0] if rest else 0)

    def split(self, jobs: list[Job]) -> list[list[Job]]:
        """Sorted by length, then cut where the padding saved is worth another pass: the cheapest
        cut into contiguous runs, by dynamic programming over the points where the length changes."""
        if "sorting" not in self.parts or len(jobs) == 1:
            return [jobs]
        jobs = sorted(jobs, key=lambda j: j.tokens)
        a, k = self.cost.model.a, self.cost.model.k
        ends = [i for i in range(1, len(jobs)) if jobs[i].tokens != jobs[i - 1].tokens] + [len(jobs)]
        best = {0: (0.0, 0)}  # end of a prefix -> (least time to compute it, where its last pass starts)
        for end in ends:
            longest = jobs[end - 1].tokens
            best[end] = min((best[start][0] + a + k * (end - start) * longest, start)
                            for start in best if start < end)
        passes, end = [], len(jobs)
        while end:
            start = best[end][1]
            passes.append(jobs[start:end])
            end = start
        return passes[::-1]  # shortest first: the shortest inputs are answered soonest

    def count_tokens(self, batch: list[Job]) -> None:
        for job, tokens in zip(batch, self.model.token_lengths([job.text for job in batch]), strict=True):
            job.tokens = tokens

    def observe(self, part: list[Job], seconds: float) -> None:
        """A forward pass ran: refit the cost model, and compare each answer with its prediction."""
        longest = max(j.tokens for j in part)
        self.cost.observe(len(part), longest, seconds)
        self.padding += 0.05 * (len(part) * longest / max(sum(j.tokens for j in part), 1) - self.padding)
        self.per_pass += 0.05 * (len(part) - self.per_pass)
        self.metrics.passes.inc()
        self.metrics.cost.labels("a_s").set(self.cost.model.a)
        self.metrics.cost.labels("k_s_per_token").set(self.cost.model.k)
        for job in part:
            if job.predicted_done is None or job.answered is None:
                continue
            self.metrics.predicted.observe(job.predicted_done - job.arrived)
            self.metrics.actual.observe(job.answered - job.arrived)
            if job.answered - job.arrived > self.slo_s:
                self.metrics.late.inc()


async def collect_batch(queue: JobQueue, plan: Plan) -> tuple[list[Job], str]:
    """The oldest jobs the plan can answer on time, as many as it can: see Plan.size."""
    loop = asyncio.get_running_loop()
    while True:
        oldest = await queue.get()
        now = loop.time()
        if "admission" in plan.parts and plan.late_even_alone(oldest, now):
            # It would be late even alone: answer now rather than compute an answer nobody can use.
            oldest.future.set_exception(QueueTimeout(
                f"waited {(now - oldest.arrived) * 1000:.0f} ms; computing it would pass the objective"))
            continue
        break
    queued = queue.waiting_jobs()
    if "sizing" not in plan.parts:
        late, size = 0, 1 + min(len(queued), plan.max_batch_size - 1)
    else:
        late, size = plan.size([oldest, *queued], now)
    for job in [oldest, *queued][:late]:
        outcome = QueueTimeout(f"waited {(now - job.arrived) * 1000:.0f} ms; it would be late in the "
                               f"batch that answers the most requests on time")
        if job is oldest:
            job.future.set_exception(outcome)  # already taken from the queue
        else:
            queue.drop(job, outcome)
    if late:  # the oldest were given up: the batch starts further down the queue
        batch = [queue.get_nowait() for _ in range(size)]
    else:
        batch = [oldest] + [queue.get_nowait() for _ in range(size - 1)]
    return batch, "planned" if late + size < 1 + len(queued) else "drained"


def measure_first_cost(model, repeats: int = 2) -> tuple[CostModel, float]:
    """Time one input of two lengths, and eight of the longer (after a warm-up call at each)."""
    words = MEASURED_SENTENCE.split()
    points = []
    for batch_size, length in ((1, 8), (1, 32), (8, 32)):
        text = " ".join(words[i % len(words)] for i in range(length))
        if model.mask_token:  # fill-mask needs its mask in every input
            text = f"{text} {model.mask_token}."
        texts = [text] * batch_size
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model.predict(texts)
            times.append(time.perf_counter() - start)
        points.append({"batch_size": batch_size, "tokens": model.token_lengths([text])[0],
                       "seconds": statistics.median(times[1:])})
    cost, _ = fit(points)
    return cost, points[1]["seconds"]


async def model_loop(server: Server) -> None:
    """The one worker that owns the model: plan a batch, run it pass by pass, answer each request."""
    server.starting = "measuring the model for the plan"  # /health: 503 until it is done
    plan = Plan(server)
    server.queue.admit = plan.admit  # every request is admitted or refused here, as it arrives
    await plan.start()
    server.starting = None
    loop = asyncio.get_running_loop()
    while True:
        batch, close_reason = await collect_batch(server.queue, plan)
        # Admission and sizing went by estimated lengths; sorting and the cost model need exact ones.
        await asyncio.to_thread(plan.count_tokens, batch)
        passes = plan.split(batch)
        plan.busy_until = loop.time() + plan.seconds(passes)
        for part in passes:
            start = server.begin_batch(part, close_reason)
            # In a worker thread, as in thread_offloaded: the loop keeps admitting and refusing.
            outcomes = await asyncio.to_thread(server.model.predict, [job.text for job in part])
            server.end_batch(part, outcomes, start)
            plan.observe(part, loop.time() - start.at)


# The request path and the app below are the same in every variant (tests/test_variants.py).


def build_app(server: Server) -> Starlette:
    async def predict(request: Request):
        """The guide's handler: queue this input, then wait for its own answer."""
        text = await server.read_input(request)  # 400 or 413, with a one-line reason
        job = server.enqueue(text)  # 503 at once if the server cannot take it
        return await server.answer(job, request)  # 200, or 500, 503 or 504

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # Starlette 1.x has no @app.on_event("startup"): the worker starts and stops here.
        async with server.running(model_loop):
            yield

    return Starlette(
        routes=[Route("/", predict, methods=["POST"]), *server.routes],
        lifespan=lifespan,
        middleware=server.middleware,
        exception_handlers=server.exception_handlers,
    )


if __name__ == "__main__":
    cli.main(VARIANT, __doc__, DEFAULTS, build_app)
