"""The benchmark's metric code on hand-made data whose answers are worked out by hand."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from servelab.bench import Bracket, Ceiling, corpus, stats
from servelab.bench.cpuwatch import CpuWatch
from servelab.bench.loadgen import Load, LocustRun, merge_request_logs
from servelab.bench.sweep import SweepError, parse_rate
from servelab.paths import LOADTESTS


def test_percentile_interpolates_between_closest_ranks():
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile([4, 1, 3, 2], 0) == 1  # unsorted input
    assert stats.percentile([1, 2, 3, 4], 100) == 4
    assert stats.percentile(list(range(1, 102)), 99) == 100  # rank 0.99 * 100 = 99 -> the 100th value
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([], 50) is None
    assert stats.percentile([10, 20], 25) == pytest.approx(12.5)
    with pytest.raises(ValueError, match=r"percentile 101 is not in \[0, 100\]"):
        stats.percentile([1], 101)


def test_latency_stats_mean_is_not_the_median():
    out = stats.latency_stats([1, 1, 1, 1, 96])  # vLLM once swapped these two
    assert out["p50"] == 1
    assert out["mean"] == 20
    assert out["max"] == 96


def rows_by_hand() -> list[dict]:
    """10 requests due every 100 ms; latencies 10..100 ms; the 9th got no answer, the 10th a 503."""
    rows = []
    for i in range(10):
        intended = 1000.0 + 0.1 * i
        rows.append(
            {
                "intended_send_s": intended,
                "actual_send_s": intended,
                "lateness_ms": 0.0,
                "latency_ms": 10.0 * (i + 1),
                "status": 200,
            }
        )
    rows[8]["status"] = 0
    rows[9]["status"] = 503
    rows[3]["lateness_ms"] = 15.0
    rows[3]["actual_send_s"] += 0.015
    return rows


def test_summarize_by_hand():
    s = stats.summarize(rows_by_hand(), slo_ms=50, late_ms=10)
    assert (s["requests"], s["ok"], s["errors"]) == (10, 8, 2)
    assert s["error_fraction"] == pytest.approx(0.2)
    assert s["errors_by_status"] == {"0": 1, "503": 1}
    # ok latencies are 10..80 ms: p50 at rank 3.5 -> 45, p90 at rank 6.3 -> 73, p99 at 6.93 -> 79.3
    assert s["latency_ms"]["p50"] == pytest.approx(45)
    assert s["latency_ms"]["p90"] == pytest.approx(73)
    assert s["latency_ms"]["p99"] == pytest.approx(79.3)
    assert s["latency_ms"]["max"] == 80
    assert s["latency_ms"]["mean"] == pytest.approx(45)
    # first due at 0.0, last answer at 0.9 + 0.1 = 1.0 s after it
    assert s["span_s"] == pytest.approx(1.0)
    assert s["sent_rate"] == pytest.approx(10.0)  # 9 gaps of 100 ms
    assert s["achieved_rate"] == pytest.approx(8.0)
    # within 50 ms: the answers at 10, 20, 30, 40, 50 ms
    assert s["goodput_rate"] == pytest.approx(5.0)
    assert s["goodput_fraction"] == pytest.approx(0.5)
    assert s["late_sends"] == 1
    assert s["max_lateness_ms"] == 15.0
    assert s["p99_ms_counting_errors"] is None  # 2 errors in 10: the p99 is never answered


def test_p99_counting_errors():
    rows = [{"status": 200, "latency_ms": float(i)} for i in range(1, 201)]
    assert stats.p99_counting_errors(rows) == pytest.approx(
        stats.percentile([r["latency_ms"] for r in rows], 99)
    )
    rows[-1]["status"] = 503  # 1 error in 200 stays above the 99th percentile
    assert math.isfinite(stats.p99_counting_errors(rows))
    for row in rows[-3:]:  # 3 in 200 (1.5%) do not
        row["status"] = 503
    assert stats.p99_counting_errors(rows) == math.inf
    assert stats.p99_counting_errors([]) == math.inf


class FakeServerMetrics:
    """The server's batch metrics, with the names servelab.metrics gives them."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.size = Histogram(
            "servelab_batch_size", "", buckets=[1, 2, 4, 8, 16, 32, 64], registry=self.registry
        )
        self.compute = Histogram("servelab_batch_compute_seconds", "", registry=self.registry)
        self.closed = Counter("servelab_batches", "", ["close_reason"], registry=self.registry)
        self.requests = Counter("servelab_requests", "", ["status"], registry=self.registry)

    def batches(self, sizes: list[int], reasons: list[str]) -> str:
        for n, reason in zip(sizes, reasons, strict=True):
            self.size.observe(n)
            self.compute.observe(0.1)
            self.closed.labels(reason).inc()
            self.requests.labels("200").inc(n)
        return generate_latest(self.registry).decode()


