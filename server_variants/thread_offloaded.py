"""Thread-offloaded: the capped batch, with the pipeline run off the event loop.

PyTorch is not async-aware: in the other variants a batch that computes for 500 ms freezes the
event loop for 500 ms, and no request can even be refused meanwhile. Here the pipeline call runs
in a worker thread (torch releases the GIL while it computes), so the loop keeps serving /health,
queueing new requests and answering errors. There is still one model copy and one worker:
batches never overlap. This is the variant to copy; its circuit breaker is on by default.

Run:    python server_variants/thread_offloaded.py [--max-wait-ms 2] [--max-batch-size 16]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
"""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.jobs import Job, JobQueue
from servelab.server import Server

VARIANT = "thread_offloaded"
DEFAULTS = {
    "max_wait_ms": 2.0,
    "max_wait_ms_help": "a batch starts at most this long after its first request was taken",
    "max_batch_size": 16,
    # The variant to copy to production, so its circuit breaker is on by default. On the 2-core
    # reference CPU it answers 68-77 req/s under a 2x overload (results/reference/: 68.4 in
    # goals-cpu-2core/, 76.9 in cpu-2core/05_choosing_a_variant/), so a full queue of 64 is under
    # a second of work, and 1 s is the longest a request waits.
    "max_queue": 64,
    "queue_timeout_ms": 1000.0,
    # Each open connection holds a socket and a coroutine: past this many, uvicorn answers 503.
    "max_connections": 1000,
}


async def collect_batch(queue: JobQueue, max_wait_s: float, max_batch_size: int) -> tuple[list[Job], str]:
    """Return 1 to max_batch_size jobs, and why the batch closed. Never waits past one deadline."""
    loop = asyncio.get_running_loop()
    batch = [await queue.get()]
    deadline = loop.time() + max_wait_s
    while len(batch) < max_batch_size:
        if not queue.empty():  # already queued: joins at once
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            return batch, "deadline" if max_wait_s > 0 else "drained"
        try:
            batch.append(await asyncio.wait_for(queue.get(), timeout=remaining))
        except TimeoutError:
            return batch, "deadline"
    return batch, "size_cap"


async def model_loop(server: Server) -> None:
    """The one worker that owns the model: take a batch, run it, answer each request."""
    while True:
        settings = server.settings
        batch, close_reason = await collect_batch(
            server.queue, settings.max_wait_ms / 1000, settings.max_batch_size
        )
        start = server.begin_batch(batch, close_reason)
        # In a worker thread: the event loop keeps accepting, queueing and answering (errors too)
        # while the model computes, so the next batch forms during this one.
        outcomes = await asyncio.to_thread(server.model.predict, [job.text for job in batch])
        server.end_batch(batch, outcomes, start)


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
