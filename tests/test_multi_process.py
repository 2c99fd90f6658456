"""multi_process as real processes: each caller its own answer across front ends, the same errors
as the other variants, the breaker in the model process, a dead model process seen by /health,
and no process left behind after SIGTERM, or after its parent is killed."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from servelab.paths import VARIANTS_DIR
from servelab.process import ServerProcess
from tests.conftest import BREAKER_OFF, post
from tests.test_variants import (
    assert_bad_bodies_refused,
    assert_each_got_its_own,
    distinct_inputs,
    post_all,
    post_bad_bodies,
)

VARIANT = "multi_process"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_help_names_the_front_ends_and_the_common_flags():
    result = subprocess.run([sys.executable, str(VARIANTS_DIR / f"{VARIANT}.py"), "--help"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--device", "--torch-threads", "--max-wait-ms", "--max-batch-size",
                 "--max-queue", "--queue-timeout-ms", "--front-ends", "--cores"):
        assert flag in result.stdout
    assert "--listen-fd" not in result.stdout  # the children's own flags stay hidden


def test_answers_are_their_own_errors_are_the_same_and_sigterm_leaves_nothing(default_model):
    bodies = distinct_inputs(150)
    expected = np.array([default_model.predict([text])[0] for text in bodies])
    with ServerProcess(VARIANT, ["--front-ends", "2", "--device", "cpu", *BREAKER_OFF]) as server:
        pids = children(server.pid)
        replies = asyncio.run(post_all(server.url, bodies))
        with_torch = [pid for pid in pids if "libtorch" in Path(f"/proc/{pid}/maps").read_text()]
        as_json = httpx.post(server.url + "/", json={"inputs": bodies[3]}, timeout=30)
        bad = post_bad_bodies(server.url)
        info = httpx.get(server.url + "/info").json()
        metrics = server.metrics_text()
        supervisor = server.process
        start = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)  # the parent alone, as a process manager would
        code = supervisor.wait(timeout=15)
        stopped_s = time.monotonic() - start
        log = server.output()
    assert len(pids) == 3, pids  # the model process and two front ends
    assert len(with_torch) == 1, "only the model process loads torch; the front ends tokenize without it"
    assert_each_got_its_own(replies, expected)
    assert len({r.headers["x-request-id"] for r in replies}) == len(bodies)
    assert as_json.status_code == 200
    assert np.allclose(as_json.json(), expected[3], atol=1e-5)
    assert_bad_bodies_refused(bad)
    assert info["variant"] == VARIANT
    assert info["front_end"]["count"] == 2
    assert info["model"]["task"] == "feature-extraction"
    assert "servelab_batch_size_count" in metrics  # the model process's batches
    assert "servelab_requests_total" in metrics  # this front end's statuses
    assert log.count("servelab.models: [model ") == 1, "one model copy, in the model process"
    assert "loaded all-MiniLM" in log
    assert code == 0
    assert stopped_s < 10
    assert not [pid for pid in pids if alive(pid)], "a child outlived SIGTERM"


def test_the_breaker_refuses_in_the_model_process():
    args = ["--front-ends", "2", "--device", "cpu", "--max-batch-size", "1", "--max-wait-ms", "0",
            "--max-queue", "6", "--queue-timeout-ms", "25"]
    with ServerProcess(VARIANT, args) as server:
        replies = asyncio.run(post_all(server.url, distinct_inputs(80)))
        after = post(server.url, "and now, at rest")
    statuses = {r.status_code for r in replies}
    assert statuses <= {200, 503, 504}
    assert {503, 504} <= statuses, [r.status_code for r in replies]
    for reply in replies:
        if reply.status_code == 503:
            assert "overloaded" in reply.json()["error"]
            assert int(reply.headers["retry-after"]) >= 1
        if reply.status_code == 504:
            assert reply.json()["request_id"] == reply.headers["x-request-id"]
    assert after.status_code == 200


def test_cores_a_dead_model_process_fails_health_and_a_killed_parent_leaves_no_orphans():
    with ServerProcess(VARIANT, ["--front-ends", "2", "--device", "cpu", "--cores", "0-1"]) as server:
        pids = children(server.pid)
        model = next(p for p in pids if "--role\0model" in Path(f"/proc/{p}/cmdline").read_text())
        pinned = sorted(os.sched_getaffinity(p) for p in pids if p != model)
        assert os.sched_getaffinity(model) == {0}  # the model process on the first core
        assert pinned == [{1}, {1}]  # the front ends on the rest
        os.kill(model, signal.SIGKILL)
        # Each front end sees it at its next heartbeat (0.5 s): then every /health is 503.
        seen = []
        assert wait_until(lambda: seen.append(httpx.get(server.url + "/health", timeout=5)) or
                          [r.status_code for r in seen[-6:]] == [503] * 6, 10)
        health = seen[-1].json()
        refused = post(server.url, "anyone there?")
        server.process.kill()  # the parent, by SIGKILL: it cannot stop its children itself
        server.process.wait()
        gone = wait_until(lambda: not any(alive(p) for p in pids), 10)
    assert "model process" in health["reason"]
    assert refused.status_code == 503
    assert gone, [p for p in pids if alive(p)]
