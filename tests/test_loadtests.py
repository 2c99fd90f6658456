"""The Locust load tests (loadtests/) against a real variant, always run as a subprocess."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from servelab.bench.corpus import CORPUS, LOADTESTS, REPO
from servelab.bench.loadgen import read_requests
from servelab.process import ServerProcess

needs_server = pytest.mark.skipif(
    not (REPO / "server_variants" / "deadline.py").is_file(),
    reason="server_variants/deadline.py is not there yet",
)


def locust(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests", "--headless", "--host", host, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_corpus_is_what_its_generator_makes():
    done = subprocess.run(
        [sys.executable, str(LOADTESTS / "_make_prompts.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lengths = [len(line.split()) for line in CORPUS.read_text().splitlines()]
    assert len(lengths) == 1000 and min(lengths) == 3 and max(lengths) == 60


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess("deadline", {"max_wait_ms": 2}, log=log, torch_threads=1) as server:
        yield server.url


@needs_server
def test_plain_run_is_steady_closed_loop_users(deadline_server, tmp_path):
    log = tmp_path / "requests.csv"
    done = locust(deadline_server, "-u", "4", "-r", "4", "-t", "5s", "--request-log", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"ClosedLoopUser": 4' in done.stderr
    rows = read_requests(log)
    assert len(rows) > 10
    assert all(r["status"] == 200 for r in rows)
    assert {r["user"] for r in rows} == {"0", "1", "2", "3"}
    assert all(r["lateness_ms"] < 5 for r in rows)  # closed loop: due when the user is ready, sent then


@needs_server
def test_open_loop_keeps_its_schedule(deadline_server, tmp_path):
    log = tmp_path / "requests.csv"
    done = locust(
        deadline_server,
        "--scenario",
        "open",
        "--offered-rate",
        "20",
        "--arrivals",
        "uniform",
        "-t",
        "3s",
        "--request-log",
        str(log),
        "--seed",
        "7",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "open loop: " in done.stderr and "requests sent" in done.stderr
    rows = read_requests(log)
    assert 55 <= len(rows) <= 61
    assert all(r["status"] == 200 and r["user"] == "open" for r in rows)
    due = sorted(r["intended_send_s"] for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(abs(gap - 0.05) < 1e-3 for gap in gaps)  # the schedule, not the answers, sets the pace
    assert all(r["latency_ms"] >= r["service_ms"] for r in rows)


@needs_server
def test_fill_mask_inputs_carry_the_mask(tiny_fill_mask_model, tmp_path):
    """The load tests ask /info for the task; a fill-mask server answers 400 to an input without a mask."""
    args = {"model": str(tiny_fill_mask_model), "task": "fill-mask", "max_wait_ms": 2}
    with ServerProcess("deadline", args, log=tmp_path / "server.log", torch_threads=1) as server:
        log = tmp_path / "requests.csv"
        done = locust(server.url, "-u", "2", "-r", "2", "-t", "3s", "--request-log", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "task fill-mask" in done.stderr
    rows = read_requests(log)
    assert rows and all(r["status"] == 200 for r in rows), {r["error"] for r in rows}
