"""servelab.bench end to end: a real variant with the default model, a few seconds of load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servelab.bench import Load, Setup, run, sweep
from servelab.bench.corpus import sha256
from servelab.bench.sweep import read_points
from servelab.paths import REPO
from servelab.process import ServerError, ServerProcess


def test_run_writes_manifest_requests_and_a_sane_summary(tmp_path):
    # Uniform arrivals: a Poisson count over 5 s varies by about 14% from its mean.
    load = Load.open(rate=10, duration_s=5, arrivals="uniform")
    setup = Setup(results_dir=tmp_path, ceiling=70.0, bracket_seconds=0.3)
    result = run("deadline", {"max_wait_ms": 2}, load, setup, progress=None)

    assert result.run_dir.parent == tmp_path / "runs"
    assert result.run_dir.name.split("_")[1] == "deadline"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["git"]["commit"]
    assert manifest["git"]["dirty"] in (True, False)
    assert manifest["packages"]["torch"]
    assert manifest["packages"]["locust"]
    assert manifest["machine"]["cpu_count"] >= 1
    assert manifest["server"]["info"]["variant"] == "deadline"
    assert manifest["server"]["info"]["settings"]["max_wait_ms"] == 2
    assert manifest["corpus"]["sha256"] == sha256()
    assert manifest["locust"]["load"]["rate"] == 10
    assert "--offered-rate" in manifest["locust"]["argv"]
    assert manifest["seed"] == 0
    assert manifest["warmup"]["statuses"] == {"200": manifest["warmup"]["requests"]}
    assert set(manifest["pinning"]) == {"server_cores", "locust_cores", "torch_threads"}
    assert manifest["setup"] == setup.to_dict()  # the whole set-up, to redo the run
    assert manifest["quick_ceilings"]["after"]["seq_per_s"] > 0

    rows = result.requests()
    assert 45 <= len(rows) <= 55
    assert all(r["status"] == 200 for r in rows)
    assert all(r["latency_ms"] >= r["service_ms"] > 0 for r in rows)

    summary = json.loads(result.summary_path.read_text())
    assert summary == result.summary
    assert summary["errors"] == 0
    assert summary["errors_by_status"] == {}
    assert summary["achieved_rate"] == pytest.approx(10, rel=0.10)
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
    assert summary["mean_batch_size"] >= 1
    assert summary["batches"] >= 1
    assert summary["late_sends"] <= 1
    # Where the model's time went: 10 req/s of short inputs leave the model mostly idle.
    assert 0 < summary["model_busy_fraction"] < 0.9
    assert summary["busy_seq_per_s"] > summary["achieved_rate"]
    assert 0 <= summary["padding_share"] < 0.9
    assert 0 < summary["loadgen_cpu_share"] < 1
    # The model's compute is CPU work in the server, so the server's share covers most of it. Not
    # all: compute is timed on the wall clock, and on a VM the time the hypervisor takes (steal)
    # counts there but not as the process's CPU time (CI saw 0.34 busy against 0.32 CPU).
    assert 0.8 * summary["model_busy_fraction"] < summary["server_cpu_share"] < 1.2
    # The server's memory: one process holding the model (90 MB of weights, torch, the tokenizer).
    assert summary["server_memory"]["processes"] == 1
    assert 150 < summary["server_memory"]["pss_mb"] <= summary["server_memory"]["rss_mb"] < 3000
    # The ceiling: the given reference, and the bracket timed around this very run.
    ceiling = summary["ceiling"]
    assert ceiling["value"] == 70.0
    assert ceiling["source"] == "given"
    bracket = ceiling["bracket"]
    assert bracket["before"] > 0
    assert bracket["after"] > 0
    assert summary["ceiling_seq_per_s"] == pytest.approx((bracket["before"] + bracket["after"]) / 2)
    assert summary["ceiling_ratio"] == pytest.approx(summary["achieved_rate"] / summary["ceiling_seq_per_s"])
    assert summary["above_ceiling"] is False


def test_a_load_shared_by_two_locust_processes(tmp_path):
    load = Load.open(rate=10, duration_s=3, arrivals="uniform", processes=2)
    setup = Setup(results_dir=tmp_path, ceiling=70.0, bracket=False)
    result = run("deadline", {"max_wait_ms": 2}, load, setup, progress=None)

    rows = result.requests()
    assert {r["user"] for r in rows} == {"open@0", "open@1"}
    assert len({(r["user"], r["seq"]) for r in rows}) == len(rows) >= 25
    assert all(r["status"] == 200 for r in rows)
    sends = [r["intended_send_s"] for r in rows]
    assert sends == sorted(sends)
    assert result.summary["achieved_rate"] == pytest.approx(10, rel=0.15)
    assert 0 < result.summary["loadgen_cpu_share"] < 2


def test_a_max_rate_search_with_two_locust_processes_keeps_its_best_step(tmp_path):
    # The H200 run's searches failed at the end: they copied one locust.log, and two or more
    # processes write locust-N.log each.
    load = Load.open(rate=8, duration_s=2, arrivals="uniform", processes=2)
    setup = Setup(results_dir=tmp_path, ceiling=70.0, bracket=False, slo_ms=2000)
    result = run("deadline", {"max_wait_ms": 2}, load, setup, find_max_rate=True, max_rate_steps=2,
                 progress=None)
    assert result.summary["max_sustainable_rate"] >= 8
    assert {"locust-0.log", "locust-1.log", "requests.csv", "manifest.json"} <= {
        p.name for p in result.run_dir.iterdir()}


def test_a_server_that_dies_gives_its_log(tmp_path):
    # deadline.py has no --max-batch-size: argparse exits, and the error says why.
    with (
        pytest.raises(ServerError, match="unrecognized arguments: --max-batch-size"),
        ServerProcess("deadline", {"max_batch_size": 8}, log=tmp_path / "server.log"),
    ):
        pass


def test_sweep_writes_points_and_resumes(tmp_path):
    out = tmp_path / "points.csv"
    kwargs = {
        "grid": {"max_wait_ms": [2]},
        "rates": ["8"],
        "duration_s": 2,
        "out": out,
        "setup": Setup(results_dir=tmp_path, ceiling="none", bracket=False),
        "progress_bar": False,
        "progress": None,
    }
    sweep(["naive"], **kwargs)  # naive has no --max-wait-ms: its points say "-"
    first = out.read_text()
    assert "variant=naive" in first
    assert ",-," in first
    sweep(["naive"], **kwargs)  # nothing left to do: no server started, same file
    assert out.read_text() == first
    sweep(["naive"], **kwargs, server_args={"log_level": "warning"})  # other server flags: new points
    assert len(read_points(out)) == 2


@pytest.mark.parametrize("command", ["bench", "ceiling", "profile", "sweep", "simulate", "soak"])
def test_cli_help(command):
    done = subprocess.run(
        [sys.executable, "-m", "servelab", command, "--help"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "default:" in done.stdout
