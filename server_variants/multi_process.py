"""Multi-process: thread_offloaded's batching, with the HTTP path spread over several processes.

Every other variant is one Python process, so HTTP parsing, JSON, tokenizing and the model's
driver share one interpreter's GIL; with the model on a fast GPU, that process is the limit. Here
N front-end processes each accept connections, read and check requests, tokenize, and write the
answers; ONE model process holds the one model copy, forms batches with thread_offloaded's policy
(max wait, max batch size, and its breaker: --max-queue gives 503, --queue-timeout-ms 504,
counted from the request's arrival at its front end) and runs them on the token ids. Between them,
ZeroMQ (servelab/link.py). A front end loads neither torch nor the model: its tokenizer is the
model's own, rebuilt with the `tokenizers` library. This file's own process only starts, watches
and stops the others.

Run:    python server_variants/multi_process.py --front-ends 2 [--cores 0-2]
Query:  curl -X POST -d "the weather is nice today" http://127.0.0.1:8000/
Bench:  python -m servelab bench --variant multi_process --server-cores 0-8 -- --front-ends 8
"""

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from servelab import allocator, cli
from servelab.jobs import Job, JobQueue
from servelab.models import ModelLoadError
from servelab.process import pinning
from servelab.server import SHUTDOWN_GRACE_S, Server

VARIANT = "multi_process"
DEFAULTS = {
    "max_wait_ms": 2.0,
    "max_wait_ms_help": "a batch starts at most this long after its first request was taken",
    "max_batch_size": 16,
    "max_queue": 64,  # thread_offloaded's breaker, for the same reasons
    "queue_timeout_ms": 1000.0,
    "max_connections": 1000,  # per front end
    "front_ends": 2,
}
STOP_WAIT_S = SHUTDOWN_GRACE_S + 4  # a front end drains its requests, then is killed
log = logging.getLogger("servelab.multi_process")


# -- the model process: thread_offloaded's batching, on token ids ---------------------------


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
        # A job's text is its token ids here: the front end tokenized it.
        outcomes = await asyncio.to_thread(server.model.predict_encoded, [job.text for job in batch])
        server.end_batch(batch, outcomes, start)


