"""The plumbing around one model worker: admission, answers, health, info, metrics, shutdown.

A variant file owns the ideas (how a batch is formed, where the model runs); `Server` owns what
every variant does the same way, so that a diff between two variants shows one idea.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servelab import allocator, jobs
from servelab.jobs import Job, JobQueue, QueueFull, QueueTimeout, ServiceUnavailable, new_request_id
from servelab.metrics import Metrics
from servelab.models import BadInput
from servelab.versions import SERVING, versions

log = logging.getLogger("servelab.server")
# When the application began on the current request (loop.time(): uvicorn has parsed its
# headers), set by CountStatuses, our first middleware, for the queue timeout to count from. A
# context variable: the handler runs in the task that set it, and the variants' request path
# stays `server.enqueue(text)`.
ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrived", default=None)

LOOP_LAG_PERIOD_S = 0.05
SHUTDOWN_GRACE_S = 2.0  # on SIGTERM, queued requests have this long to be answered, then get 503
# A refused body is still read, and dropped, up to this much or this long before the 413: a client
# that sends its whole body before reading (urllib, most libraries) would otherwise get a reset.
DRAIN_BYTES = 16 << 20
DRAIN_S = 2.0
MAX_HEADER_BYTES = 16 << 10  # all header names and values together: past it, 431
MAX_HEADERS = 100


@dataclass(frozen=True)
class BatchStart:
    at: float
    close_reason: str


class RequestError(Exception):
    """A request refused before or instead of an answer, with its status and one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None,
                 request_id: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}
        self.request_id = request_id  # the job's id once it has one, so that logs and client agree


