"""The simulator: against queueing theory where it has closed forms, against the variants'
code for what each policy does, and in the bench's own summary schema."""

from __future__ import annotations

import json
import random
import runpy
import statistics

import pytest

from servelab.bench import stats
from servelab.costmodel import BatchCost, CostModel, batch_cost_fit
from servelab.emulated import Profile
from servelab.paths import ALL_VARIANTS, REPO, VARIANTS_DIR
from servelab.sim import Policy, simulate
from servelab.sim.calibration import offload_seconds, solve_http
from servelab.sim.engine import HttpCost
from servelab.sim.plan import SloPlan
from servelab.sim.policy import BEHAVIOUR, variant_defaults
from servelab.sim.replay import MeasuredRun, corpus_token_lengths, replay
from servelab.sim.summary import summarize

SERVICE_S = 0.010


def constant(seconds: float) -> BatchCost:
    return BatchCost(CostModel(seconds, 0.0))


def poisson(rate: float, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    now, out = 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        out.append(now)
    return out


# Requests per seed for each load: the higher the load, the longer a queue's memory and the more
# requests it takes for the same precision. With 4 seeds, the standard error of the mean wait is
# under 1% at every load (asserted below), so a 3% tolerance tests the model, not the noise.
MD1_REQUESTS = {0.1: 50_000, 0.2: 50_000, 0.3: 50_000, 0.4: 100_000, 0.5: 100_000,
                0.6: 150_000, 0.7: 200_000, 0.8: 300_000, 0.9: 600_000}
MD1_SEEDS = 4


@pytest.mark.parametrize("rho", sorted(MD1_REQUESTS))
def test_a_cap_of_one_with_constant_service_is_an_md1_queue(rho):
    """Pollaczek-Khinchine for M/D/1: the mean wait in queue is rho / (2 mu (1 - rho))."""
    expected = rho * SERVICE_S / (2 * (1 - rho))
    count = MD1_REQUESTS[rho]
    ratios = []
    for seed in range(MD1_SEEDS):
        outcome = simulate(poisson(rho / SERVICE_S, count, seed), [1] * count, Policy(max_batch_size=1),
                           constant(SERVICE_S), http=0.0)
        assert set(outcome.status) == {200}
        mean_wait = statistics.fmean(outcome.latency_s) - SERVICE_S
        ratios.append(mean_wait / expected)
    mean = statistics.fmean(ratios)
    standard_error = statistics.stdev(ratios) / MD1_SEEDS**0.5
    assert standard_error < 0.01, f"the estimate itself is too noisy at rho={rho}: {standard_error:.3f}"
    assert mean == pytest.approx(1.0, abs=0.03), f"rho={rho}: mean wait {mean:.3f} x the closed form"


@pytest.mark.parametrize("cap", [1, 4, 16])
def test_under_overload_a_cap_b_delivers_b_over_t_of_b(cap):
    cost = BatchCost(CostModel(0.005, 0.0001))  # t(b, L) = 5 ms + 0.1 ms x b x L
    length = 10
    t_b = cost.seconds(cap, length)
    rate = 3 * cap / t_b  # three times what it can serve
    arrivals = poisson(rate, 20_000, seed=1)
    outcome = simulate(arrivals, [length] * len(arrivals), Policy(max_wait_s=0.002, max_batch_size=cap),
                       cost, http=0.0)
    served = outcome.status.count(200)
    busy_from, busy_to = arrivals[0], outcome.end_s
    assert served / (busy_to - busy_from) == pytest.approx(cap / t_b, rel=0.01)
    assert set(outcome.batch_sizes[10:-1]) == {cap}  # once the queue is long, every batch is full


def test_one_core_does_it_all_and_offloading_costs_its_hand_over():
    profile_like = Profile("flat", "-", "test", 10, ((1, 0.004), (10_000, 0.004)))  # 4 ms, any shape
    cost = BatchCost(CostModel(0.001, 0.0), profile_like)
    arrivals = poisson(5000, 5000, seed=2)  # far more than either serves
    lengths = [10] * len(arrivals)
    http = HttpCost(per_request_s=0.002, offload_s=0.0005)
    rates = {}
    for offloaded in (False, True):
        outcome = simulate(arrivals, lengths, Policy(max_batch_size=1, offloaded=offloaded), cost, http)
        rates[offloaded] = outcome.status.count(200) / outcome.end_s
    assert rates[False] == pytest.approx(1 / (0.001 + 0.004 + 0.002), rel=0.02)  # one after the other
    assert rates[True] == pytest.approx(1 / (0.001 + 0.004 + 0.002 + 0.0005), rel=0.02)


def test_a_batch_never_waits_past_its_deadline_but_a_per_get_wait_restarts():
    arrivals = [i * 0.0005 for i in range(40)]  # a request every 0.5 ms for 20 ms
    lengths = [1] * len(arrivals)
    cost = constant(0.0001)  # quick enough that no queue builds: batches are what the wait gathers
    deadline = simulate(arrivals, lengths, Policy(max_wait_s=0.001), cost, http=0.0)
    assert max(deadline.batch_sizes) <= 3  # 1 ms from its first request: at most 2 more join
    assert deadline.close_reasons["deadline"] == len(deadline.batch_sizes)
    restarting = simulate(arrivals, lengths, Policy(max_wait_s=0.001, wait_restarts=True), cost, http=0.0)
    assert restarting.batch_sizes[0] == 40  # the trickle keeps the first batch open to the end
    assert restarting.latency_s[0] > 0.019  # so its first request waited the whole trickle


def test_the_breaker_refuses_past_max_queue_and_times_out_the_waiting():
    arrivals = [0.0001 * i for i in range(200)]  # 200 requests in 20 ms; each takes 10 ms alone
    lengths = [1] * len(arrivals)
    full = simulate(arrivals, lengths, Policy(max_batch_size=1, max_queue=10, offloaded=True),
                    constant(SERVICE_S), http=0.0)
    assert full.status.count(503) > 150
    assert full.status.count(200) + full.status.count(503) == 200  # one answer each
    timed = simulate(arrivals, lengths, Policy(max_batch_size=1, queue_timeout_s=0.05, offloaded=True),
                     constant(SERVICE_S), http=0.0)
    assert 0 < timed.status.count(200) <= 7  # 50 ms of waiting: about 5 started
    expired = [lat for lat, s in zip(timed.latency_s, timed.status, strict=True) if s == 504]
    assert expired
    assert all(lat == pytest.approx(0.05) for lat in expired)


def test_a_blocking_loop_sees_arrivals_only_when_the_model_returns():
    arrivals = [0.0, 0.001, 0.002]  # the last two arrive while the first computes
    blocked = simulate(arrivals, [1] * 3, Policy(max_batch_size=1, max_queue=1), constant(SERVICE_S), 0.0)
    assert blocked.status == [200, 200, 503]  # both seen at 10 ms: the second fills the queue
    assert blocked.latency_s[2] == pytest.approx(SERVICE_S - 0.002)  # refused only then


def test_the_summary_has_the_bench_schema():
    arrivals = poisson(50, 500, seed=3)
    policy = Policy(max_wait_s=0.002, max_batch_size=8)
    outcome = simulate(arrivals, [12] * 500, policy, constant(0.005), http=0.001)
    summary = summarize(outcome, slo_ms=100)
    measured_keys = set(stats.summarize([], 100)) | {"batches", "mean_batch_size", "batches_by_close_reason",
                                                     "model_busy_fraction", "busy_seq_per_s", "padding_share"}
    assert measured_keys <= set(summary)
    assert summary["requests"] == summary["ok"] == 500
    assert summary["padding_share"] == 0.0  # all inputs the same length
    assert 0 < summary["model_busy_fraction"] < 1


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_each_variant_policy_matches_its_file(variant):
    source = (VARIANTS_DIR / f"{variant}.py").read_text()
    policy = Policy.of_variant(variant)
    assert policy.offloaded == ("asyncio.to_thread" in source)
    assert policy.planned == ("class Plan" in source)
    assert policy.wait_restarts == ('"get_timeout"' in source)
    defaults = variant_defaults(variant)
    assert policy.max_wait_s * 1000 == defaults.get("max_wait_ms", 0)
    assert policy.max_queue == defaults.get("max_queue")
    if "max_batch_size" in defaults:
        assert policy.max_batch_size == defaults["max_batch_size"]
    assert set(BEHAVIOUR) == set(ALL_VARIANTS)


def test_settings_override_the_defaults_and_zero_turns_a_limit_off():
    settings = {"max_batch_size": 64, "max_queue": 0, "queue_timeout_ms": 0}
    policy = Policy.of_variant("thread_offloaded", settings)
    assert (policy.max_batch_size, policy.max_queue, policy.queue_timeout_s) == (64, None, None)


def test_the_cost_fit_recovers_a_and_k_and_takes_the_device_wait_off_first():
    a, k = 0.002, 5e-6
    profile = Profile.load("h200-bert-base")
    rows = []
    for b, length in [(1, 30), (4, 48), (16, 60), (64, 62)]:
        per_batch = a + k * b * length + profile.forward_seconds(b, length)
        rows.append({"batch_size": b, "sequences": 10 * b, "seconds": 10 * per_batch,
                     "mean_padded_length": length})
    fitted = batch_cost_fit(rows, {"emulated": {"profile": "h200-bert-base", "profile_path": "nowhere.json"}})
    assert fitted["a_s"] == pytest.approx(a, rel=1e-3)
    assert fitted["k_s_per_token"] == pytest.approx(k, rel=1e-3)
    assert fitted["device_profile"] == "h200-bert-base"
    assert max(abs(p["relative_error"]) for p in fitted["points"]) < 1e-3


def test_the_servers_own_work_is_solved_from_three_saturated_blocking_runs():
    # 0.5 ms per batch, 1 ms per answer, 0.2 ms per refusal outside the pipeline.
    def run(batches, ok, refusals, compute_s):
        rest = 0.0005 * batches + 0.001 * ok + 0.0002 * refusals
        return {"batches": batches, "ok": ok, "errors_by_status": {"503": refusals}, "compute_s": compute_s,
                "span_s": compute_s + rest}

    http = solve_http([run(100, 100, 50, 1.0), run(100, 1600, 500, 5.0), run(80, 1280, 4000, 4.0)])
    assert http.per_batch_s == pytest.approx(0.0005)
    assert http.per_request_s == pytest.approx(0.001)
    assert http.per_refusal_s == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="too alike"):
        solve_http([run(100, 100, 50, 1.0)] * 3)


