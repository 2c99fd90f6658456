"""The command line every variant shares: `python server_variants/NAME.py --help`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass, fields

import uvicorn

from servelab import allocator
from servelab.models import ModelLoadError
from servelab.server import SHUTDOWN_GRACE_S, Server

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """One variant's flags, as parsed; the defaults and their help live in build_parser alone."""

    host: str
    port: int
    model: str | None
    task: str | None
    device: str
    online: bool
    torch_threads: int | None
    allocator: str
    mmap_threshold_kb: int
    max_body_bytes: int
    body_timeout_s: float
    keep_alive_s: int
    max_connections: int | None
    max_queue: int | None
    queue_timeout_ms: float | None
    trace: str | None
    log_level: str
    access_log: bool
    max_wait_ms: float | None = None  # None: this variant has no such flag
    max_batch_size: int | None = None
    slo_ms: float | None = None  # slo_aware's plan; None there: measured at start-up
    max_batch_tokens: int | None = None
    slo_headroom: float | None = None
    without: list[str] | None = None

PLAN_PARTS = ("sizing", "sorting", "admission")

# nginx's keepalive_timeout default: above the idle timeouts of common pools and proxies (an AWS
# load balancer's is 60 s), which is what matters: https://nginx.org/r/keepalive_timeout
KEEP_ALIVE_S = 75


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser(variant: str, doc: str, defaults: dict) -> argparse.ArgumentParser:
    """`defaults` names the tunables this variant has and their values; others are absent."""
    parser = argparse.ArgumentParser(prog=f"{variant}.py", description=doc, formatter_class=_HelpFormatter)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8000, help="port to listen on")
    add("--model", default=None, help="model folder or hub id (default: the packaged all-MiniLM-L6-v2, "
        "served offline as sentence embeddings)")
    add("--task", default=None, help="pipeline task, e.g. fill-mask; default: read from the model's config")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: cuda when torch sees one), or "
        "emulated:PROFILE (the pipeline on this CPU, its forward pass a wait timed by "
        "servelab/profiles/PROFILE.json or a profile's path)")
    add("--online", action="store_true", help="allow downloading --model from the Hugging Face hub "
        "(default: offline, only folders and the local cache)")
    add("--torch-threads", type=int, default=None,
        help="torch intra-op threads (default: torch's own choice)")
    add("--allocator", choices=allocator.CHOICES, default="auto",
        help="the malloc to serve on: jemalloc holds memory flat where glibc's fragments over batches "
        "of ever-new shapes (servelab/allocator.py); auto: jemalloc if one is installed, else glibc")
    add("--mmap-threshold-kb", type=int, default=0,
        help="with glibc's malloc: blocks this large get their own pages, returned when freed, so "
        "a rare large batch leaves less lasting RSS growth, at a cost in speed (128: 15%% fewer "
        "answers per second on the CPU); 0: glibc's default, which raises it up to 32 MB")
    add("--max-body-bytes", type=int, default=64 * 1024,
        help="larger bodies get 413 (the rest is read and dropped first, so that the client can read it)")
    add("--body-timeout-s", type=float, default=10.0,
        help="a body not received whole within this gets 408: a trickling client cannot hold a request open")
    add("--keep-alive-s", type=int, default=KEEP_ALIVE_S,
        help="an idle kept-alive connection is closed after this long. Longer than the idle expiry of "
        "the clients' own pools (httpx 5 s, aiohttp 15 s, a proxy's 60 s), so that the client always "
        "closes first: a server that closes as a request arrives resets it, and the client cannot "
        "tell whether it was taken (uvicorn's own default, 5 s, races httpx's 5 s)")
    add("--max-connections", type=int, default=defaults.get("max_connections"),
        help="open connections at most; a request that arrives while more are open gets 503 (its body "
        "read first, so that the client reads the 503) and its connection closed (off when not given)")
    if "max_wait_ms" in defaults:
        add("--max-wait-ms", type=float, default=defaults["max_wait_ms"], help=defaults["max_wait_ms_help"])
    if "max_batch_size" in defaults:
        add("--max-batch-size", type=int, default=defaults["max_batch_size"],
            help=defaults.get("max_batch_size_help", "a batch closes as soon as it holds this many requests"))
    if "slo_ms" in defaults:
        plan = parser.add_argument_group("the plan (slo_aware)")
        plan.add_argument("--slo-ms", type=float, default=None,
                          help="latency objective: every batch is planned, and every request admitted, so "
                          "that it is answered within this many ms of its arrival (default: 10x the "
                          "time of one input, measured at start-up)")
        plan.add_argument("--slo-headroom", type=float, default=defaults["slo_headroom"],
                          help="admit against this share less than the objective: what a client waits "
                          "for outside the server's view (its request read, its answer written), and the "
                          "error of predicting the queue ahead. A request already admitted is given up "
                          "only if it would miss by more than half this share")
        plan.add_argument("--max-batch-tokens", type=int, default=defaults["max_batch_tokens"],
                          help="a batch holds at most this many padded token positions (TEI's "
                          "max_batch_tokens): what bounds its memory")
        plan.add_argument("--without", action="append", choices=PLAN_PARTS, default=[],
                          help="turn one part of the plan off, to see what it is worth (repeatable): "
                          "sizing (a fixed --max-batch-size cap instead), sorting (one batch in "
                          "arrival order), admission (no 503 from predictions)")
    breaker = parser.add_argument_group("circuit breaking (off when not given)")
    breaker.add_argument("--max-queue", type=int, default=defaults.get("max_queue"),
                         help="a request arriving while this many wait gets 503 at once, with Retry-After; "
                         "counts waiting requests only, not the batch being computed; 0: no limit")
    breaker.add_argument("--queue-timeout-ms", type=float, default=defaults.get("queue_timeout_ms"),
                         help="a request not started within this many ms gets 504 at that moment and is "
                         "never computed; time in the running batch does not count; 0: no timeout")
    add("--trace", default=None, metavar="FILE", help="append one JSON line per batch (times, size, close "
        "reason, each request's arrival, start and answer) to FILE")
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add("--access-log", action="store_true", help="log every request (costs CPU under load)")
    return parser