class Server:
    """One process's serving state: settings, the one model copy, its queue and its metrics."""

    def __init__(self, variant: str, settings: Any, model: Any = None):
        self.variant = variant
        self.settings = settings
        self.model = model
        self.queue: JobQueue | None = None
        self.metrics = Metrics(lambda: self.queue.qsize() if self.queue else 0)
        self.closing = False
        self.loop_task: asyncio.Task | None = None
        self.loop_error: str | None = None
        self.starting: str | None = None  # why /health is not ready yet (a variant measuring its model)
        self.batch_count = 0
        self.running_batch: list[Job] = []  # started, not yet answered: a dying loop must answer them
        self.mean_batch_size = 1.0
        self.mean_batch_seconds = 0.0
        self._trace = None
        self.open_connections: Callable[[], int] = lambda: 0  # set by cli.DrainingServer

    # -- start-up and shutdown ------------------------------------------------------------

    def load_model(self) -> None:
        """Load the one model copy. Called before serving, so a bad --model is one clear line."""
        from servelab.models import load_model

        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        s = self.settings
        if getattr(s, "mmap_threshold_kb", 0):
            allocator.fix_mmap_threshold(s.mmap_threshold_kb * 1024)
        self.model = load_model(s.model, s.task, s.device, s.online)

    @contextlib.asynccontextmanager
    async def running(self, model_loop: Callable[[Server], Awaitable[None]]):
        """Lifespan: start the model worker, and on exit answer whatever still waits with 503."""
        s = self.settings
        timeout_s = s.queue_timeout_ms / 1000 if s.queue_timeout_ms else None
        self.queue = JobQueue(s.max_queue or None, timeout_s)  # 0 turns a limit off
        if s.trace:
            # Opened once, before the server takes requests; closed when the loop ends.
            self._trace = open(s.trace, "a", buffering=1)  # noqa: ASYNC230, SIM115
        # Everything loaded so far (torch, transformers, the model: hundreds of thousands of
        # objects) lives as long as the process. Frozen, the cyclic GC never walks it again;
        # otherwise a burst of requests triggers full collections that stall the event loop
        # for 150-200 ms, and a 504 due at 200 ms reaches its client at 400 (issue 10's probe,
        # results/reference/reliability-cpu-2core/).
        gc.collect()
        gc.freeze()
        self.loop_task = asyncio.create_task(model_loop(self), name="model-loop")
        self.loop_task.add_done_callback(self._model_loop_ended)
        lag_task = asyncio.create_task(self._watch_loop_lag(), name="loop-lag")
        try:
            yield
        finally:
            self.closing = True
            self.queue.drop_all(ServiceUnavailable("the server is shutting down"))
            for task in (self.loop_task, lag_task):
                task.cancel()
            await asyncio.wait([self.loop_task, lag_task], timeout=SHUTDOWN_GRACE_S)
            if self._trace:
                self._trace.close()

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new work, give queued requests a grace period, then 503 the rest."""
        self.closing = True
        if self.queue is not None:
            asyncio.get_running_loop().call_later(
                SHUTDOWN_GRACE_S, self.queue.drop_all, ServiceUnavailable("the server is shutting down"))

    def _model_loop_ended(self, task: asyncio.Task) -> None:
        if task.cancelled() and self.closing:
            return
        error = task.exception() if not task.cancelled() else None
        self.loop_error = f"model loop ended: {error!r}" if error else "model loop ended"
        log.error("%s; answering 503 from now on", self.loop_error, exc_info=error)
        for job in self.running_batch:
            if not job.future.done():
                job.future.set_exception(ServiceUnavailable(self.loop_error))
        self.queue.drop_all(ServiceUnavailable(self.loop_error))

    async def _watch_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_PERIOD_S
            await asyncio.sleep(LOOP_LAG_PERIOD_S)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - expected))

    # -- the request path ---------------------------------------------------------------

    async def read_input(self, request: Request) -> str:
        """The input text of a request, or RequestError 400/408/413 with a one-line reason."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                if declared.isdigit() and int(declared) > limit:
                    await _drain(request)
                    raise RequestError(413, f"body is {declared} bytes; the limit is {limit} "
                                            "(--max-body-bytes)")
                body = bytearray()
                async for chunk in request.stream():  # in chunks: a huge body is refused, not stored
                    body += chunk
                    if len(body) > limit:
                        await _drain(request)
                        raise RequestError(413, f"body is over {limit} bytes (--max-body-bytes)")
        except TimeoutError:
            raise RequestError(408, f"body not received within {self.settings.body_timeout_s:g} s "
                                    "(--body-timeout-s)", {"Connection": "close"}) from None
        except ClientDisconnect:
            # Nobody to answer: one quiet line, no traceback; /metrics counts it as 499.
            log.info("client disconnected before sending its whole body")
            raise RequestError(499, "client disconnected before sending its whole body") from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
        if request.headers.get("content-type", "").startswith("application/json"):
            text = _json_inputs(text)
        if not text.strip():
            raise RequestError(400, "empty input: send the text to process as the request body")
        try:
            self.model.check_input(text)
        except BadInput as exc:
            raise RequestError(400, str(exc)) from None
        return text

    def enqueue(self, text: str) -> Job:
        """Put the input on the model's queue, or refuse at once: 503 (full, closing, dead), or
        504 if it already took longer than --queue-timeout-ms to read (counted from arrival)."""
        if self.closing or self.loop_error:
            raise RequestError(503, self.loop_error or "the server is shutting down")
        try:
            return self.queue.put(text, ARRIVED.get())
        except jobs.WillBeLate as exc:
            self.metrics.refusals.labels("predicted_late").inc()
            raise RequestError(503, f"server overloaded: {exc}",
                               {"Retry-After": str(exc.retry_after_s)}) from None
        except QueueFull as exc:
            self.metrics.refusals.labels("queue_full").inc()
            raise RequestError(503, f"server overloaded: {exc} (--max-queue {self.queue.max_queue})",
                               {"Retry-After": str(self.retry_after_s())}) from None
        except QueueTimeout as exc:
            self.metrics.refusals.labels("late_on_arrival").inc()
            raise RequestError(504, str(exc)) from None

    async def answer(self, job: Job, request: Request) -> Response:
        """Wait for this job's own outcome; drop the job if its client leaves first."""
        client_left = asyncio.ensure_future(_client_disconnected(request))
        try:
            await asyncio.wait((job.future, client_left), return_when=asyncio.FIRST_COMPLETED)
        finally:
            client_left.cancel()
        if not job.future.done():  # the client is gone: never compute work nobody will read
            if self.queue.drop(job, ServiceUnavailable("client disconnected")):
                job.future.exception()  # mark the outcome retrieved: there is nobody to tell
            return Response(status_code=499)
        error = job.future.exception()
        if error is None:
            return Response(encode_json(job.future.result()), media_type="application/json",
                            headers={"X-Request-ID": job.id})
        if isinstance(error, RequestError):  # refused elsewhere, already counted (multi_process's model)
            raise error
        if isinstance(error, QueueTimeout):
            self.metrics.refusals.labels("queue_timeout").inc()
            raise RequestError(504, str(error), request_id=job.id)
        if isinstance(error, ServiceUnavailable):
            raise RequestError(503, str(error), request_id=job.id)
        # The traceback goes to the server log under the id the client gets, never to the client.
        log.error("request %s: the model failed on its input", job.id, exc_info=error)
        raise RequestError(500, f"the model failed on this input: {type(error).__name__}", request_id=job.id)

    # -- the model worker's side --------------------------------------------------------

    def begin_batch(self, batch: list[Job], close_reason: str) -> BatchStart:
        """Note a batch closed and about to run; pass what this returns to end_batch."""
        self.metrics.batches.labels(close_reason).inc()
        self.metrics.batch_size.observe(len(batch))
        for job in batch:
            self.metrics.queue_wait.observe(job.started - job.arrived)
        self.running_batch = batch
        return BatchStart(asyncio.get_running_loop().time(), close_reason)

    def end_batch(self, batch: list[Job], outcomes: list[Any], start: BatchStart) -> None:
        """Hand each job its own outcome: outcome i belongs to job i."""
        now = asyncio.get_running_loop().time()
        compute = now - start.at
        self.metrics.batch_compute.observe(compute)
        # Counted after the batch, off its clock: the tokenizer's pass costs tens of microseconds.
        # A variant that planned by length has each job's tokens already: no second pass.
        if all(job.tokens for job in batch):
            real, padded = sum(job.tokens for job in batch), len(batch) * max(job.tokens for job in batch)
        else:
            real, padded = self.model.token_counts([job.text for job in batch])
        self.metrics.batch_tokens.labels("real").inc(real)
        self.metrics.batch_tokens.labels("padded").inc(padded)
        self.batch_count += 1
        self.mean_batch_size += 0.1 * (len(batch) - self.mean_batch_size)
        self.mean_batch_seconds += 0.1 * (compute - self.mean_batch_seconds)
        self.running_batch = []
        for job, outcome in zip(batch, outcomes, strict=True):
            job.answered = now
            if job.future.done():  # its client left mid-batch
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        if self._trace:
            self._write_trace(batch, start, now, real, padded)

    def _write_trace(self, batch: list[Job], start: BatchStart, ended: float, real: int, padded: int) -> None:
        # Times are the event loop's monotonic clock, in seconds. A batch opens when its first
        # job is taken and closes when the worker stops collecting and starts the pipeline.
        record = {
            "batch": self.batch_count, "size": len(batch), "close_reason": start.close_reason,
            "opened": batch[0].started, "closed": start.at, "compute_start": start.at,
            "compute_end": ended, "tokens": real, "padded_tokens": padded,
            "requests": [{"id": j.id, "arrived": j.arrived, "started": j.started, "answered": j.answered}
                         for j in batch],
        }
        self._trace.write(json.dumps(record) + "\n")

    def retry_after_s(self) -> int:
        """Seconds until the queue should have room: queued batches times the batch time."""
        batches_ahead = self.queue.qsize() / max(self.mean_batch_size, 1.0) + 1
        return max(1, math.ceil(batches_ahead * self.mean_batch_seconds))

    # -- the routes every variant shares --------------------------------------------------

    @property
    def routes(self) -> list[Route]:
        return [Route("/health", self.health), Route("/info", self.info), Route("/metrics", self.prometheus)]

    async def health(self, request: Request) -> Response:
        if self.loop_error or self.closing or self.loop_task is None or self.loop_task.done():
            return JSONResponse({"status": "unavailable", "reason": self.loop_error or "not serving"}, 503)
        if self.starting:
            return JSONResponse({"status": "starting", "reason": self.starting}, 503)
        return JSONResponse({"status": "ok", "queue_depth": self.queue.qsize()})

    async def info(self, request: Request) -> Response:
        return JSONResponse({
            "variant": self.variant,
            "settings": asdict(self.settings),
            "model": self.model.describe(),
            "malloc": allocator.in_use(),
            "versions": versions(SERVING, missing="not installed"),
        })

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def refuse(self, request: Request, exc: RequestError) -> Response:
        """Exception handler: a JSON error with the request's id; never a traceback."""
        request_id = exc.request_id or new_request_id()
        body = {"error": exc.reason, "status": exc.status, "request_id": request_id}
        return JSONResponse(body, exc.status, headers={"X-Request-ID": request_id, **exc.headers})

    @property
    def exception_handlers(self) -> dict:
        return {RequestError: self.refuse}

    @property
    def middleware(self) -> list:
        from starlette.middleware import Middleware

        return [Middleware(CountStatuses, metrics=self.metrics), Middleware(LimitConnections, server=self),
                Middleware(LimitHeaders)]


