"""The link between multi_process's front ends and its one model process, over ZeroMQ.

A front end's queue is a `RemoteQueue`: it has JobQueue's interface, so Server's request path is
unchanged, but put() sends the request's token ids to the model process, and the outcome comes
back under the job's id. The model process's end is a `ModelEndpoint`: it puts each request on
its own JobQueue (so the breaker's 503 and 504 happen there, timed from the arrival at the front
end) and sends each outcome back to the front end that asked.

ZeroMQ rather than a pipe per front end: one ROUTER socket in the model process serves any number
of front ends (DEALER sockets), routes each answer back by its asker's identity, and holds
messages while a peer is still starting. Frames, front end to model: [kind, id, body]; model to
front end: [kind, id, status, body, headers]. Times are loop.time(), i.e. CLOCK_MONOTONIC, which
every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from typing import Any

import orjson
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from servelab import models
from servelab.jobs import Job, QueueFull, QueueTimeout, ServiceUnavailable
from servelab.server import RequestError, Server, encode_json
from servelab.versions import SERVING, versions

log = logging.getLogger("servelab.link")

HEARTBEAT_S = 0.5
# Silent this long, the model process is taken for dead: /health and / answer 503. It answers
# pings from its event loop, which stays free while a batch computes in its worker thread.
DEAD_AFTER_S = 3.0
METRICS_TIMEOUT_S = 5.0
FRONT_END_FAMILIES = {"servelab_requests", "servelab_event_loop_lag_seconds"}  # the rest: the model's


def _socket(kind: int) -> zmq.asyncio.Socket:
    sock = zmq.asyncio.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)  # on exit, never wait to deliver to a peer that is gone
    sock.setsockopt(zmq.SNDHWM, 100_000)  # a burst of requests is queued, not blocked
    sock.setsockopt(zmq.RCVHWM, 100_000)
    return sock


def render(registry: CollectorRegistry, front_end: bool) -> bytes:
    """Prometheus text of the front end's own families, or of all the others (the model's)."""
    names = {sample.name for family in registry.collect()
             if (family.name in FRONT_END_FAMILIES) == front_end for sample in family.samples}
    return generate_latest(registry.restricted_registry(names))


# -- the front end's side -------------------------------------------------------------------


# Inputs whose encodings a front end checks against the model process's own tokenizer before it
# serves: accents, other scripts, emoji, odd spaces, a mask token; for a task that truncates, one
# past any model's length too.
PROBES = ["Hello, world!", "  Ça  va?\tnaïve café, Straße ", "東京は日本の首都です。", "emoji 🤖👍🏽 ok",
          "line\nbreaks\r\nand\u00a0nbsp", "{mask} fills this"]
LONG_PROBE = "word " * 700


class FrontEndModel:
    """The model as a front end knows it: its tokenizer, and the model process's description.

    The tokenizer is the model's own fast tokenizer, rebuilt from its serialized form with the
    `tokenizers` library alone: transformers imports torch, about 200 MB per front end for
    nothing. It is used only once its encodings of PROBES match the model process's; otherwise
    (or for a model without a fast tokenizer) the front end loads transformers' tokenizer."""

    def __init__(self, description: dict):
        self.description = description["model"]
        self.task = self.description["task"]
        self.max_tokens = self.description["max_tokens"]
        self.tokenizer = self._tokenizer(description)

    def _tokenizer(self, description: dict):
        spec = description.get("fast_tokenizer")
        if spec:
            tokenizer = StandaloneTokenizer(spec)
            if probe_encodings(tokenizer, self.task, self.max_tokens) == description["probes"]:
                return tokenizer
            log.warning("the standalone tokenizer encodes differently from the model's: "
                        "loading transformers' instead")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(description["tokenizer"])

    def check_input(self, text: str) -> None:
        models.check_input(self.tokenizer, self.task, self.max_tokens, text)

    def encode(self, text: str) -> dict[str, list[int]]:
        return models.encode(self.tokenizer, self.task, self.max_tokens, text)

    def describe(self) -> dict:
        return self.description