def test_batch_stats_from_metric_deltas():
    server = FakeServerMetrics()
    before = server.batches([1, 1], ["deadline", "deadline"])
    after = server.batches([4, 8, 6, 6], ["deadline", "full", "full", "full"])
    out = stats.batch_stats(stats.parse_metrics(before), stats.parse_metrics(after))
    assert out["batches"] == 4
    assert out["batched_items"] == 24
    assert out["mean_batch_size"] == 6
    assert out["mean_batch_compute_ms"] == pytest.approx(100)
    assert out["batches_by_close_reason"] == {"deadline": 1, "full": 3}
    assert out["server_requests_by_status"] == {"200": 24}


def test_batch_stats_without_batches():
    out = stats.batch_stats({}, {})
    assert out["mean_batch_size"] is None
    assert out["batches"] == 0


def step_server(capacity: float):
    """A fake measure(rate): p99 10 ms up to capacity, 1 s above it."""
    calls = []

    def measure(rate: float):
        calls.append(rate)
        return (10.0 if rate <= capacity else 1000.0), {}

    return measure, calls


@pytest.mark.parametrize("start", [10.0, 100.0, 500.0, 99.0])
def test_find_max_rate_brackets_then_bisects(start):
    measure, calls = step_server(capacity=100.0)
    result = stats.find_max_rate(measure, slo_ms=50, start_rate=start, tolerance=0.05, max_steps=12)
    assert 95.0 <= result.max_rate <= 100.0
    assert result.lowest_failing_rate > 100.0
    assert (result.lowest_failing_rate - result.max_rate) <= 0.05 * result.max_rate + 1e-9
    assert len(result.steps) == len(calls) <= 12
    assert all(step.passed == (step.rate <= 100.0) for step in result.steps)


def test_find_max_rate_never_reports_a_failing_rate():
    rng = random.Random(0)
    noisy = {}

    def measure(rate):  # pass/fail is random but fixed per rate: the answer must be a rate that passed
        noisy.setdefault(rate, rng.random() < 0.5)
        return (1.0 if noisy[rate] else math.inf), {}

    result = stats.find_max_rate(measure, slo_ms=50, start_rate=40, max_steps=8)
    passed = {s.rate for s in result.steps if s.passed}
    assert result.max_rate is None or result.max_rate in passed
    assert len(result.steps) <= 8


def test_find_max_rate_when_nothing_passes():
    result = stats.find_max_rate(
        lambda rate: (math.inf, {}), slo_ms=50, start_rate=8, max_steps=6, min_rate=1
    )
    assert result.max_rate is None
    assert [s.rate for s in result.steps] == [8, 4, 2, 1]
    assert result.to_dict()["steps"][0]["p99_ms"] is None  # JSON has no infinity


def test_find_max_rate_respects_max_steps():
    result = stats.find_max_rate(lambda rate: (1.0, {}), slo_ms=50, start_rate=1, max_steps=5)
    assert [s.rate for s in result.steps] == [1, 2, 4, 8, 16]
    assert result.max_rate == 16
    assert result.lowest_failing_rate is None


def test_flatten():
    assert stats.flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": [1]}) == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_rates_relative_to_the_ceiling():
    assert parse_rate("12.5", None) == 12.5
    assert parse_rate("2x", 80.0) == 160.0
    with pytest.raises(SweepError):
        parse_rate("2x", None)


def test_load_arguments():
    assert Load.open(rate=20, duration_s=3.2).locust_args()[:2] == ["--scenario", "open"]
    assert "-t" in Load.open(rate=20, duration_s=3.2).locust_args()
    assert Load.open(rate=20, duration_s=3.2).locust_args()[-1] == "4s"  # whole seconds, rounded up
    spike = Load.spike(
        capacity_rate=100, factor=3, spike_baseline=0.5, spike_before_s=10, spike_s=10, spike_after_s=20
    )
    assert spike.offered_rate() == pytest.approx((50 * 30 + 300 * 10) / 40)
    assert Load.steady(users=4).offered_rate() is None
    with pytest.raises(ValueError, match="needs a rate > 0"):
        Load.open(rate=0).locust_args()