class CountStatuses:
    """ASGI middleware: count each prediction request once, by the status it finally got."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        ARRIVED.set(asyncio.get_running_loop().time())
        status = 499  # no response started: the client left first

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(str(status)).inc()


def closing_error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Our JSON error, with a new request id, for a middleware that refuses before the app runs;
    the connection is closed after it."""
    request_id = new_request_id()
    body = {"error": reason, "status": status, "request_id": request_id}
    headers = {"X-Request-ID": request_id, "Connection": "close", **(headers or {})}
    return JSONResponse(body, status, headers=headers)


class LimitConnections:
    """ASGI middleware: 503 for a request that arrives while more than `limit` connections are open.

    uvicorn has such a limit (limit_concurrency), but its 503 is plain text, is not counted in
    /metrics, and goes out with the connection closed before the request's body is read: a client
    still sending a large body gets a reset instead of the 503. Here the body is read and dropped
    first (up to DRAIN_BYTES or DRAIN_S), as for a 413, and the 503 is our JSON error."""

    def __init__(self, app, server: Server):
        self.app = app
        self.limit = getattr(server.settings, "max_connections", None)
        self.server = server  # its open_connections() is uvicorn's count, set once uvicorn serves it

    async def __call__(self, scope, receive, send):
        count = self.server.open_connections()
        if scope["type"] != "http" or self.limit is None or count <= self.limit:
            return await self.app(scope, receive, send)
        await _drain(Request(scope, receive))
        reason = f"{count} connections are open; the limit is {self.limit} (--max-connections)"
        await closing_error(503, reason, {"Retry-After": "1"})(scope, receive, send)