class StandaloneTokenizer:
    """A transformers fast tokenizer's call, `tokenizer(text, truncation=..., max_length=...)`,
    for one text, on its `tokenizers` backend alone (what models.encode and check_input use)."""

    def __init__(self, spec: dict):
        import tokenizers

        self.backend = tokenizers.Tokenizer.from_str(spec["json"])
        self.backend.no_padding()
        self.backend.no_truncation()
        self.truncated_at: int | None = None
        self.side = spec["truncation_side"]
        self.names = spec["model_input_names"]
        self.mask_token = spec["mask_token"]

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict:
        limit = max_length if truncation else None
        if limit != self.truncated_at:
            if limit is None:
                self.backend.no_truncation()
            else:
                self.backend.enable_truncation(limit, direction=self.side)
            self.truncated_at = limit
        encoding = self.backend.encode(text)
        outputs = {"input_ids": encoding.ids, "token_type_ids": encoding.type_ids,
                   "attention_mask": encoding.attention_mask}
        return {name: outputs[name] for name in self.names if name in outputs}


def describe_tokenizer(tokenizer: Any, task: str, max_tokens: int) -> dict:
    """What a front end needs to tokenize as the model process does (ModelEndpoint.description)."""
    described = {"tokenizer": tokenizer.name_or_path, "probes": probe_encodings(tokenizer, task, max_tokens)}
    if getattr(tokenizer, "is_fast", False):
        described["fast_tokenizer"] = {
            "json": tokenizer.backend_tokenizer.to_str(),
            "truncation_side": tokenizer.truncation_side,
            "model_input_names": list(tokenizer.model_input_names),
            "mask_token": tokenizer.mask_token,
        }
    return described


def probe_encodings(tokenizer: Any, task: str, max_tokens: int) -> list[dict]:
    mask = getattr(tokenizer, "mask_token", None) or ""
    texts = [text.replace("{mask}", mask) for text in PROBES]
    if task in models.TRUNCATING_TASKS:
        texts.append(LONG_PROBE)
    return [models.encode(tokenizer, task, max_tokens, text) for text in texts]


