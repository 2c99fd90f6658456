"""Start a server variant as a subprocess and always stop it: for tests, the runner and notebooks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
VARIANTS_DIR = REPO / "server_variants"
VARIANTS = ["naive", "per_get_timeout", "deadline", "capped_batch", "thread_offloaded"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A running variant. Use as a context manager: the process is stopped however the block ends."""

    def __init__(self, variant: str, args: list[str] = (), port: int | None = None,
                 cpus: set[int] | None = None, startup_timeout_s: float = 120, env: dict | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.variant, self.port = variant, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"{variant}-", suffix=".log", delete=False)
        command = [sys.executable, str(VARIANTS_DIR / f"{variant}.py"), "--port", str(self.port), *args]
        self.command = command
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=preexec, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.log.close()  # the child holds its own handle; we read the file by name
        try:
            self._wait_healthy(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.variant} exited with {self.process.returncode} before serving:\n"
                                   f"{self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.variant} not healthy after {timeout_s:.0f} s:\n{self.output()[-2000:]}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout_s: float = 10) -> int:
        """SIGTERM, then SIGKILL after timeout_s. Returns the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        os.unlink(self.log.name)
