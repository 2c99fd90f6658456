"""The Locust load tests (loadtests/) against a real variant, always run as a subprocess."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import subprocess
import sys

import pytest

from servelab.bench import cli
from servelab.bench.loadgen import DEFAULTS, Load, read_requests
from servelab.paths import CORPUS, LOADTESTS, REPO
from servelab.process import ServerProcess


def locust(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests", "--headless", "--host", host, *args],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_corpus_is_what_its_generator_makes():
    done = subprocess.run(
        [sys.executable, str(LOADTESTS / "_make_prompts.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lengths = [len(line.split()) for line in CORPUS.read_text().splitlines()]
    assert len(lengths) == 1000
    assert min(lengths) == 3
    assert max(lengths) == 60


def test_locust_declares_every_option_of_the_table_with_its_default():
    # In a subprocess: importing locust here would monkey-patch this test process with gevent.
    code = (
        "import sys; sys.path.insert(0, 'loadtests'); import locustfile, _options\n"
        "from locust.argument_parser import parse_options\n"
        "options = parse_options(['--headless'])\n"
        "print({name: getattr(options, name) for name in _options.DEFAULTS})"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVELAB_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, text=True,
        timeout=60,
    )
    assert ast.literal_eval(done.stdout.splitlines()[-1]) == DEFAULTS


def test_the_bench_and_load_take_their_load_defaults_from_the_same_table():
    bench = cli.build_parser().parse_args(["bench", "--variant", "deadline"])
    sweep = cli.build_parser().parse_args(["sweep", "--variants", "deadline"])
    for name in cli.PASSED_ON:
        assert getattr(bench, name) == getattr(sweep, name) == DEFAULTS[name], name
    for name in ("spike_factor", "ramp_start_users", "ramp_step_users", "ramp_step_s", "ramp_max_users"):
        assert getattr(bench, name) == DEFAULTS[name], name
    load = Load()
    own = {"scenario", "capacity_rate"}  # a benchmark is open loop; a spike's capacity must be given
    for field in dataclasses.fields(Load):
        if field.name in DEFAULTS and field.name not in own:
            assert getattr(load, field.name) == DEFAULTS[field.name], field.name
    assert load.rate == DEFAULTS["offered_rate"]
    loads = [Load.open(5), Load.steady(2), Load.spike(50), Load(scenario="ramp", rate=None)]
    passed = {arg for load in loads for arg in load.locust_args() if arg.startswith("--")}
    assert {flag[2:].replace("-", "_") for flag in passed} - {"stop_timeout"} <= set(DEFAULTS)


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess("deadline", {"max_wait_ms": 2}, log=log, torch_threads=1) as server:
        yield server.url


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
    assert "open loop: " in done.stderr
    assert "requests sent" in done.stderr
    rows = read_requests(log)
    assert 55 <= len(rows) <= 61
    assert all(r["status"] == 200 and r["user"] == "open" for r in rows)
    due = sorted(r["intended_send_s"] for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert all(abs(gap - 0.05) < 1e-3 for gap in gaps)  # the schedule, not the answers, sets the pace
    assert all(r["latency_ms"] >= r["service_ms"] for r in rows)


def test_fill_mask_inputs_carry_the_mask(tiny_fill_mask_model, tmp_path):
    """The load tests ask /info for the task; a fill-mask server answers 400 to an input without a mask."""
    args = {"model": str(tiny_fill_mask_model), "task": "fill-mask", "max_wait_ms": 2}
    with ServerProcess("deadline", args, log=tmp_path / "server.log", torch_threads=1) as server:
        log = tmp_path / "requests.csv"
        done = locust(server.url, "-u", "2", "-r", "2", "-t", "3s", "--request-log", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "task fill-mask" in done.stderr
    rows = read_requests(log)
    assert rows
    assert all(r["status"] == 200 for r in rows), {r["error"] for r in rows}
