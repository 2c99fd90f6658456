"""Capped batch: the single deadline, plus --max-batch-size.

Without a cap (deadline.py), a burst becomes one huge batch: its padding and memory grow with
it, past the size where batching stops paying, and every request in it waits for the slowest.
Here a batch closes at the deadline or as soon as it holds --max-batch-size requests, whichever
comes first. Still missing: the model runs on the event loop, which stalls every other request.

Run:    python server_variants/capped_batch.py [--max-wait-ms 2] [--max-batch-size 16]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Next:   diff server_variants/capped_batch.py server_variants/thread_offloaded.py
"""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.jobs import Job, JobQueue
from servelab.server import Server

VARIANT = "capped_batch"
DEFAULTS = {
    "max_wait_ms": 2.0,
    "max_wait_ms_help": "a batch starts at most this long after its first request was taken",
    "max_batch_size": 16,
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
        outcomes = server.model.predict([job.text for job in batch])  # blocks the event loop
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