async def serve_model(server: Server, link: str, ready_file: Path) -> None:
    from servelab.link import ModelEndpoint

    endpoint = ModelEndpoint(link, server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C: the parent stops us, in order
    async with server.running(model_loop):
        serving = asyncio.create_task(endpoint.serve(), name="endpoint")
        ready_file.touch()  # noqa: ASYNC240 (once, a few microseconds)
        await stop.wait()
        # As thread_offloaded on SIGTERM: no new work; what is queued has the grace period.
        server.begin_shutdown()
        deadline = loop.time() + SHUTDOWN_GRACE_S + 0.5
        # Polled: "queue empty and no batch running" has no event of its own.
        while (server.queue.qsize() or server.running_batch) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # the last answers leave the socket
        serving.cancel()


# -- a front end: the same app and request path as thread_offloaded --------------------------


def build_app(server: Server) -> Starlette:
    async def predict(request: Request):
        """The guide's handler: queue this input, then wait for its own answer."""
        text = await server.read_input(request)  # 400 or 413, with a one-line reason
        job = server.enqueue(text)  # sent to the model process, tokenized (servelab/link.py)
        return await server.answer(job, request)  # 200, or 500, 503 or 504

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with server.running(None):  # its loop hands the model process's answers out
            yield

    return Starlette(
        routes=[Route("/", predict, methods=["POST"]), *server.routes],
        lifespan=lifespan,
        middleware=server.middleware,
        exception_handlers=server.exception_handlers,
    )


def run_front_end(settings, args) -> None:
    from servelab.link import FrontEndModel, FrontEndServer, hello

    def model_alive() -> bool:
        return _alive(args.model_pid) and os.getppid() == args.parent_pid

    try:
        model = FrontEndModel(hello(args.link, model_alive))
    except RuntimeError:
        return  # the model process failed to start; it and the parent say why
    front_end = {"index": args.front_end_index, "count": args.front_ends, "pid": os.getpid()}
    server = FrontEndServer(VARIANT, settings, model, args.link, front_end, lambda: _alive(args.model_pid))
    listener = socket.socket(fileno=args.listen_fd)
    config = cli.uvicorn_config(build_app(server), settings)
    cli.DrainingServer(config, server).run(sockets=[listener])


def run_model(settings, args) -> None:
    server = Server(VARIANT, settings)
    try:
        server.load_model()
    except ModelLoadError as exc:
        sys.exit(f"error: {exc}")
    try:
        asyncio.run(serve_model(server, args.link, Path(args.ready_file)))
    finally:  # also when the parent was killed and cannot clean up
        shutil.rmtree(Path(args.ready_file).parent, ignore_errors=True)


# -- this process: start, watch and stop the others -------------------------------------------


def supervise(settings, args) -> int:
    cores = _cores(args.cores)
    model_cores, front_cores = cores[:1], (cores[1:] or cores[:1])
    # One listening socket, bound here and inherited by every front end, rather than one
    # SO_REUSEPORT socket each: the port is claimed once, before any child starts (a busy port
    # is one clear error), no other process can join the group, and the front ends share one
    # accept queue, so whichever is idle takes the next connection instead of the kernel hashing
    # it onto a busy one.
    listener = socket.create_server((settings.host, settings.port), backlog=2048)
    listener.set_inheritable(True)
    folder = Path(tempfile.mkdtemp(prefix="servelab-mp-"))
    link, ready = f"ipc://{folder}/model.sock", folder / "model.ready"
    own = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    hidden = ["--link", link, "--parent-pid", str(os.getpid())]
    children: list[subprocess.Popen] = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        model = subprocess.Popen([*own, *hidden, "--role", "model", "--ready-file", str(ready)],
                                 preexec_fn=pinning(model_cores))
        fd = listener.fileno()
        front_ends = [
            subprocess.Popen([*own, *hidden, "--role", "front-end", "--model-pid", str(model.pid),
                              "--listen-fd", str(fd), "--front-end-index", str(i)],
                             pass_fds=[fd], preexec_fn=pinning([front_cores[i % len(front_cores)]]))
            for i in range(args.front_ends)
        ]
        children = [model, *front_ends]
        log.info("model process %d on cores %s; %d front ends %s on cores %s", model.pid, model_cores,
                 len(front_ends), [p.pid for p in front_ends], front_cores)
        code, model_ready, model_gone = 0, False, False
        while not stop:
            model_ready = model_ready or ready.exists()
            if model.poll() is not None and not model_ready:
                code = model.returncode or 1  # it could not load the model: it has said why
                break
            if model.returncode is not None and not model_gone:
                log.error("the model process exited (code %s): the front ends answer 503", model.returncode)
                model_gone = True
            if all(p.poll() is not None for p in front_ends):
                log.error("every front end has exited")
                code = 1
                break
            time.sleep(0.1)
        _stop(front_ends, STOP_WAIT_S)  # first: they drain, while the model answers their requests
        _stop([model], SHUTDOWN_GRACE_S + 2)
        return code
    finally:
        _stop(children, 0)
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def _stop(processes: list[subprocess.Popen], wait_s: float) -> None:
    """SIGTERM, wait up to wait_s for all, then SIGKILL whatever is left."""
    for p in processes:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
            p.wait()


def _cores(spec: str | None) -> list[int]:
    """--cores "0-2,5", or the cores this process may run on (as the bench's --server-cores pinned it)."""
    if not spec:
        return sorted(os.sched_getaffinity(0))
    cores: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return sorted(cores)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    return True


def _die_with_parent() -> None:
    """Linux: SIGTERM this child if its parent dies, even by SIGKILL: no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> None:
    parser = cli.build_parser(VARIANT, __doc__, DEFAULTS)
    processes = parser.add_argument_group("processes (multi_process)")
    processes.add_argument("--front-ends", "--workers", type=int, default=DEFAULTS["front_ends"],
                           help="front-end processes serving HTTP (the model process is one more)")
    processes.add_argument("--cores", default=None,
                           help="cores to pin to, e.g. 0-8: the model process on the first, the front "
                           "ends one each on the rest (all on it if it is the only one); default: the "
                           "cores this process may use")
    hidden = {"--role": "supervisor", "--link": None, "--ready-file": None, "--listen-fd": None,
              "--model-pid": None, "--parent-pid": None, "--front-end-index": None}
    for flag, default in hidden.items():
        parser.add_argument(flag, default=default, type=int if flag.endswith(("fd", "pid", "index")) else str,
                            help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = {f.name for f in fields(cli.Settings)}
    settings = cli.Settings(**{k: v for k, v in vars(args).items() if k in names})
    allocator.run_under(settings.allocator)  # may start this process again (its children inherit it)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                        f"[{args.role} {os.getpid()}] %(message)s")
    if args.front_ends < 1:
        parser.error("--front-ends must be at least 1")
    if args.role == "supervisor":
        sys.exit(supervise(settings, args))
    _die_with_parent()
    if os.getppid() != args.parent_pid:  # it died before prctl
        sys.exit(1)
    if args.role == "model":
        run_model(settings, args)
    else:
        run_front_end(settings, args)


if __name__ == "__main__":
    main()
