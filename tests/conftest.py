from __future__ import annotations

import contextlib
import importlib.util
import threading
import time

import httpx
import pytest

from servelab import cli
from servelab.paths import ALL_VARIANTS, VARIANTS_DIR
from servelab.process import free_port
from servelab.server import Server
from tests.fakes import FakeModel


def load_variant(name: str):
    """Import server_variants/NAME.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"variant_{name}", VARIANTS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serve_in_thread(variant: str, args: list[str] = (), model=None):
    """Run a variant in this process on a free port, with a fake model; yields (url, server)."""
    module = load_variant(variant)
    settings = cli.parse_settings(variant, module.__doc__, module.DEFAULTS, list(args))
    server = Server(variant, settings, model or FakeModel())
    port = free_port()
    config = cli.uvicorn_config(module.build_app(server), settings, host="127.0.0.1", port=port,
                                log_level="warning")
    uv = cli.DrainingServer(config, server)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not uv.started or httpx.get(url + "/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "in-thread server did not start"  # (or is not ready)
        time.sleep(0.01)
    try:
        yield url, server
    finally:
        uv.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "server thread did not stop"


@pytest.fixture(params=ALL_VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_fill_mask_model(tmp_path_factory):
    from servelab.random_models import build_fill_mask_model

    return build_fill_mask_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def default_model():
    from servelab.models import load_model

    return load_model()


# For tests of correctness under a burst: thread_offloaded's default breaker would shed some.
BREAKER_OFF = ["--max-queue", "0", "--queue-timeout-ms", "0"]


def breaker_off(variant: str) -> list[str]:
    """BREAKER_OFF, and slo_aware's admission off too: it would refuse part of a burst. Its
    objective is a minute: its default, 10x the fake model's batch (50 ms), is less than a loaded
    machine can take to read a burst of 100, and sizing would give up the oldest with a 504."""
    plan_off = ["--without", "admission", "--slo-ms", "60000"]
    return BREAKER_OFF + (plan_off if variant == "slo_aware" else [])


def post(url: str, body: bytes | str, **kwargs) -> httpx.Response:
    if isinstance(body, str):
        body = body.encode()
    return httpx.post(url + "/", content=body, timeout=30, **kwargs)
