"""Ray Serve: the same server, replicated by an existing distributed engine (issue 12).

Each replica is a Ray actor with its own model copy. `@serve.batch` is the guide's batching
worker: requests queue, and a batch closes at --max-batch-size or --max-wait-ms after its first
request, whichever comes first. The batch runs in a worker thread, as in thread_offloaded, so the
replica keeps reading requests while the model computes. Ray's HTTP proxy spreads requests over
the replicas; on a cluster, every node runs a proxy.

Run:    python server_variants/frameworks/ray_serve_app.py [--port 8000] [--replicas 2]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Bench:  python -m servelab bench --variant frameworks/ray_serve_app --rate 20
Needs:  pip install -r requirements/frameworks.txt
Stop:   Ctrl-C or SIGTERM: the app is deleted, and a Ray started here stops with it.

On a cluster, step by step (the same Python environment and this repository on every host):
  1. On the head host:      ray start --head --port 6379 --num-cpus 2
  2. On every other host:   ray start --address HEAD_IP:6379 --num-cpus 2
  3. Check it:              ray status          (the CPUs of all hosts, summed)
  4. On the head host:      python server_variants/frameworks/ray_serve_app.py --address auto \\
                                --host 0.0.0.0 --port 8000 --replicas 4 --device cpu
     Ray places the replicas (one CPU each, --replica-cpus) where there is room, and runs a
     proxy on port 8000 of every host: point the bench or Locust at any of them.
  5. Stop the app with Ctrl-C (the cluster stays up), then `ray stop` on every host.
  For replicas that follow the load instead of a fixed count: --autoscale-max-replicas N.

Flags mapped onto Ray Serve's own:
- --replicas: num_replicas (with --autoscale-max-replicas: the autoscaler's min_replicas;
  it aims at --max-batch-size requests in flight per replica).
- --max-ongoing-requests: max_ongoing_requests, the requests in flight in one replica. Its
  default is twice --max-batch-size, so that a batch can fill while another computes; Ray's own
  default (5) would cap every batch at 5.
- --max-queue: max_queued_requests, Ray's back-pressure. It counts the requests waiting at each
  caller (each proxy) for a replica with room, so it is per proxy, not per replica. Past it, the
  proxy answers 503 in plain text, not our JSON, and with no Retry-After: "Request dropped due to
  backpressure (num_queued_requests=2, max_queued_requests=2)." 0 (the default): no limit.
- --queue-timeout-ms: http_options.request_timeout_s, the proxy's end-to-end timeout: a request
  not answered in time gets 408 "Request <id> timed out after 0.05s." in plain text (ours: 504,
  for the time queued alone). Off by default.

Where it differs from server_variants/: the body is read and checked by our own code
(servelab.server.Server.read_input: 400, 408, 413 with our JSON body) inside the replica, after
Ray's proxy has passed it on; /health answers from one replica (Ray's own are /-/healthz and
/-/routes); there is no /metrics (Ray exports its own) and no --trace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from types import SimpleNamespace

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from servelab.jobs import new_request_id
from servelab.models import load_model
from servelab.server import RequestError, Server, encode_json
from servelab.versions import SERVING, versions

VARIANT = "ray_serve_app"
DEFAULTS = {
    "max_wait_ms": 2.0,  # as thread_offloaded
    "max_batch_size": 16,
    "replicas": 1,
    "replica_cpus": 1.0,
    "max_body_bytes": 64 * 1024,
    "body_timeout_s": 10.0,
}
SHUTDOWN_TIMEOUT_S = 20.0  # past this, a hung shutdown is cut short: the process exits anyway

log = logging.getLogger("servelab.ray_serve_app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{VARIANT}.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address Ray's HTTP proxy listens on")
    add("--port", type=int, default=8000, help="port Ray's HTTP proxy listens on")
    add("--model", default=None, help="model folder or cached hub id (default: the packaged MiniLM)")
    add("--task", default=None, help="pipeline task (default: read from the model's config)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or emulated:PROFILE, as our variants")
    add("--online", action="store_true", help="allow downloading --model from the Hugging Face hub")
    add("--torch-threads", type=int, default=None, help="torch intra-op threads in each replica")
    add("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"],
        help="@serve.batch's batch_wait_timeout_s, in ms: how long a batch waits after its first request")
    add("--max-batch-size", type=int, default=DEFAULTS["max_batch_size"],
        help="@serve.batch's max_batch_size")
    add("--replicas", type=int, default=DEFAULTS["replicas"], help="model copies (num_replicas)")
    add("--autoscale-max-replicas", type=int, default=None,
        help="autoscale between --replicas and this many replicas instead of a fixed count")
    add("--replica-cpus", type=float, default=DEFAULTS["replica_cpus"], help="CPUs Ray reserves per replica")
    add("--replica-gpus", type=float, default=None,
        help="GPUs Ray reserves per replica (default: 1 with --device cuda*, else 0)")
    add("--max-ongoing-requests", type=int, default=None,
        help="requests in flight per replica (default: twice --max-batch-size)")
    add("--max-queue", type=int, default=0,
        help="max_queued_requests: requests waiting at each proxy; past it 503; 0: no limit")
    add("--queue-timeout-ms", type=float, default=None,
        help="the proxy's end-to-end request_timeout_s, in ms: past it 408 (default: none)")
    add("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], help="larger bodies get 413")
    add("--address", default=None,
        help="a running Ray cluster (auto, or HOST:PORT); default: start a local Ray for this app alone")
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


@serve.deployment
class Embedder:
    """One replica: one model copy, its batching queue, and our request path."""

    def __init__(self, settings: dict):
        if settings["torch_threads"]:
            import torch

            torch.set_num_threads(settings["torch_threads"])
        self.settings = settings
        model = load_model(settings["model"], settings["task"], settings["device"], settings["online"])
        reading = SimpleNamespace(max_body_bytes=settings["max_body_bytes"],
                                  body_timeout_s=DEFAULTS["body_timeout_s"])
        self.server = Server(VARIANT, reading, model)  # for read_input: our checks and error reasons
        self.embed.set_max_batch_size(settings["max_batch_size"])
        self.embed.set_batch_wait_timeout_s(settings["max_wait_ms"] / 1000)

    # The flags' values are set on each replica in __init__; these are only the defaults.
    @serve.batch(max_batch_size=DEFAULTS["max_batch_size"],
                 batch_wait_timeout_s=DEFAULTS["max_wait_ms"] / 1000)
    async def embed(self, texts: list[str]) -> list:
        # In a worker thread: the replica keeps taking requests while the model computes.
        return await asyncio.to_thread(self.server.model.predict, texts)

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        try:
            if path == "/" and method == "POST":
                return await self.predict(request)
            if path == "/health" and method == "GET":
                return JSONResponse({"status": "ok"})
            if path == "/info" and method == "GET":
                return JSONResponse({
                    "variant": VARIANT,
                    "settings": self.settings,
                    "model": self.server.model.describe(),
                    "versions": versions((*SERVING, "ray"), missing="not installed"),
                })
            raise RequestError(404, f"no route {method} {path}")
        except RequestError as exc:
            request_id = exc.request_id or new_request_id()
            body = {"error": exc.reason, "status": exc.status, "request_id": request_id}
            return JSONResponse(body, exc.status, headers={"X-Request-ID": request_id, **exc.headers})

    async def predict(self, request: Request) -> Response:
        """The guide's handler: this input joins a batch, and waits for its own answer."""
        text = await self.server.read_input(request)  # 400, 408 or 413, with a one-line reason
        request_id = new_request_id()
        outcome = await self.embed(text)
        if isinstance(outcome, BaseException):
            log.error("request %s: the model failed on its input", request_id, exc_info=outcome)
            raise RequestError(500, f"the model failed on this input: {type(outcome).__name__}",
                               request_id=request_id)
        return Response(encode_json(outcome), media_type="application/json",
                        headers={"X-Request-ID": request_id})