class LimitHeaders:
    """ASGI middleware: 431 for headers over MAX_HEADER_BYTES in all or MAX_HEADERS in number.

    uvicorn's httptools parser (the default) sets no limit of its own, so these bytes have been
    received by now; this keeps them out of the application. uvicorn's h11 parser can refuse them
    while reading (h11_max_incomplete_event_size), at some cost in speed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADERS:
                reason = (f"request headers are {size} bytes in {len(headers)} lines; the limits are "
                          f"{MAX_HEADER_BYTES} bytes and {MAX_HEADERS} lines")
                return await closing_error(431, reason)(scope, receive, send)
        return await self.app(scope, receive, send)


async def _drain(request: Request) -> None:
    """Read and drop what is left of a refused body, up to DRAIN_BYTES or DRAIN_S (nginx's
    lingering close, done before answering): then the client, done sending, reads the 413."""
    dropped = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(DRAIN_S):
            async for chunk in request.stream():
                dropped += len(chunk)
                if dropped > DRAIN_BYTES:
                    return


async def _client_disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def encode_json(output: Any) -> bytes:
    """The pipeline's output as JSON. orjson, not json: 384 floats take ~16 us, not ~370 us,
    and on a CPU server that time comes out of the model's core (profiled with py-spy)."""
    return orjson.dumps(output, option=orjson.OPT_SERIALIZE_NUMPY, default=_to_list)


def _to_list(value: Any) -> Any:
    if hasattr(value, "tolist"):  # torch tensors; numpy arrays are handled by orjson itself
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


MAX_JSON_DEPTH = 8  # {"inputs": ...} needs 1; a client's extra "parameters" a few more


def _json_inputs(text: str) -> str:
    # orjson, not json: it refuses a lone surrogate (which json passes on, to fail in the
    # tokenizer as a 500) and stops at 1,024 levels instead of raising RecursionError.
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    if _deeper_than(payload, MAX_JSON_DEPTH):
        raise RequestError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
        raise RequestError(400, 'JSON body must be {"inputs": "<text>"}')
    return payload["inputs"]


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (iterative: no recursion limit)."""
    level = [value]
    for _ in range(limit):
        level = [v for item in level if isinstance(item, dict | list)
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, dict | list) for item in level)