def test_the_thread_hand_over_is_what_an_offloaded_run_spent_beyond_a_blocking_one():
    cost = BatchCost(CostModel(0.002, 0.0))
    http = HttpCost(per_request_s=0.001, per_batch_s=0.0005)
    # 100 batches of 1 in 0.4 s: 4 ms each, of which a blocking server spends 2 + 1.5 ms.
    run = {"batches": 100, "span_s": 0.4, "padded_tokens": 1000, "errors_by_status": {}}
    assert offload_seconds(run, cost, http) == pytest.approx(0.0005)
    # Faster than blocking: the loop got work done during the wait; the figure says how much.
    assert offload_seconds(run | {"span_s": 0.3}, cost, http) == pytest.approx(-0.0005)


def test_capacity_counts_the_servers_own_work_beside_each_of_the_ceilings_batches():
    capacity = runpy.run_path(str(REPO / "results/reference/slo-cpu-2core/capacity.py"))
    # 50 batches of 2 in 1 s: 20 ms each, and the server's own 2 + 1 + 2 x 1 ms beside it.
    calibration = {"http": {"per_batch_s": 0.002, "offload_s": 0.001, "per_request_s": 0.001},
                   "ceiling": {"ceiling_seq_per_s": 50.0, "by_batch_size": [
                       {"batch_size": 2, "sequences": 100, "seconds": 1.0, "seq_per_s": 100.0}]}}
    (row,) = capacity["capacity_by_batch_size"](calibration)
    assert row["server_seq_per_s"] == pytest.approx(2 / 0.025)
    assert row["x_ceiling"] == pytest.approx(80 / 50)


