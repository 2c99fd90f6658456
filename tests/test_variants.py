"""Every variant as a real process with a real model: correct answers under concurrency,
the fill-mask path, bad inputs, one model copy, clean shutdown; and the shared code identical."""

import ast
import asyncio
import gc
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from servelab.paths import ALL_VARIANTS, VARIANTS_DIR
from servelab.process import ServerProcess
from tests.conftest import breaker_off, post
from tests.test_abuse import request_bytes, status_of

WORDS = [
    "alpha", "river", "quiet", "engine", "purple", "market",
    "seven", "garden", "thunder", "lamp", "ocean", "violin",
]


def distinct_inputs(count: int) -> list[str]:
    """Inputs of varied length, so that batches carry padding."""
    return [f"request {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 25))
            for i in range(count)]


async def post_all(url: str, bodies: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=len(bodies)), timeout=120) as client:
        return await asyncio.gather(*(client.post(url + "/", content=b.encode()) for b in bodies))


# Bodies every server here must refuse, each with its status and our error body. The servers
# started as processes (multi_process, the frameworks) are checked against them.
BAD_BODIES = {
    "malformed JSON": (b'{"inputs": ', {"Content-Type": "application/json"}, 400),
    "empty": (b"  ", {}, 400),
    "not UTF-8": (b"\xff\xfe", {}, 400),
    "too big": (b"x" * (65 * 1024), {}, 413),
}


def post_bad_bodies(url: str) -> dict[str, httpx.Response]:
    return {why: post(url, body, headers=headers) for why, (body, headers, _) in BAD_BODIES.items()}


def assert_each_got_its_own(replies: list[httpx.Response], expected: np.ndarray) -> None:
    """Every reply a 200 carrying the embedding of its own input (cosine, not equality: batching
    pads inputs, which moves the last digits)."""
    assert [r.status_code for r in replies] == [200] * len(replies), {r.status_code for r in replies}
    got = np.array([r.json() for r in replies])
    cosines = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosines.min() >= 0.9999, f"worst cosine {cosines.min():.6f} at input {cosines.argmin()}"


def assert_bad_bodies_refused(bad: dict[str, httpx.Response]) -> None:
    assert {why: r.status_code for why, r in bad.items()} == {why: b[2] for why, b in BAD_BODIES.items()}
    for reply in bad.values():
        assert set(reply.json()) == {"error", "status", "request_id"}


def shared_sections(path) -> dict[str, str]:
    """The parts every variant must share, as source text: build_app and the main block."""
    source = path.read_text()
    tree = ast.parse(source)
    parts = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "build_app":
            parts["build_app"] = ast.get_source_segment(source, node)
        if isinstance(node, ast.If) and "__main__" in ast.get_source_segment(source, node.test):
            parts["main"] = ast.get_source_segment(source, node)
    return parts


def test_the_request_path_is_identical_in_every_variant():
    reference = shared_sections(VARIANTS_DIR / "naive.py")
    assert set(reference) == {"build_app", "main"}
    for name in ALL_VARIANTS[1:]:
        assert shared_sections(VARIANTS_DIR / f"{name}.py") == reference, f"{name}.py drifted from naive.py"


