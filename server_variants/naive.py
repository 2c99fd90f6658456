"""Naive: the guide's server, made correct for today's Starlette.

One model copy, loaded once, owned by one worker fed by an asyncio queue; the handler only reads
the request, queues it and waits for its own answer. What the guide's code got wrong is fixed:
the worker starts in `lifespan` (Starlette 1.x has no `on_event`), a request the model rejects
gets 400 or 500 instead of killing the worker (which left every later client hanging), and the
default model is served offline. One request per pipeline call, on the event loop: no batching.

Run:    python server_variants/naive.py
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Next:   diff server_variants/naive.py server_variants/per_get_timeout.py
"""

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import cli
from servelab.server import Server

VARIANT = "naive"
DEFAULTS: dict = {}  # nothing to tune: one request per pipeline call


async def model_loop(server: Server) -> None:
    """The guide's server_loop: one request, one pipeline call, on the event loop."""
    while True:
        job = await server.queue.get()
        start = server.begin_batch([job], "single")
        outcomes = server.model.predict([job.text])  # blocks the event loop
        server.end_batch([job], outcomes, start)


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