def test_refusals_cost_the_servers_core():
    """A 503 is parsed and answered on the same core: a flood of them slows the answers."""
    arrivals = [i * 0.0001 for i in range(20_000)]  # 10,000/s for 2 s; the server does about 100/s
    lengths = [1] * len(arrivals)
    rates = {}
    for refusal_cost in (0.0, 0.00005):
        http = HttpCost(per_request_s=0.0, per_refusal_s=refusal_cost)
        outcome = simulate(arrivals, lengths, Policy(max_batch_size=1, max_queue=4, offloaded=True),
                           constant(SERVICE_S), http)
        rates[refusal_cost] = outcome.status.count(200)
    # 50 us x ~10,000 refusals a second is half the core: about half as many answers.
    assert rates[0.00005] < 0.6 * rates[0.0]


def test_a_measured_run_is_replayed_with_its_own_arrivals_and_settings(tmp_path):
    """A hand-made run folder: 100 requests 20 ms apart to capped_batch at cap 1, each computed
    in 5 ms: no queue, so each answer takes the service time plus the HTTP path."""
    rows = ["seq,user,intended_send_s,actual_send_s,lateness_ms,latency_ms,service_ms,status,"
            "input_words,error"]
    rows += [f"{i},open,{100 + i * 0.02},{100 + i * 0.02},0,6,6,200,12," for i in range(100)]
    (tmp_path / "requests.csv").write_text("\n".join(rows) + "\n")
    summary = {"variant": "capped_batch", "slo_ms": 100, "achieved_rate": 50.0, "latency_ms": {"p50": 6.0},
               "settings": {"device": "cpu", "max_batch_size": 1, "max_wait_ms": 2.0}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    simulated = replay(MeasuredRun.load(tmp_path), constant(0.005), HttpCost(0.001), corpus_token_lengths())
    assert simulated["requests"] == simulated["ok"] == 100
    assert simulated["latency_ms"]["p50"] == pytest.approx(6.0)  # 5 ms model + 1 ms HTTP
    assert simulated["mean_batch_size"] == 1


def write_calibration(folder, device="cpu"):
    """A calibration file as `simulate --calibrate` writes it, with made-up figures."""
    from servelab.sim.calibration import calibration_path

    ceiling = {"ceiling_seq_per_s": 80.0, "best_batch_size": 4,
               "by_batch_size": [{"batch_size": 1, "mean_padded_length": 30}],
               "cost_model": {"a_s": 0.007, "k_s_per_token": 0.0002, "device_profile": None,
                              "points": [{"batch_size": 1, "relative_error": 0.01}]},
               "model": {"device": device, "emulated": None}}
    path = calibration_path(folder, device)
    path.parent.mkdir(parents=True)
    http = HttpCost(0.0003, 0.001).to_dict()
    path.write_text(json.dumps({"device": device, "http": http, "ceiling": ceiling}))
    return path


def test_the_simulate_command_runs_a_variant_at_rates_given_plainly_or_against_the_ceiling(tmp_path, capsys):
    from servelab.bench.cli import main

    write_calibration(tmp_path)
    code = main(["simulate", "--results-dir", str(tmp_path), "--device", "cpu", "--variant",
                 "capped_batch", "--rates", "10,2x", "--duration", "5", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [round(s["offered_rate"]) for s in lines] == [10, 160]
    assert lines[0]["achieved_rate"] == pytest.approx(10, rel=0.3)  # all served
    assert lines[1]["achieved_rate"] < 100  # 2x its ceiling: it saturates


def test_the_simulate_command_names_the_variants_it_knows_when_given_another(tmp_path, capsys):
    from servelab.bench.cli import main

    write_calibration(tmp_path)
    assert main(["simulate", "--results-dir", str(tmp_path), "--device", "cpu", "--variant",
                 "slo_aware,thread_offloaded"]) == 1
    assert "known: naive, per_get_timeout" in capsys.readouterr().err


def test_the_simulate_command_says_how_to_calibrate_when_it_cannot_find_one(tmp_path, capsys):
    from servelab.bench.cli import main

    assert main(["simulate", "--results-dir", str(tmp_path), "--device", "cpu"]) == 1
    assert "simulate --calibrate --device cpu" in capsys.readouterr().err


# slo_aware's plan (servelab/sim/plan.py), on a CPU-like device: 5 ms a pass plus 160 us per padded
# token, inputs of 8 to 60 tokens, and the server's own work per request and per refusal.
CPU_LIKE = BatchCost(CostModel(0.005, 160e-6))
CPU_HTTP = HttpCost(per_request_s=0.0008, per_refusal_s=0.0004)


def mixed_lengths(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(8, 60) for _ in range(count)]


def test_the_plan_sorts_and_cuts_where_a_pass_is_worth_its_cost():
    plan = SloPlan(CostModel(0.001, 1e-4), slo_s=1.0)
    lengths = [60, 8, 60, 8, 8, 60]
    passes = plan.split(lengths)
    assert [[lengths[i] for i in part] for part in passes] == [[8, 8, 8], [60, 60, 60]]
    assert sorted(i for part in passes for i in part) == list(range(6))  # each request once
    plan = SloPlan(CostModel(1.0, 1e-4), slo_s=10.0)  # a pass costs far more than the padding
    assert len(plan.split(lengths)) == 1


def test_the_simulated_plan_answers_on_time_under_overload_where_a_queue_limit_does_not():
    count = 6000
    capacity = 16 / CPU_LIKE.seconds(16, 34)  # about batch 16 of mean padded length
    arrivals, lengths = poisson(2 * capacity, count, seed=1), mixed_lengths(count, seed=2)
    objective = 0.150
    planned = simulate(arrivals, lengths, Policy.of_variant("slo_aware", {"slo_ms": objective * 1000}),
                       CPU_LIKE, CPU_HTTP)
    capped = simulate(arrivals, lengths, Policy.of_variant("thread_offloaded"), CPU_LIKE, CPU_HTTP)

    def on_time(outcome) -> int:
        return sum(1 for st, lat in zip(outcome.status, outcome.latency_s, strict=True)
                   if st == 200 and lat <= objective)

    answered = [lat for st, lat in zip(planned.status, planned.latency_s, strict=True) if st == 200]
    assert stats.percentile(answered, 99) <= objective
    assert on_time(planned) > 3 * on_time(capped)
    assert planned.status.count(503) > 2 * planned.status.count(504)  # most are refused at arrival
    timed_out = [lat for st, lat in zip(planned.status, planned.latency_s, strict=True) if st == 504]
    assert max(timed_out) < objective  # and the rest hear it before their objective has passed
    assert set(planned.close_reasons) <= {"planned", "drained"}


def test_without_admission_the_plan_times_out_what_it_cannot_answer():
    count = 3000
    capacity = 16 / CPU_LIKE.seconds(16, 34)
    arrivals, lengths = poisson(2 * capacity, count, seed=3), mixed_lengths(count, seed=4)
    policy = Policy.of_variant("slo_aware", {"slo_ms": 150, "without": ["admission"]})
    outcome = simulate(arrivals, lengths, policy, CPU_LIKE, CPU_HTTP)
    assert outcome.status.count(503) == 0
    assert outcome.status.count(504) > count / 4


def test_the_simulate_command_finds_the_highest_rate_whose_p99_meets_the_objective(tmp_path, capsys):
    from servelab.bench.cli import main

    write_calibration(tmp_path)

    def found(*extra):
        assert main(["simulate", "--results-dir", str(tmp_path), "--device", "cpu", "--variant", "slo_aware",
                     "--slo-ms", "130", "--find-max-rate", "--requests", "3000", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    plain = found()
    steps = plain["steps"]
    assert steps[-1]["missed_share"] > 0.01, "the search ends at the first step past 1% missed"
    assert all(step["missed_share"] <= 0.01 for step in steps[:-1])
    assert plain["max_rate_x_ceiling"] == steps[-2]["x_ceiling"]
    assert plain["max_rate"] == pytest.approx(steps[-2]["x_ceiling"] * 80.0)
    # More of the server's own work per batch (1 ms in the calibration) leaves less for the model.
    assert found("--server-work", "per_batch=5")["max_rate"] < plain["max_rate"]


def test_the_simulate_command_names_the_server_work_it_can_replace(tmp_path, capsys):
    from servelab.bench.cli import main

    write_calibration(tmp_path)
    assert main(["simulate", "--results-dir", str(tmp_path), "--device", "cpu",
                 "--server-work", "batch=1"]) == 1
    assert "known: per_request, per_batch" in capsys.readouterr().err