def test_a_load_shared_among_locust_processes():
    # n Poisson streams at rate/n are one Poisson stream at the rate; users are dealt out.
    assert Load.open(rate=90, processes=3).part(2).rate == 30
    assert Load.open(rate=90, processes=3).part(2).processes == 1
    assert [Load.steady(users=5, processes=2).part(i).users for i in (0, 1)] == [3, 2]
    assert Load.spike(capacity_rate=100, processes=4).part(0).capacity_rate == 25
    assert Load.open(rate=90).part(0) == Load.open(rate=90)
    with pytest.raises(ValueError, match="one Locust process"):
        Load(scenario="ramp", rate=None, processes=2).part(0)


def test_request_logs_merge_in_order_of_intended_send(tmp_path):
    header = "seq,user,intended_send_s,actual_send_s\n"
    (tmp_path / "a.csv").write_text(header + "0,open,1.0,1.0\n1,open,3.0,3.0\n")
    (tmp_path / "b.csv").write_text(header + "0,open,2.0,2.0\n")
    merge_request_logs([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "all.csv")
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert lines[1:] == ["0,open@0,1.0,1.0", "0,open@1,2.0,2.0", "1,open@0,3.0,3.0"]
    assert not (tmp_path / "a.csv").exists()  # the parts are gone once merged


def test_corpus_masks_and_spread():
    prompts = corpus.load_prompts()
    assert len(prompts) == 1000
    spread = corpus.spread_by_length(prompts, 5)
    lengths = [len(t.split()) for t in spread]
    assert lengths == sorted(lengths)
    assert lengths[0] == 3
    assert lengths[-1] == 60
    masked = corpus.prepare(prompts[:50], "[MASK]")
    assert all(t.count("[MASK]") == 1 for t in masked)
    assert corpus.prepare(prompts[:3], None) == prompts[:3]


def test_mask_insertion_matches_the_load_tests():
    """loadtests/_inputs.py (which the load generator runs) and servelab.bench.corpus agree."""
    spec = importlib.util.spec_from_file_location("loadtests_inputs", LOADTESTS / "_inputs.py")
    inputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inputs)
    assert inputs.load_prompts() == corpus.load_prompts()
    for i, text in enumerate(corpus.load_prompts()[:100]):
        a = inputs.with_mask(text, "<mask>", random.Random(i))
        b = corpus.with_mask(text, "<mask>", random.Random(i))
        assert a == b
        assert a.count("<mask>") == 1


def test_where_time_went():
    batching = {"compute_s": 6.0, "batched_items": 480, "tokens": 3000, "padded_tokens": 4000}
    out = stats.where_time_went(batching, span_s=8.0)
    assert out == {"model_busy_fraction": 0.75, "busy_seq_per_s": 80.0, "padding_share": 0.25}
    # Achieved throughput is busy fraction x throughput while busy: 0.75 x 80 = 60 seq/s.
    assert stats.where_time_went({"compute_s": None}, 8.0)["model_busy_fraction"] is None


def test_a_bracket_flags_a_rate_above_its_upper_end_by_more_than_its_spread():
    bracket = Bracket(before=80.0, after=76.0)
    assert bracket.spread == 4.0
    inside = bracket.judge(82.0)  # above both ends, but within the spread: drift, not a wrong denominator
    assert inside["above_ceiling"] is False
    assert inside["ratio_to_before"] == pytest.approx(82 / 80)
    assert inside["ratio_to_after"] == pytest.approx(82 / 76)
    above = bracket.judge(84.5)
    assert above["above_ceiling"] is True
    assert "different conditions" in above["note"]
    ceiling = Ceiling(70.0, "given").with_bracket(bracket)
    assert ceiling.denominator == 78.0  # the bracket's mean, not the reference measured earlier
    assert ceiling.ratio(39.0) == 0.5
    assert Ceiling(70.0, "given").ratio(35.0) == 0.5


def test_without_a_bracket_any_rate_above_the_ceiling_is_flagged():
    from servelab.bench.run import judge

    assert judge(Ceiling(70.0, "given"), 35.0)["above_ceiling"] is False
    assert judge(Ceiling(70.0, "given"), 70.5)["above_ceiling"] is True  # no spread to allow for
    assert judge(Ceiling(70.0, "given"), None)["above_ceiling"] is None
    bracketed = Ceiling(70.0, "given").with_bracket(Bracket(before=80.0, after=76.0))
    assert judge(bracketed, 82.0)["above_ceiling"] is False  # within the bracket's spread, as before