def build_app(args: argparse.Namespace):
    settings = {k: v for k, v in vars(args).items() if k not in ("host", "port", "address")}
    options: dict = {
        "max_ongoing_requests": args.max_ongoing_requests or 2 * args.max_batch_size,
        "max_queued_requests": args.max_queue if args.max_queue and args.max_queue > 0 else -1,
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": _replica_gpus(args)},
    }
    if args.autoscale_max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": args.replicas,
            "max_replicas": args.autoscale_max_replicas,
            "target_ongoing_requests": args.max_batch_size,
        }
    else:
        options["num_replicas"] = args.replicas
    return Embedder.options(**options).bind(settings)


def _replica_gpus(args: argparse.Namespace) -> float:
    if args.replica_gpus is not None:
        return args.replica_gpus
    return 1.0 if args.device.startswith("cuda") else 0.0


def wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def shut_down(own_cluster: bool) -> None:
    """Delete the app; stop Ray if this process started it. Never hangs past SHUTDOWN_TIMEOUT_S."""
    watchdog = threading.Timer(SHUTDOWN_TIMEOUT_S, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    try:
        if own_cluster:
            ray.shutdown()  # takes the controller, the proxy and the replicas with it
        else:
            serve.delete(VARIANT)  # the cluster, and Serve's proxies on it, stay up
            ray.shutdown()
    finally:
        watchdog.cancel()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if not args.online:
        env["HF_HUB_OFFLINE"] = "1"  # nothing in a replica may reach the hub
    own_cluster = args.address is None
    ray.init(address=args.address or "local", include_dashboard=False, logging_level=args.log_level.upper(),
             runtime_env={"env_vars": env})
    try:
        http_options = {"host": args.host, "port": args.port}
        if args.queue_timeout_ms:
            http_options["request_timeout_s"] = args.queue_timeout_ms / 1000
        serve.start(http_options=http_options)
        serve.run(build_app(args), name=VARIANT, route_prefix="/", blocking=False)
        log.info("serving %s on http://%s:%d/", VARIANT, args.host, args.port)
        wait_for_stop()
        log.info("stopping")
    finally:
        shut_down(own_cluster)


if __name__ == "__main__":
    main()
