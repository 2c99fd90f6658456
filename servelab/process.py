"""A server variant run as a subprocess: start, wait until ready, warm up, always stop.

Used by the tests, the demo, the benchmark runner and the notebooks. The benchmark never
imports the server; it only speaks HTTP to it, as a client would.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

from servelab.paths import REPO, VARIANTS_DIR


class ServerError(RuntimeError):
    """The server would not start, or died; the message ends with the tail of its log."""


def variant_path(variant: str) -> Path:
    """A variant name (server_variants/NAME.py) or a path to a server script."""
    path = Path(variant)
    if path.suffix == ".py" and path.is_file():
        return path.resolve()
    path = VARIANTS_DIR / f"{variant}.py"
    if not path.is_file():
        known = sorted(p.stem for p in VARIANTS_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ServerError(
            f"no server variant {variant!r}: {path} does not exist (known: {', '.join(known) or 'none'})"
        )
    return path


@functools.cache
def accepted_flags(variant: str) -> frozenset[str]:
    """The flags a variant's command line takes (from its --help), e.g. naive has no --max-wait-ms."""
    done = subprocess.run(
        [sys.executable, str(variant_path(variant)), "--help"],
        check=False,
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise ServerError(f"{variant} --help failed:\n{done.stderr[-2000:]}")
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


def server_env(torch_threads: int | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def server_argv(args: dict | list | None) -> list[str]:
    """{"max_wait_ms": 2, "trace": None} -> ["--max-wait-ms", "2"]; a list passes as it is."""
    if args is None:
        return []
    if isinstance(args, (list, tuple)):
        return [str(a) for a in args]
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def pinning(cores: list[int] | None):
    """A preexec_fn for subprocess.Popen that pins the child (and all its threads) to cores."""
    if not cores:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return pin


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerProcess:
    """`with ServerProcess("deadline", {"max_wait_ms": 2}, log=...) as server:` ... always stopped.

    The server runs in its own process group, pinned to `cores`, and is stopped by that group
    (SIGTERM, then SIGKILL) on exit from the block, also on errors and Ctrl-C.
    """

    def __init__(
        self,
        variant: str,
        args: dict | list | None = None,
        *,
        log: Path | None = None,
        cores: list[int] | None = None,
        torch_threads: int | None = None,
        port: int | None = None,
        ready_timeout_s: float = 180.0,
    ):
        self.path = variant_path(variant)
        self.variant = self.path.stem
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = server_argv(args)
        if torch_threads is not None and "--torch-threads" not in argv:
            argv += ["--torch-threads", str(torch_threads)]
        self.argv = [sys.executable, str(self.path), "--host", "127.0.0.1", "--port", str(self.port), *argv]
        if log is None:
            # A log of our own: it outlives the process, for output() and error messages, and
            # goes with this object (a test suite starts hundreds of servers).
            folder = tempfile.mkdtemp(prefix="servelab-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            log = Path(folder) / f"{self.variant}.log"
        self.log = Path(log)
        self.cores = cores
        self.torch_threads = torch_threads
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.info: dict | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"server {self.variant} is not running")
        return self.process.pid

    def start(self) -> None:
        env = server_env(self.torch_threads)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=pinning(self.cores),
            )
        try:
            self.wait_ready()
            self.info = json.loads(http("GET", f"{self.url}/info", timeout=10)[1])
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"server {self.variant} exited with code {code} before it was ready:\n{tail(self.log)}"
                )
            try:
                if http("GET", f"{self.url}/health", timeout=2)[0] == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"server {self.variant} not ready after {self.ready_timeout_s:.0f} s:\n{tail(self.log)}"
                )
            time.sleep(0.2)

    def output(self) -> str:
        """Everything the server has printed so far."""
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ServerError(
                f"server {self.variant} died (exit code {self.process and self.process.poll()}):\n"
                f"{tail(self.log)}"
            )

    def metrics_text(self) -> str:
        code, body = http("GET", f"{self.url}/metrics", timeout=10)
        return body.decode() if code == 200 else ""

    def stop(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        stop_group(process, grace_s)


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process's group, wait, then SIGKILL it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # also any children left in the group
    process.wait()
