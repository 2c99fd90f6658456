"""The GPU reference run's plan, runner and summary, without a GPU and without a model.

The whole plan is rehearsed on the CPU by `make gpu-rehearsal` (about five minutes); these tests
check what must hold for the one run a lent GPU machine allows: every step's inputs come from
an earlier step, its files are where the summary looks, and a failure stops nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servelab.gpu_reference import plan, runner, summary
from servelab.gpu_reference.plan import Options, Run, Served, Step


def fake_run(tmp_path: Path, **options) -> Run:
    run = Run(tmp_path / "out", Options(server_cores=[0, 1], locust_cores=[2, 3], load_processes=2,
                                        work=tmp_path / "work", **options))
    run.ceiling_path.parent.mkdir(parents=True)
    run.ceiling_path.write_text(json.dumps({
        "ceiling_seq_per_s": 400.0, "best_batch_size": 8,
        "by_batch_size": [{"batch_size": 1, "seq_per_s": 200.0}, {"batch_size": 8, "seq_per_s": 400.0}],
    }))
    return run


def test_every_step_needs_only_steps_before_it_and_writes_its_own_files():
    steps = plan.plan()
    names = [s.name for s in steps]
    assert names[:3] == ["environment", "models", "ceiling"]
    assert len(set(names)) == len(names)
    for i, step in enumerate(steps):
        assert set(step.needs) <= set(names[:i]), step.name
        assert (step.argv is None) != (step.call is None), step.name
    outputs = [o for s in steps for o in s.outputs]
    assert len(set(outputs)) == len(outputs)


def test_the_served_runs_cover_the_variants_and_their_emulated_twins(tmp_path):
    (tmp_path / "multi_process.py").write_text("")
    settings = plan.served_settings(tmp_path)
    assert [s.name for s in settings] == ["thread_offloaded", "multi_process-8", "slo_aware",
                                          "multi_process-4", "multi_process-2"]
    assert [s.name for s in plan.served_settings(tmp_path / "none")] == ["thread_offloaded", "slo_aware"]
    names = [s.name for s in plan.plan(settings)]
    for setting in settings:
        assert f"served-{setting.name}" in names
        assert f"emulated-{setting.name}" in names
        assert names.index(f"served-{setting.name}") < names.index(f"emulated-{setting.name}")


def test_what_matters_most_fits_the_default_budget():
    # Up to the last emulated twin of the first settings, the plan must fit the GPU slot; what
    # follows (more profiles, max-rate searches, more twins) runs only if time is left.
    steps = plan.plan([Served("a"), Served("b"), Served("c"), Served("d")])
    last_core = max(i for i, s in enumerate(steps) if s.name == "emulated-c")
    full = plan.SCALES["full"]
    assert sum(s.estimate_s(full) for s in steps[: last_core + 1]) <= Options().budget_s
    assert steps[last_core + 1].name == "served-d"


def test_command_lines_carry_the_measured_objective_and_the_layout(tmp_path):
    run = fake_run(tmp_path)
    assert run.objective_ms() == 50.0  # 10x the batch-1 time of 1/200 s
    slo = plan.served_step(Served("slo_aware"), emulated=True).argv(run)
    assert slo[slo.index("--device") + 1] == f"emulated:{run.profile_path('minilm', 'float32')}"
    assert slo[slo.index("--slo-ms") + 1] == "50.0"  # how the run is judged
    assert slo[slo.index("--") + 1:] == ["--slo-ms", "50.0"]  # what slo_aware plans against
    assert slo[slo.index("--server-cores") + 1] == "0,1"
    assert slo[slo.index("--locust-cores") + 1] == "2,3"
    assert slo[slo.index("--load-processes") + 1] == "2"
    mp = plan.served_step(Served("multi_process", ("--front-ends", "4")), emulated=False).argv(run)
    assert mp[mp.index("--device") + 1] == "cuda"
    # Batches as large as the ceiling's best, and a queue of four of them.
    assert mp[mp.index("--") + 1:] == ["--front-ends", "4", "--max-batch-size", "8", "--max-queue", "32"]
    profile = plan.profile_step("bert-base", "float16").argv(run)
    assert profile[profile.index("--dtype") + 1] == "float16"
    assert profile[profile.index("--cores") + 1] == "0"  # one core: the server's first


def test_max_rate_searches_the_two_best_settings_under_overload(tmp_path):
    run = fake_run(tmp_path)
    (run.out / "served").mkdir()
    for name, achieved in (("thread_offloaded", 500), ("slo_aware", 700), ("multi_process-4", 600)):
        (run.out / "served" / f"{name}.csv").write_text(
            f"rate,achieved_rate,latency_ms.p50\n0.5x,200,10\n2x,{achieved},30\n")
    with pytest.raises(plan.PlanError):  # multi_process is not in this tree's settings list
        plan.max_rate_step(2).argv(run)
    best = [s.name for s in run.best_two()]
    first = plan.max_rate_step(0).argv(run)
    assert first[first.index("--variant") + 1] == best[0]
    assert first[first.index("--rate") + 1] == "280.0"  # 0.7x the ceiling


def step(name, code="pass", needs=(), estimate=1.0) -> Step:
    return Step(name, name, [], lambda s: estimate, argv=lambda run: [sys.executable, "-c", code],
                needs=needs)


def test_the_runner_goes_on_past_a_failure_and_keeps_to_its_budget(tmp_path):
    run = fake_run(tmp_path, budget_s=30)

    def broken(run):
        raise RuntimeError("no GPU here")

    steps = [
        Step("call", "a function that fails", [], lambda s: 1, call=broken),
        step("needs-call", needs=("call",)),
        step("fails", "import sys; print('boom'); sys.exit(3)"),
        step("fine"),
        step("too-long", estimate=1000),
        step("after", needs=("fine",)),
    ]
    records = {r["name"]: r for r in runner.run_plan(run, steps, progress=lambda _: None)}
    assert records["call"]["status"] == "failed"
    assert "no GPU here" in records["call"]["why"]
    assert records["needs-call"] == records["needs-call"] | {"status": "skipped", "why": "needs call"}
    assert records["fails"]["status"] == "failed"
    assert records["fails"]["why"] == "exit 3: boom"
    assert records["fine"]["status"] == "ok"
    assert records["too-long"]["status"] == "skipped"
    assert "budget" in records["too-long"]["why"]
    assert records["after"]["status"] == "ok"
    assert (run.out / "logs" / "fails.log").read_text().strip() == "boom"
    assert json.loads((run.out / "steps.json").read_text())[-1]["name"] == "after"


def test_emulated_against_real_in_the_summary(tmp_path):
    run = fake_run(tmp_path)
    for folder, achieved, p50 in (("served", 700, 20), ("emulated", 630, 27)):
        (run.out / folder).mkdir()
        (run.out / folder / "slo_aware.csv").write_text(
            f"rate,achieved_rate,latency_ms.p50,latency_ms.p99\n2x,{achieved},{p50},90\n")
    result = summary.summarize(run)
    [check] = result["emulated_vs_real"]
    assert check["achieved_rate_ratio"] == pytest.approx(0.9)
    assert check["rate_within"]  # 10% off: within 15%
    assert check["p50_ratio"] == pytest.approx(1.35)
    assert not check["p50_within"]  # 35% off: not within 30%
    assert result["served"][0]["ceiling_ratio"] == pytest.approx(700 / 400)
    text = (run.out / "summary.md").read_text()
    assert "MISS" in text
    assert "ABOVE" in text  # 700 answers/s against a ceiling of 400: flagged, not just a ratio
    assert "objective 50.0 ms" in text


def test_plan_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "servelab", "gpu-reference", "--plan"], capture_output=True,
                          text=True, check=True, timeout=60)
    assert "served-thread_offloaded" in done.stdout
    assert "profiles/bert-base-float16.json" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "servelab", "gpu-reference", "--only", "nope"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2
    assert "no step nope" in bad.stderr
