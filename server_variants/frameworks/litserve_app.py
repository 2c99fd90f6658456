"""LitServe: the same model, batch cap and wait, served by Lightning AI's LitServe (issue 12).

The peer users ask about. LitServe loads the model in its own inference-worker process and
serves HTTP from API-server processes (uvicorn, forked), joined by multiprocessing queues. Its
batching loop is its own: `max_batch_size` comes from --max-batch-size and `batch_timeout` from
--max-wait-ms. Everything else here only makes its answers look like our variants' answers.

Run:    python server_variants/frameworks/litserve_app.py [--max-wait-ms 2] [--max-batch-size 16]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Bench:  python -m servelab bench --variant frameworks/litserve_app --rate 20
Needs:  pip install -r requirements/frameworks.txt

Where it differs from server_variants/, as far as LitServe allows:
- The batch window opens when LitServe's loop starts collecting, not when a batch's first
  request is taken: its loop polls the queue every 1 ms until batch_timeout has passed or the
  batch is full (litserve/loops/base.py, collate_requests).
- LitServe fails a whole batch if decode_request raises for one input. So the body is read and
  checked here, in the API server, before it is queued (400 and 413 as our variants answer them),
  and the model's own input check answers its request alone (encode_response returns that
  request's Response, error or not).
- No queue limit: LitServe has none, so there is no --max-queue and no 503 from a full queue.
  A request not started within --queue-timeout-ms (LitServe's `timeout`, default its own 30 s)
  gets 504 {"error": "Request timed out", ...}; 0 turns the timeout off.
- /health is LitServe's own: 200 "ok" (plain text) once its worker is ready, else 503 "not ready".
  /info is ours (variant, settings, model, versions); LitServe's moves to /litserve/info.
- No /metrics, no --trace, and no X-Request-ID on a 200 (error bodies carry a request_id).
- LitServe's default GZip middleware is removed: our variants do not compress their answers.
- One inference worker and, by default, one API-server process: --api-servers adds more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import litserve as ls
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse, Response

from servelab.jobs import new_request_id
from servelab.models import BadInput, load_model
from servelab.server import RequestError, _json_inputs, encode_json
from servelab.versions import SERVING, versions

VARIANT = "litserve_app"
DEFAULTS = {
    "max_wait_ms": 2.0,  # as thread_offloaded
    "max_batch_size": 16,
    "max_body_bytes": 64 * 1024,
    "api_servers": 1,
}
DRAIN_BYTES = 16 << 20  # a refused body is still read, and dropped, up to this much before the 413

log = logging.getLogger("servelab.litserve_app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{VARIANT}.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (LitServe takes 0.0.0.0, 127.0.0.1 or ::)")
    add("--port", type=int, default=8000, help="port to listen on")
    add("--model", default=None, help="model folder or cached hub id (default: the packaged MiniLM)")
    add("--task", default=None, help="pipeline task (default: read from the model's config)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or emulated:PROFILE, as our variants")
    add("--online", action="store_true", help="allow downloading --model from the Hugging Face hub")
    add("--torch-threads", type=int, default=None, help="torch intra-op threads in the inference worker")
    add("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"], help="LitServe's batch_timeout, in ms")
    add("--max-batch-size", type=int, default=DEFAULTS["max_batch_size"], help="LitServe's max_batch_size")
    add("--queue-timeout-ms", type=float, default=None,
        help="LitServe's timeout: a request queued this long gets 504 (default: LitServe's 30 s; 0: off)")
    add("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], help="larger bodies get 413")
    add("--api-servers", type=int, default=DEFAULTS["api_servers"],
        help="HTTP server processes (LitServe's num_api_servers)")
    add("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport instead of its default queues")
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add("--access-log", action="store_true", help="log every request (on in LitServe; costs CPU under load)")
    return parser


# -- the API server's side: read and check the body before LitServe queues it --------------


class CheckedBodies:
    """ASGI middleware on POST /: the body is read and checked as our variants check it, and a
    text/plain body becomes {"inputs": text}, the JSON that LitServe's handler parses."""

    def __init__(self, app, path: str, max_body_bytes: int):
        self.app, self.path, self.max_body_bytes = app, path, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        body, size, more = bytearray(), 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body_bytes:
                body += chunk
            more = message.get("more_body", False) and size <= DRAIN_BYTES
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if size > self.max_body_bytes:
                raise RequestError(413, f"body is over {self.max_body_bytes} bytes (--max-body-bytes)")
            text = _checked_text(bytes(body), headers.get("content-type", ""))
        except RequestError as exc:
            return await error_response(exc.status, exc.reason)(scope, receive, send)
        payload = encode_json({"inputs": text})
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type",
                                                                                      b"content-length")]
        scope["headers"] += [(b"content-type", b"application/json"),
                             (b"content-length", str(len(payload)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _checked_text(body: bytes, content_type: str) -> str:
    """servelab.server.Server.read_input's checks, less the model's own (the worker does those)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    if content_type.startswith("application/json"):
        text = _json_inputs(text)  # {"inputs": "<text>"}, nested at most MAX_JSON_DEPTH
    if not text.strip():
        raise RequestError(400, "empty input: send the text to process as the request body")
    return text


def error_response(status: int, reason: str) -> JSONResponse:
    request_id = new_request_id()
    return JSONResponse({"error": reason, "status": status, "request_id": request_id}, status,
                        headers={"X-Request-ID": request_id})


async def http_error(request: Request, exc: HTTPException) -> Response:
    """LitServe's errors ({"detail": ...}) in our shape: {error, status, request_id}."""
    return error_response(exc.status_code, str(exc.detail))


# -- the inference worker's side -----------------------------------------------------------


class EmbeddingAPI(ls.LitAPI):
    """One model copy in LitServe's inference worker; LitServe's loop forms the batches."""

    def __init__(self, args: argparse.Namespace, info_file: str, **kwargs):
        super().__init__(**kwargs)
        self.args, self.info_file = args, info_file

    def setup(self, device):
        # Our --device, not LitServe's choice: it also takes emulated:PROFILE and auto.
        if self.args.torch_threads:
            import torch

            torch.set_num_threads(self.args.torch_threads)
        self.model = load_model(self.args.model, self.args.task, self.args.device, self.args.online)
        Path(self.info_file).write_text(json.dumps(self.model.describe()))

    def decode_request(self, request):
        text = request["inputs"]  # checked by CheckedBodies
        try:
            self.model.check_input(text)
        except BadInput as exc:
            return exc  # answered alone by encode_response: raising here fails the whole batch
        return text

    def batch(self, inputs):
        return list(inputs)

    def predict(self, inputs):
        if not isinstance(inputs, list):  # --max-batch-size 1: LitServe's loop passes one input alone
            return self.predict([inputs])[0]
        texts = [x for x in inputs if isinstance(x, str)]
        outcomes = iter(self.model.predict(texts) if texts else [])
        return [next(outcomes) if isinstance(x, str) else x for x in inputs]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        if isinstance(output, BadInput):
            return error_response(400, str(output))
        if isinstance(output, BaseException):
            log.error("the model failed on its input", exc_info=output)
            return error_response(500, f"the model failed on this input: {type(output).__name__}")
        return Response(encode_json(output), media_type="application/json")


def build_server(args: argparse.Namespace, info_file: str) -> ls.LitServer:
    api = EmbeddingAPI(args, info_file, max_batch_size=args.max_batch_size,
                       batch_timeout=args.max_wait_ms / 1000, api_path="/")
    timeout = 30.0 if args.queue_timeout_ms is None else (args.queue_timeout_ms / 1000 or False)
    on_gpu = args.device.startswith("cuda") or (args.device == "auto" and _cuda_available())
    server = ls.LitServer(api, accelerator="cuda" if on_gpu else "cpu", devices=1, timeout=timeout,
                          info_path="/litserve/info", fast_queue=args.fast_queue)
    # Our variants do not compress; LitServe adds GZip by default.
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]
    server.app.add_middleware(CheckedBodies, path="/", max_body_bytes=args.max_body_bytes)
    server.app.add_exception_handler(HTTPException, http_error)
    settings = {k: v for k, v in vars(args).items() if k not in ("host", "port")}

    def info(request: Request) -> Response:  # a plain def: FastAPI runs it in a thread
        model = json.loads(Path(info_file).read_text())  # written by the worker before /health is ok
        packages = (*SERVING, "litserve", "fastapi")
        return JSONResponse({"variant": VARIANT, "settings": settings, "model": model,
                             "versions": versions(packages, missing="not installed")})

    server.app.add_api_route("/info", info, methods=["GET"])
    return server


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def stop_on_sigterm() -> None:
    """SIGTERM takes LitServe's Ctrl-C path, which stops its workers and manager; in a forked
    child that has not set its own handler, SIGTERM keeps its default action."""
    main_pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.online:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the spawned worker inherits it
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    with tempfile.TemporaryDirectory(prefix="servelab-litserve-") as folder:
        server = build_server(args, str(Path(folder) / "model.json"))
        stop_on_sigterm()
        with contextlib.suppress(KeyboardInterrupt):  # a second signal during LitServe's own shutdown
            server.run(host=args.host, port=args.port, num_api_servers=args.api_servers,
                       log_level=args.log_level, generate_client_file=False, access_log=args.access_log)
    sys.exit(0)


if __name__ == "__main__":
    main()
