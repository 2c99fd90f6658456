"""The soak, short (python -m servelab soak runs the long one): 10,000 requests through a real
server on the emulated H200 (the real pipeline, the forward pass replaced by a wait), 5% bad and
1% leaving early, every answer counted; and a SIGTERM in the middle of one."""

from __future__ import annotations

import json

import pytest

from servelab.bench.setup import Setup
from servelab.bench.soak import soak

DEVICE = {"device": "emulated:h200-bert-base"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_thousand_requests_and_nothing_lost_duplicated_or_crossed(tmp_path):
    run_dir, summary = soak("thread_offloaded", DEVICE, requests=10_000, rate=300,
                            setup=Setup(bracket=False, results_dir=tmp_path), progress=None)
    assert summary["by_kind"]["good"] > 9000
    assert summary["lost"] == 0
    assert summary["duplicated"] == 0
    assert summary["crossed"] == 0
    assert summary["sample_checked"] == 200
    assert summary["unexpected"] == 0, summary["examples"]["unexpected"]
    assert summary["goals_met"]["fds"], summary["fds"]
    assert summary["rss_growth_after_warm_up"] < 0.05, summary["rss_mb"]
    assert json.loads((run_dir / "manifest.json").read_text())["soak"]["requests"] == 10_000
    assert (run_dir / "resources.csv").read_text().count("\n") > 5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sigterm_mid_soak_gives_every_request_in_flight_a_status(tmp_path):
    from servelab.paths import VARIANTS_DIR

    variant = str(VARIANTS_DIR / "thread_offloaded.py")  # by its path, as --variant takes it too
    run_dir, summary = soak(variant, DEVICE | {"max_queue": 0, "queue_timeout_ms": 0}, requests=4000,
                            rate=500, setup=Setup(bracket=False, results_dir=tmp_path), sigterm_after=0.5,
                            progress=None)
    assert run_dir.parent == tmp_path / "runs"
    assert "_soak_thread_offloaded" in run_dir.name
    assert summary["requests"] == 2000
    assert summary["lost"] == 0, summary["examples"]["lost"]
    assert summary["unexpected"] == 0, summary["examples"]["unexpected"]  # 200, or 503 once closing
    assert summary["sigterm"]["exited_within_5_s"], summary["sigterm"]


def test_the_servers_can_fix_mallocs_mmap_threshold():
    """--mmap-threshold-kb (off by default: it costs speed): large blocks get their own pages."""
    from servelab.allocator import fix_mmap_threshold
    from servelab.cli import parse_settings

    assert parse_settings("deadline", "", {}, []).mmap_threshold_kb == 0
    assert parse_settings("deadline", "", {}, ["--mmap-threshold-kb", "128"]).mmap_threshold_kb == 128
    assert fix_mmap_threshold(128 * 1024) is True  # glibc, as on every machine this suite runs on


def test_at_a_sigterm_only_a_request_sent_after_it_may_go_unanswered():
    """In flight means its body was all sent before the SIGTERM: it must get a status. One sent
    after it may be refused, or reset from the listen backlog, without counting as lost."""
    from servelab.bench.soak import Request, ResourceSamples, summarize

    def unanswered(seq: int, sent_at: float | None, error: str) -> Request:
        return Request(seq, "good", b"x", None, {200}, sent_at=sent_at, error=error)

    requests = [unanswered(0, 9.0, "ReadError"), unanswered(1, 11.0, "ReadError"),
                unanswered(2, None, "ConnectError")]
    samples = ResourceSamples([{"t": 0.0, "sent": 0, "rss_mb": 100.0, "fds": 10}])
    summary = summarize(requests, samples, {"checked": 0, "crossed": []}, 1.0, sigterm_at=10.0)
    assert (summary["lost"], summary["examples"]["lost"]) == (1, [0])
    assert summary["not_accepted_after_sigterm"] == 2
    without_sigterm = summarize(requests, samples, {"checked": 0, "crossed": []}, 1.0)
    assert without_sigterm["lost"] == 3


def test_rss_growth_compares_peaks_and_splits_anonymous_from_file_backed_memory():
    """RSS swings with each batch's working memory: the highest after the second tenth is compared
    with the highest in it (the first tenth is warm-up). Library code paged in on first use grows
    RSS without a leak: the summary tells it apart from the heaps' growth."""
    from servelab.bench.soak import Request, ResourceSamples, summarize

    samples = [(0, 100.0, 40.0), (1, 170.0, 80.0), (1, 200.0, 80.0), (1, 180.0, 80.0), (5, 230.0, 90.0),
               (9, 220.0, 90.0)]  # (requests sent, RSS, file-backed RSS)
    rows = [{"t": float(i), "sent": sent, "rss_mb": rss, "rss_file_mb": file, "fds": 10}
            for i, (sent, rss, file) in enumerate(samples)]
    requests = [Request(seq, "good", b"x", None, {200}, status=200) for seq in range(10)]
    summary = summarize(requests, ResourceSamples(rows), {"checked": 0, "crossed": []}, 1.0)
    assert (summary["rss_mb"]["peak_second_tenth"], summary["rss_mb"]["peak_after"]) == (200.0, 230.0)
    assert summary["rss_growth_after_warm_up"] == pytest.approx(0.15)
    assert summary["rss_growth_mb"] == pytest.approx({"anonymous": 20.0, "file_backed": 10.0})
