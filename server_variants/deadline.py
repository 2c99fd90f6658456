"""Single deadline: each batch waits at most --max-wait-ms, counted from its first request.

The guide's batching loop (per_get_timeout.py) restarts its 1 ms wait after every item, so a
steady trickle of requests keeps the first one waiting far longer than 1 ms. Here a batch gets
one deadline when its first request is taken; whatever is already queued joins at once, and
the batch never waits past the deadline. Still missing: a cap on the batch size.

Run:    python server_variants/deadline.py [--max-wait-ms 2]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Next:   diff server_variants/deadline.py server_variants/capped_batch.py
"""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.jobs import Job, JobQueue
from servelab.server import Server

VARIANT = "deadline"
DEFAULTS = {
    "max_wait_ms": 2.0,
    "max_wait_ms_help": "a batch starts at most this long after its first request was taken",
}


async def collect_batch(queue: JobQueue, max_wait_s: float) -> tuple[list[Job], str]:
    """Return at least one job, and why the batch closed. Never waits past one deadline."""
    loop = asyncio.get_running_loop()
    batch = [await queue.get()]
    deadline = loop.time() + max_wait_s
    while True:
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


async def model_loop(server: Server) -> None:
    """The one worker that owns the model: take a batch, run it, answer each request."""
    while True:
        batch, close_reason = await collect_batch(server.queue, server.settings.max_wait_ms / 1000)
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
