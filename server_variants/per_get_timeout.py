"""Per-get timeout: the guide's dynamic-batching pseudo-code, as written.

After the first request, keep taking requests while each next one arrives within --max-wait-ms
(1 ms, as in the guide), then run them as one batch. The guide names its flaws, and they are
this file's lesson: the wait restarts on every get, so a trickle of requests every 0.5 ms keeps
the first one waiting far past 1 ms; and nothing caps the batch, which grows without bound.

Run:    python server_variants/per_get_timeout.py [--max-wait-ms 1]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Next:   diff server_variants/per_get_timeout.py server_variants/deadline.py
"""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.jobs import Job, JobQueue
from servelab.server import Server

VARIANT = "per_get_timeout"
DEFAULTS = {
    "max_wait_ms": 1.0,
    "max_wait_ms_help": "the wait for each next request; it restarts after every one (the flaw)",
}


async def collect_batch(queue: JobQueue, get_timeout_s: float) -> tuple[list[Job], str]:
    """The guide's pseudo-code: after the first job, take jobs until one get times out."""
    batch = [await queue.get()]
    while True:
        try:
            # The timeout restarts on every get: a steady trickle keeps the first job waiting,
            # and nothing caps the batch.
            batch.append(await asyncio.wait_for(queue.get(), timeout=get_timeout_s))
        except TimeoutError:
            return batch, "get_timeout"


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
