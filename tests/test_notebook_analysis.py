"""The notebooks' analysis functions (servelab/notebook/analysis.py) on small hand-made traces,
metrics texts, manifests and request rows whose answers are worked out by hand; and the promise
that importing the notebook package loads neither torch, locust nor matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servelab.notebook import analysis


def test_importing_the_notebook_package_imports_no_torch_locust_or_matplotlib():
    # A fresh interpreter: this test process may have imported any of them already. A Jupyter
    # kernel that imports locust hangs, and torch or matplotlib would slow every notebook's start.
    code = ("import servelab.notebook, sys; assert 'torch' not in sys.modules and "
            "'locust' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- Traces -------------------------------------------------------------------------------------


def test_read_trace_reads_one_batch_per_line_and_skips_blank_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"size": 2, "closed": 1.5}\n\n{"size": 1, "closed": 2.0}\n')
    assert analysis.read_trace(path) == [{"size": 2, "closed": 1.5}, {"size": 1, "closed": 2.0}]


def test_read_trace_of_a_missing_file_is_empty_and_clear_empties_a_trace(tmp_path):
    path = tmp_path / "trace.jsonl"
    assert analysis.read_trace(path) == []
    path.write_text('{"size": 2}\n')
    analysis.clear(path)
    assert path.read_text() == ""
    assert analysis.read_trace(path) == []


def test_first_waits_ms_is_the_first_request_s_wait_until_its_batch_closed():
    batches = [
        {"closed": 1.010, "requests": [{"arrived": 1.000}, {"arrived": 1.008}]},
        {"closed": 2.500, "requests": [{"arrived": 2.250}]},
    ]
    assert analysis.first_waits_ms(batches) == pytest.approx([10.0, 250.0])


# --- Event-loop lag between two /metrics scrapes ---------------------------------------------------


def _lag_metrics(buckets: dict[str, int], count: int, total_s: float) -> str:
    name = "servelab_event_loop_lag_seconds"
    lines = [f"# HELP {name} How late the loop's 50 ms ticks were.", f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in buckets.items()]
    lines += [f"{name}_count {count}", f"{name}_sum {total_s}",
              "# HELP servelab_requests_total Requests.", "# TYPE servelab_requests_total counter",
              "servelab_requests_total 99"]
    return "\n".join(lines) + "\n"


BEFORE = _lag_metrics({"0.01": 10, "0.05": 10, "0.1": 10, "0.5": 10, "+Inf": 10}, 10, 0.02)


def test_lag_counts_the_stalls_between_two_scrapes_and_finds_the_longest_one_s_bucket():
    # Between the scrapes: 5 stalls under 10 ms, 2 in (10, 50] ms, 1 in (100, 500] ms.
    after = _lag_metrics({"0.01": 15, "0.05": 17, "0.1": 17, "0.5": 18, "+Inf": 18}, 18, 0.35)
    result = analysis.lag(BEFORE, after)
    assert result["observations"] == 8
    assert result["total_lag_s"] == pytest.approx(0.33)
    assert result["longest_lag_s_between"] == (0.1, 0.5)


def test_lag_with_no_stall_between_the_scrapes_is_all_zero():
    result = analysis.lag(BEFORE, BEFORE)
    assert result == {"observations": 0.0, "total_lag_s": 0.0, "longest_lag_s_between": (0.0, 0.0)}


# --- A run's server settings ------------------------------------------------------------------------


def _manifest(tmp_path, settings: dict):
    (tmp_path / "manifest.json").write_text(json.dumps({"server": {"info": {"settings": settings}}}))
    return tmp_path


def test_server_settings_in_words_with_zero_as_off(tmp_path):
    run_dir = _manifest(tmp_path, {"max_wait_ms": 20.0, "max_batch_size": 0, "max_queue": 64,
                                   "queue_timeout_ms": 2.5, "port": 8000})
    assert analysis.server_settings(run_dir) == "wait 20 ms, cap off, queue 64, timeout 2.5 ms"


def test_server_settings_skips_unset_ones_and_says_none_when_nothing_is_set(tmp_path):
    assert analysis.server_settings(_manifest(tmp_path, {"max_wait_ms": 5, "max_queue": None})) == "wait 5 ms"
    assert analysis.server_settings(_manifest(tmp_path, {"port": 8000})) == "none"


# --- Load results over time -------------------------------------------------------------------------


ROWS = [
    {"intended_send_s": 10.0, "status": 200, "latency_ms": 50.0},
    {"intended_send_s": 10.4, "status": 200, "latency_ms": 150.0},
    {"intended_send_s": 10.9, "status": 503, "latency_ms": 1.0},
    # nothing due in second 1
    {"intended_send_s": 12.2, "status": 504, "latency_ms": 500.0},
    {"intended_send_s": 12.5, "status": 500, "latency_ms": 2.0},
]


def test_per_second_bins_requests_by_when_they_were_due():
    out = analysis.per_second(ROWS, slo_ms=100)
    assert out == [
        {"t_s": 0.0, "offered_per_s": 3.0, "ok_per_s": 2.0, "goodput_per_s": 1.0, "503_per_s": 1.0,
         "504_per_s": 0.0, "other_errors_per_s": 0.0, "p50_ok_ms": 100.0, "p99_ok_ms": pytest.approx(149.0)},
        {"t_s": 1.0, "offered_per_s": 0.0, "ok_per_s": 0.0, "goodput_per_s": 0.0, "503_per_s": 0.0,
         "504_per_s": 0.0, "other_errors_per_s": 0.0, "p50_ok_ms": None, "p99_ok_ms": None},
        {"t_s": 2.0, "offered_per_s": 2.0, "ok_per_s": 0.0, "goodput_per_s": 0.0, "503_per_s": 0.0,
         "504_per_s": 1.0, "other_errors_per_s": 1.0, "p50_ok_ms": None, "p99_ok_ms": None},
    ]


def test_per_second_rates_are_per_second_whatever_the_bin():
    out = analysis.per_second(ROWS, slo_ms=100, bin_s=0.5)
    assert [r["t_s"] for r in out] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["offered_per_s"] for r in out] == [4.0, 2.0, 0.0, 0.0, 2.0, 2.0]
    assert analysis.per_second([], slo_ms=100) == []


def _seconds(p99s: list[float | None]) -> list[dict]:
    """per_second-like rows, one a second; None: no 200 answered that second."""
    return [{"t_s": float(t), "p99_ok_ms": p, "ok_per_s": 0.0 if p is None else 5.0}
            for t, p in enumerate(p99s)]


def test_recovered_after_is_when_every_later_second_is_back_within_the_slo():
    rows = _seconds([50, 300, 400, 250, 80, None, 90])  # second 5 answered no 200: it does not count
    assert analysis.recovered_after(rows, end_s=2, slo_ms=100) == 2.0
    assert analysis.recovered_after(rows, end_s=5, slo_ms=100) == 0.0


def test_recovered_after_is_none_if_a_late_second_breaks_the_slo_again():
    rows = _seconds([50, 300, 80, 90, 120])
    assert analysis.recovered_after(rows, end_s=1, slo_ms=100) is None
