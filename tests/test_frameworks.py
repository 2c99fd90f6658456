"""LitServe and Ray Serve (server_variants/frameworks/) as real servers, started as the bench
starts a variant: each of 50 concurrent callers gets its own embedding, bad inputs get 4xx in our
error shape, and a SIGTERM to the parent alone leaves no process behind. Each is skipped where
its framework is not installed (requirements/frameworks.txt)."""

import asyncio
import contextlib
import os
import signal
import time
import warnings

import httpx
import numpy as np
import psutil
import pytest

from servelab.process import ServerProcess, variant_path
from tests.test_variants import (
    assert_bad_bodies_refused,
    assert_each_got_its_own,
    distinct_inputs,
    post_all,
    post_bad_bodies,
)

APPS = {"frameworks/litserve_app": "litserve", "frameworks/ray_serve_app": "ray.serve"}


def session_members(sid: int) -> list[psutil.Process]:
    """Every live process of the server's session: ServerProcess starts it in a new one, so this
    finds its children even after they are re-parented."""
    found = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


@pytest.mark.parametrize(("app", "module"), APPS.items(), ids=["litserve", "ray_serve"])
def test_own_embeddings_4xx_errors_and_sigterm_leaves_nothing(app, module, default_model):
    with warnings.catch_warnings():  # Ray warns as it imports (pydantic); warnings are errors here
        warnings.simplefilter("ignore")
        pytest.importorskip(module)
    assert variant_path(app).is_file()  # the name the bench takes: --variant frameworks/NAME
    bodies = distinct_inputs(50)
    expected = np.array([default_model.predict([text])[0] for text in bodies])
    server = ServerProcess(app, ["--device", "cpu", "--torch-threads", "1"], ready_timeout_s=120)
    with server:
        sid = server.pid
        try:
            replies = asyncio.run(post_all(server.url, bodies))
            as_json = httpx.post(server.url + "/", json={"inputs": bodies[3]}, timeout=30)
            bad = post_bad_bodies(server.url)
            members = session_members(sid)
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)  # the parent alone, as a process manager would
            code = server.process.wait(timeout=30)
            stopped_s = time.monotonic() - start
            deadline = time.monotonic() + 10
            while session_members(sid) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = session_members(sid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGKILL)  # whatever a failed assertion below leaves
    assert_each_got_its_own(replies, expected)
    assert as_json.status_code == 200
    assert np.allclose(as_json.json(), expected[3], atol=1e-5)
    assert_bad_bodies_refused(bad)
    assert server.info["model"]["task"] == "feature-extraction"
    assert server.info["settings"]["max_batch_size"] == 16
    assert len(members) > 1, "the framework's own processes (workers, Ray's daemons) were not found"
    assert code == 0, server.output()[-3000:]
    assert stopped_s < 30
    assert not left, f"outlived SIGTERM: {[(p.pid, p.name()) for p in left]}"