def test_help_explains_each_flag(variant):
    result = subprocess.run([sys.executable, str(VARIANTS_DIR / f"{variant}.py"), "--help"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--model", "--task", "--device", "--max-queue", "--queue-timeout-ms"):
        assert flag in result.stdout
    assert ("--max-wait-ms" in result.stdout) == (variant not in ("naive", "slo_aware"))
    capped = ("capped_batch", "thread_offloaded", "slo_aware")
    assert ("--max-batch-size" in result.stdout) == (variant in capped)
    assert ("--slo-ms" in result.stdout) == (variant == "slo_aware")


@pytest.mark.parametrize("model", ["/no/such/folder", "someone/not-in-the-cache"])
def test_a_model_that_cannot_be_had_is_one_clear_line_and_a_nonzero_exit(model):
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(VARIANTS_DIR / "deadline.py"), "--model", model],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert model in lines[0], result.stderr


def test_concurrent_requests_each_get_the_embedding_of_their_own_input(variant, default_model):
    bodies = distinct_inputs(200)
    expected = np.array([default_model.predict([text])[0] for text in bodies])
    with ServerProcess(variant, breaker_off(variant)) as server:
        replies = asyncio.run(post_all(server.url, bodies))
        log = server.output()
        malloc = httpx.get(server.url + "/info").json()["malloc"]
    assert malloc == "jemalloc", "make setup installs one (ray's); servelab/allocator.py finds it"
    assert [r.status_code for r in replies] == [200] * len(bodies)
    got = np.array([r.json() for r in replies])
    assert got.shape == (200, 384)
    cosines = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosines.min() >= 0.9999, f"worst cosine {cosines.min():.6f} at input {cosines.argmin()}"
    assert log.count("servelab.models: loaded ") == 1, "the model is loaded once per server process"


def test_fill_mask_answers_like_a_direct_call_and_rejects_bad_inputs(variant, tiny_fill_mask_model):
    from servelab.models import load_model

    direct = load_model(str(tiny_fill_mask_model), device="cpu")
    bodies = [f"{text} [MASK] ." for text in distinct_inputs(40)]
    with ServerProcess(variant, ["--model", str(tiny_fill_mask_model), *breaker_off(variant)]) as server:
        info = httpx.get(server.url + "/info").json()
        replies = asyncio.run(post_all(server.url, bodies))
        bad = {
            "no mask at all": post(server.url, "no mask here"),
            "two masks": post(server.url, "[MASK] and [MASK]"),
            "too long": post(server.url, "[MASK] " + "word " * 200),
        }
        good = post(server.url, "test [MASK]")
    assert info["model"]["task"] == "fill-mask"
    assert info["model"]["mask_token"] == "[MASK]"
    assert all(r.status_code == 200 for r in replies)
    for text, reply in zip(bodies, replies, strict=True):
        assert [c["token"] for c in reply.json()] == [c["token"] for c in direct.predict([text])[0]]
    for why, reply in bad.items():
        assert reply.status_code == 400, why
    assert "exactly one [MASK]" in bad["no mask at all"].json()["error"]
    assert "tokens" in bad["too long"].json()["error"]
    assert good.status_code == 200
    assert {"score", "token", "token_str", "sequence"} <= set(good.json()[0])


@pytest.mark.parametrize("variant", ["naive", "thread_offloaded", "slo_aware"])
def test_sigterm_under_load_answers_everyone_and_exits_in_seconds(variant):
    bodies = distinct_inputs(150)
    with ServerProcess(variant) as server:

        async def load_then_terminate():
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=150), timeout=30) as client:
                posts = (client.post(server.url + "/", content=b.encode()) for b in bodies)
                tasks = [asyncio.create_task(post) for post in posts]
                await asyncio.sleep(0.5)
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                # A request after the SIGTERM, on a new connection: refused, or answered 503.
                async with httpx.AsyncClient(timeout=10) as late_client:
                    try:
                        late = (await late_client.post(server.url + "/", content=b"too late")).status_code
                    except httpx.ConnectError:
                        late = "refused"
                return await asyncio.gather(*tasks, return_exceptions=True), late

        process = server.process
        start = time.monotonic()
        outcomes, late = asyncio.run(load_then_terminate())
        process.wait(15)
        exit_seconds = time.monotonic() - start
        log = server.output()
    statuses = [o.status_code if isinstance(o, httpx.Response) else type(o).__name__ for o in outcomes]
    assert exit_seconds < 10
    assert late in ("refused", 503)
    # uvicorn re-raises the signal it handled once it has shut down, so the exit is -SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log
    answered = [s for s in statuses if isinstance(s, int)]
    assert set(answered) <= {200, 503, 504}, statuses  # 504: the breaker of thread_offloaded
    assert statuses.count(200) > 0
    # Nobody hangs: a request is answered, or its connection was refused or closed, never left open.
    assert all(isinstance(s, int) or s in ("ConnectError", "RemoteProtocolError", "ReadError")
               for s in statuses), statuses


def test_connections_the_kernel_took_before_a_sigterm_get_an_answer_not_a_reset():
    """The kernel completes a handshake before the server accepts the connection. Stopped, the
    server accepts nothing; it gets SIGTERM and resumes with 20 requests waiting in the listen
    backlog. Each must be read and answered: closing the listener first would reset them all.
    (uvicorn accepts what is waiting before it closes; this keeps it so.)"""
    with ServerProcess("thread_offloaded") as server:
        server.process.send_signal(signal.SIGSTOP)
        sockets = []
        try:
            for i in range(20):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
                sock.sendall(request_bytes(f"waiting in the backlog {i}".encode()))
                sockets.append(sock)
            server.process.send_signal(signal.SIGTERM)
        finally:
            server.process.send_signal(signal.SIGCONT)
        statuses = [status_line(sock) for sock in sockets]
        server.process.wait(15)
    assert set(statuses) <= {200, 503}, statuses


def status_line(sock: socket.socket) -> int | str | None:
    """The status of the reply on `sock`, or what happened instead."""
    try:
        with sock, sock.makefile("rb") as reply:
            line = reply.readline()
    except ConnectionResetError:
        return "reset"
    return status_of(line) if line else "closed"


def test_a_server_process_log_folder_goes_with_the_object():
    """A suite starts hundreds of servers; each one's temporary log folder must not outlive it."""
    server = ServerProcess("deadline")
    folder = server.log.parent
    assert folder.is_dir()
    del server
    gc.collect()
    assert not folder.exists()


def test_allocator_glibc_serves_on_the_c_librarys_malloc_in_the_same_process():
    with ServerProcess("thread_offloaded", ["--allocator", "glibc"]) as glibc:
        on_glibc = httpx.get(glibc.url + "/info").json()["malloc"]
    with ServerProcess("thread_offloaded", []) as auto:
        on_auto = httpx.get(auto.url + "/info").json()["malloc"]
        # Started again under jemalloc, not forked: the process id ServerProcess watches serves.
        maps = Path(f"/proc/{auto.process.pid}/maps").read_text()
    assert (on_glibc, on_auto) == ("glibc", "jemalloc")
    assert "libjemalloc" in maps