def hello(address: str, is_alive, timeout_s: float | None = None) -> dict:
    """Wait for the model process (loading its model) to describe it; before the event loop runs."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart([b"hello", b"", b""])
        waited = 0.0
        while not sock.poll(200):
            waited += 0.2
            if not is_alive() or (timeout_s is not None and waited > timeout_s):
                raise RuntimeError("the model process did not start")
        _, _, _, body, _ = sock.recv_multipart()
        return orjson.loads(body)
    finally:
        sock.close()


class RemoteQueue:
    """JobQueue's interface, with the queue itself in the model process. qsize: requests sent
    and not yet answered (the model process's own depth is in /metrics)."""

    def __init__(self, address: str, model: FrontEndModel, model_alive=lambda: True,
                 max_queue: int | None = None, max_batch_size: int = 0, front_ends: int = 1):
        self.model_alive = model_alive  # a crash is seen at the next heartbeat, not after DEAD_AFTER_S
        self.socket = _socket(zmq.DEALER)
        self.socket.connect(address)
        self.model = model
        self.max_queue = max_queue  # the model process's limit; its refusals come back as RequestError
        # This front end's share of what the model process holds, at most: its queue and the
        # running batch, split evenly between the front ends (one accept queue spreads the load).
        # Past that, the front end refuses by itself, before tokenizing. The model process would
        # refuse too, but from the one process that must keep the model busy: on the H200, with
        # each front end allowed the whole queue, 8 front ends under overload sent it 24,000
        # requests to refuse in 5 s, and its answers fell to 0.65x the ceiling.
        self.most_pending = math.ceil((max_queue + max_batch_size) / front_ends) if max_queue else None
        self.pending: dict[str, Job] = {}
        self.metrics_asked: dict[bytes, asyncio.Future] = {}
        self.last_heard = 0.0

    def qsize(self) -> int:
        return len(self.pending)

    def empty(self) -> bool:
        return not self.pending

    def put(self, text: str, arrived: float | None = None) -> Job:
        if self.most_pending is not None and len(self.pending) >= self.most_pending:
            raise QueueFull(f"{len(self.pending)} requests from this front end are in the model process")
        loop = asyncio.get_running_loop()
        job = Job(text, loop.create_future(), loop.time() if arrived is None else arrived)
        inputs = self.model.encode(text)  # the tokenizer's pass, in this process, not the model's
        job.tokens = len(inputs["input_ids"])
        self.pending[job.id] = job
        self._send(b"job", job.id.encode(), orjson.dumps({"arrived": job.arrived, "inputs": inputs}))
        return job

    def drop(self, job: Job, outcome: BaseException) -> bool:
        """Its client left: tell the model process not to compute it."""
        if self.pending.pop(job.id, None) is None or job.future.done():
            return False
        self._send(b"cancel", job.id.encode())
        job.future.set_exception(outcome)
        return True

    def drop_all(self, outcome: BaseException) -> int:
        jobs, self.pending = list(self.pending.values()), {}
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(outcome)
        return len(jobs)

    async def model_metrics(self) -> bytes:
        token = str(id(object())).encode()
        future = self.metrics_asked[token] = asyncio.get_running_loop().create_future()
        self._send(b"metrics", token)
        try:
            async with asyncio.timeout(METRICS_TIMEOUT_S):
                return await future
        finally:
            self.metrics_asked.pop(token, None)

    def _send(self, kind: bytes, key: bytes, body: bytes = b"") -> None:
        # Never blocks below the high-water mark: the returned future is already done.
        self.socket.send_multipart([kind, key, body])

    async def run(self, server: Server) -> None:
        """The front end's 'model loop': hand each answer to its job; watch the model's pulse."""
        loop = asyncio.get_running_loop()
        self.last_heard = loop.time()
        pulse = asyncio.create_task(self._heartbeat(server), name="heartbeat")
        try:
            while True:
                kind, key, status, body, headers = await self.socket.recv_multipart()
                self.last_heard = loop.time()
                if kind == b"job":
                    self._answer(key.decode(), int(status), body, headers)
                elif kind == b"metrics" and (asked := self.metrics_asked.get(key)) and not asked.done():
                    asked.set_result(body)
        finally:
            pulse.cancel()

    def _answer(self, job_id: str, status: int, body: bytes, headers: bytes) -> None:
        job = self.pending.pop(job_id, None)
        if job is None or job.future.done():  # its client left, and the cancel crossed the answer
            return
        job.answered = asyncio.get_running_loop().time()
        if status == 200:
            job.future.set_result(orjson.Fragment(body))  # JSON already: written out as it is
        else:
            job.future.set_exception(RequestError(status, body.decode(), orjson.loads(headers), job_id))

    async def _heartbeat(self, server: Server) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._send(b"ping", b"")
            await asyncio.sleep(HEARTBEAT_S)
            silent = loop.time() - self.last_heard
            if server.loop_error:
                continue
            if not self.model_alive():
                server.loop_error = "the model process has exited"
            elif silent > DEAD_AFTER_S:
                server.loop_error = f"the model process has not answered for {silent:.1f} s"
            if server.loop_error:
                log.error("%s; answering 503 from now on", server.loop_error)
                self.drop_all(ServiceUnavailable(server.loop_error))


class FrontEndServer(Server):
    """Server, with the queue in the model process and the model's metrics fetched from there."""

    def __init__(self, variant: str, settings: Any, model: FrontEndModel, address: str, front_end: dict,
                 model_alive=lambda: True):
        super().__init__(variant, settings, model)
        self.remote = RemoteQueue(address, model, model_alive, settings.max_queue,
                                  getattr(settings, "max_batch_size", 0), front_end["count"])
        self.front_end = front_end  # {"index", "count"}: which front end this is, for /info

    @contextlib.asynccontextmanager
    async def running(self, model_loop=None):
        async with super().running(self.remote.run):
            self.queue = self.remote  # before the first request: the app starts serving after this
            yield

    async def prometheus(self, request: Request) -> Response:
        try:
            model_text = await self.remote.model_metrics()
        except TimeoutError:
            model_text = b"# the model process did not answer\n"
        own = render(self.metrics.registry, front_end=True)
        note = f"# front end {self.front_end['index']} of {self.front_end['count']}: its own requests\n"
        return Response(model_text + note.encode() + own, media_type="text/plain; version=0.0.4")

    async def info(self, request: Request) -> Response:
        from dataclasses import asdict

        return JSONResponse({
            "variant": self.variant,
            "settings": asdict(self.settings),
            "model": self.model.describe(),
            "front_end": self.front_end,
            "versions": versions(SERVING, missing="not installed"),
        })


# -- the model process's side ---------------------------------------------------------------


class ModelEndpoint:
    """In the model process: take each front end's requests onto server.queue; send outcomes back."""

    def __init__(self, address: str, server: Server):
        self.server = server
        self.socket = _socket(zmq.ROUTER)
        self.socket.bind(address)
        self.jobs: dict[bytes, Job] = {}  # by id, until answered: a cancel finds its job here

    def description(self) -> dict:
        model = self.server.model
        tokenizer = describe_tokenizer(model.pipe.tokenizer, model.task, model.max_tokens)
        return {"model": model.describe()} | tokenizer

    async def serve(self) -> None:
        while True:
            peer, kind, key, body = await self.socket.recv_multipart()
            if kind == b"job":
                self._take(peer, key, body)
            elif kind == b"cancel" and key in self.jobs:
                self.server.queue.drop(self.jobs[key], ServiceUnavailable("client disconnected"))
            elif kind == b"ping":
                self._reply(peer, b"pong", b"")
            elif kind == b"hello":
                self._reply(peer, b"hello", b"", 200, orjson.dumps(self.description()))
            elif kind == b"metrics":
                self._reply(peer, b"metrics", key, 200, render(self.server.metrics.registry, front_end=False))

    def _reply(self, peer: bytes, kind: bytes, key: bytes, status: int = 200, body: bytes = b"",
               headers: dict | None = None) -> None:
        self.socket.send_multipart([peer, kind, key, str(status).encode(), body, orjson.dumps(headers or {})])

    def _take(self, peer: bytes, key: bytes, body: bytes) -> None:
        server = self.server
        refuse = functools.partial(self._reply, peer, b"job", key)
        if server.closing or server.loop_error:
            return refuse(503, (server.loop_error or "the server is shutting down").encode())
        request = orjson.loads(body)
        try:
            job = server.queue.put(request["inputs"], request["arrived"], len(request["inputs"]["input_ids"]))
        except QueueFull as exc:
            server.metrics.refusals.labels("queue_full").inc()
            reason = f"server overloaded: {exc} (--max-queue {server.queue.max_queue})"
            return refuse(503, reason.encode(), {"Retry-After": str(server.retry_after_s())})
        except QueueTimeout as exc:
            server.metrics.refusals.labels("late_on_arrival").inc()
            return refuse(504, str(exc).encode())
        job.id = key.decode()  # the front end's id: the one its client sees, and the logs use
        self.jobs[key] = job
        job.future.add_done_callback(functools.partial(self._answer, peer, key))

    def _answer(self, peer: bytes, key: bytes, future: asyncio.Future) -> None:
        self.jobs.pop(key, None)
        reply = functools.partial(self._reply, peer, b"job", key)
        if future.cancelled():
            return reply(503, b"the server is shutting down")
        error = future.exception()
        if error is None:
            return reply(200, encode_json(future.result()))
        if isinstance(error, QueueTimeout):
            self.server.metrics.refusals.labels("queue_timeout").inc()
            return reply(504, str(error).encode())
        if isinstance(error, ServiceUnavailable):
            return reply(503, str(error).encode())
        log.error("request %s: the model failed on its input", key.decode(), exc_info=error)
        reply(500, f"the model failed on this input: {type(error).__name__}".encode())