def test_a_ceiling_from_a_measurement_brackets_its_fastest_batch_sizes():
    rates = [(1, 63), (2, 79), (4, 85), (8, 82), (16, 82.5), (64, 76)]
    rows = [{"batch_size": b, "seq_per_s": r} for b, r in rates]
    data = {"ceiling_seq_per_s": 85.0, "best_batch_size": 4, "by_batch_size": rows}
    assert Ceiling.from_data(data, "file").top_batch_sizes() == (4, 8, 16)
    assert Ceiling(85.0, "given").top_batch_sizes() == (4, 8, 16)  # no rows: the usual best sizes


def test_cpu_share_between_two_wall_times():
    watch = CpuWatch(pid=0)
    watch.samples = [(100.0, 5.0), (101.0, 5.1), (102.0, 5.3), (103.0, 5.6), (104.0, 5.6)]
    assert watch.share(101.0, 103.0) == pytest.approx(0.25)  # 0.5 CPU seconds over 2 s
    assert watch.share(100.0, 104.0) == pytest.approx(0.15)
    assert watch.share(103.5, 110.0) is None  # one sample inside: nothing to divide


def test_the_load_generators_share_is_taken_from_first_send_to_last_answer():
    watch = CpuWatch(pid=0)
    watch.samples = [(float(t), 0.1 * t) for t in range(30)]  # 10% of a core throughout
    watch.samples[0] = (0.0, -2.0)  # start-up before the first send: left out
    rows = [{"actual_send_s": 5.0, "latency_ms": 100.0}, {"actual_send_s": 9.0, "latency_ms": 11_000.0}]
    run = LocustRun(argv=[], request_log=Path("unused"), cpus=[watch])
    assert run.cpu_share(rows) == pytest.approx(0.1)
    assert run.cpu_share([]) is None


def test_a_length_sorted_ceiling_times_batches_of_one_length_from_the_whole_corpus():
    from servelab.bench.ceiling import time_batches

    rng = random.Random(3)
    lengths = [rng.randint(1, 100) for _ in range(400)]
    texts = [f"t{i}" for i in range(len(lengths))]
    length_of = dict(zip(texts, lengths, strict=True))
    seen: dict[int, list[list[int]]] = {}

    def predict(batch):
        seen.setdefault(len(batch), []).append([length_of[t] for t in batch])

    def token_counts(batch):
        batch_lengths = [length_of[t] for t in batch]
        return sum(batch_lengths), max(batch_lengths) * len(batch_lengths)

    common = {"min_seconds": 0.0, "rounds": 1, "min_batches": 50, "token_counts": token_counts}
    plain = time_batches(predict, texts, (1, 8), **common)
    plain_batches, seen = seen, {}
    sorted_rows = time_batches(predict, texts, (1, 8), **common, lengths=lengths)
    for batch in seen[8]:
        assert max(batch) - min(batch) <= 5  # 400 inputs of 1-100 tokens: neighbours in length
    # the batches come from all over the corpus, not from its short end
    assert min(min(b) for b in seen[8]) < 20
    assert max(max(b) for b in seen[8]) > 80
    padded = {row["batch_size"]: row["mean_padded_length"] for row in sorted_rows}
    assert padded[8] < 0.8 * next(r["mean_padded_length"] for r in plain if r["batch_size"] == 8)
    assert len(plain_batches[8]) == len(seen[8]) == 50


def test_a_step_the_load_generator_sent_late_is_measured_again_not_counted_as_a_failure(tmp_path):
    from types import SimpleNamespace

    from servelab.bench.maxrate import search

    measured = []

    def measure(load, step_dir):  # capacity 100/s; the first step at 80/s had a neighbour's blip
        measured.append((load.rate, step_dir.name))
        late = 5 if len(measured) == 2 else 0
        return {"p99_ms_counting_errors": 10.0 if load.rate <= 100 else None, "late_sends": late,
                "requests": 100, "achieved_rate": load.rate, "error_fraction": 0.0}

    bench = SimpleNamespace(measure=measure, progress=lambda line: None, setup=SimpleNamespace(slo_ms=50))
    result = search(bench, Load.open(rate=40, duration_s=10), tmp_path, max_steps=6, tolerance=0.05)
    assert measured[1:3] == [(80, "01_rate_80.00"), (80, "01_rate_80.00_again")]
    assert result["search"][1]["passed"]  # the measurement again passed: 80/s is not the bound
    assert result["max_sustainable_rate"] >= 95