def parse_settings(variant: str, doc: str, defaults: dict, argv: list[str] | None = None) -> Settings:
    args = build_parser(variant, doc, defaults).parse_args(argv)
    names = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in vars(args).items() if k in names})


def main(variant: str, doc: str, defaults: dict, build_app, argv: list[str] | None = None) -> None:
    """Parse the flags, load the model once, serve until SIGTERM or Ctrl-C."""
    settings = parse_settings(variant, doc, defaults, argv)
    allocator.run_under(settings.allocator)  # may start this process again, under jemalloc
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level.upper(), format=log_format)
    server = Server(variant, settings)
    try:
        server.load_model()
    except ModelLoadError as exc:
        sys.exit(f"error: {exc}")
    log.info("malloc: %s (--allocator)", allocator.in_use())
    DrainingServer(uvicorn_config(build_app(server), settings), server).run()


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """uvicorn's configuration from the flags (the tests' in-thread servers use it too)."""
    options = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
               "access_log": settings.access_log, "timeout_keep_alive": settings.keep_alive_s,
               "timeout_graceful_shutdown": int(SHUTDOWN_GRACE_S) + 3}
    return uvicorn.Config(app, **options | overrides)


BACKLOG_DRAIN_TICK_S = 0.05
BACKLOG_DRAIN_MAX_S = 1.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling ours when shutdown starts so that queued requests drain."""

    def __init__(self, config: uvicorn.Config, server: Server):
        super().__init__(config)
        self.app_server = server
        server.open_connections = lambda: len(self.server_state.connections)  # for --max-connections

    async def shutdown(self, sockets=None):
        self.app_server.begin_shutdown()
        await self.take_in_the_backlog()
        await super().shutdown(sockets)

    async def take_in_the_backlog(self) -> None:
        """Listen on while connections keep coming in, up to BACKLOG_DRAIN_MAX_S.

        The kernel completes a client's handshake before uvicorn accepts the connection, and a
        busy event loop accepts late. Closing the listener resets whatever waits in its backlog,
        with the requests already sent; uvicorn then closes every connection whose request it
        has not read yet. Listening a moment longer, those requests are read and answered (503,
        since we are closing). An idle server waits one tick."""
        state = self.server_state
        give_up = time.monotonic() + BACKLOG_DRAIN_MAX_S
        seen = None
        while time.monotonic() < give_up:
            now = ({id(c) for c in state.connections}, state.total_requests)
            if now == seen:
                return
            seen = now
            await asyncio.sleep(BACKLOG_DRAIN_TICK_S)
