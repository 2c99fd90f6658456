"""The emulated accelerator: a profile's times by shape, and the real pipeline around a forward
pass that waits, served by a real variant with every caller getting its own answer."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import torch

from servelab import emulated
from servelab.costmodel import fit
from servelab.emulated import Profile, ProfileError
from servelab.models import ModelLoadError, load_model
from servelab.process import ServerProcess
from tests.conftest import BREAKER_OFF
from tests.test_variants import distinct_inputs, post_all

H200 = "emulated:h200-bert-base"


def test_the_h200_profile_keeps_the_launch_floor_and_scales_by_padded_tokens():
    profile = Profile.load("h200-bert-base")
    assert profile.sequence_tokens == 18
    floor = profile.forward_seconds(16, 18)
    assert floor == pytest.approx(16 / 2659, rel=1e-3)  # the measured batch-16 point
    assert profile.forward_seconds(1, 18) == floor  # below batch 16: launch-bound, flat
    assert profile.forward_seconds(4, 40) == floor  # 160 padded tokens: still under the floor
    assert profile.forward_seconds(64, 18) == pytest.approx(64 / 8591, rel=1e-3)
    assert profile.forward_seconds(256, 18) == pytest.approx(256 / 11613, rel=1e-3)
    middle = profile.forward_seconds(160, 18)  # between the 64 and 256 points
    assert profile.forward_seconds(64, 18) < middle < profile.forward_seconds(256, 18)
    assert profile.forward_seconds(256, 36) == pytest.approx(2 * profile.forward_seconds(256, 18))
    assert profile.forward_seconds(64, 36) == pytest.approx(profile.forward_seconds(128, 18))


def test_a_profile_can_be_a_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "sequence_tokens": 10, "points": [
        {"batch_size": 1, "seconds": 0.001}, {"batch_size": 10, "seconds": 0.002}]}))
    profile = Profile.load(str(path))
    assert profile.forward_seconds(1, 10) == 0.001
    assert profile.forward_seconds(5, 11) == pytest.approx(0.001 + 0.001 * 45 / 90)
    with pytest.raises(ProfileError, match="h200-bert-base"):  # the error lists the known ones
        Profile.load("no-such-profile")


def test_the_launch_cpu_a_profile_measured_is_spent_busy_and_the_rest_waited(tmp_path, monkeypatch):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"sequence_tokens": 16, "points": [
        {"batch_size": 1, "seconds": 0.04, "launch_cpu_seconds": 0.03},
        {"batch_size": 64, "seconds": 0.04, "launch_cpu_seconds": 0.02}]}))
    profile = Profile.load(str(path))
    assert profile.launch_cpu_seconds(8, 16) == pytest.approx(0.03 - 0.01 * 112 / 1008)
    assert Profile.load("h200-bert-base").launch_cpu_seconds(32, 16) == 0  # not measured: all wait
    model = load_model(device=f"emulated:{path}")
    model.predict(distinct_inputs(4))  # warm
    # Warm this very shape too: the stand-in's own first run of it can take milliseconds of CPU,
    # which count towards the launch CPU (tens of ms here, so that turns are always left).
    model.pipe.model(input_ids=torch.ones(8, 16, dtype=torch.long))
    waits, yields = [], []
    real_sleep, real_yield = emulated.time.sleep, emulated.os.sched_yield
    monkeypatch.setattr(emulated.time, "sleep", lambda s: (waits.append(s), real_sleep(s)))
    monkeypatch.setattr(emulated.os, "sched_yield", lambda: (yields.append(1), real_yield()))
    cpu, wall = time.thread_time(), time.perf_counter()
    model.pipe.model(input_ids=torch.ones(8, 16, dtype=torch.long))
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    busy = profile.launch_cpu_seconds(8, 16)
    assert cpu >= busy  # busy for the launch CPU, on this thread ...
    assert len(yields) > 10  # ... letting go of the GIL between short turns ...
    assert len(waits) == 1  # ... then waiting out the rest of the 40 ms
    assert waits[0] <= 0.04 - busy + 1e-9
    assert wall >= 0.04  # never sooner than the profile's time (how much later is the machine's load)


def test_an_unknown_profile_is_a_clear_load_error():
    with pytest.raises(ModelLoadError, match="no device profile 'nope'"):
        load_model(device="emulated:nope")


def test_the_pipeline_runs_for_real_and_only_the_forward_pass_waits(monkeypatch):
    waits = []
    monkeypatch.setattr(emulated.time, "sleep", waits.append)
    model = load_model(device=H200)
    assert model.device == H200
    assert model.describe()["emulated"]["profile"] == "h200-bert-base"
    texts = distinct_inputs(8)
    batch = model.predict(texts)
    alone = [model.predict([t])[0] for t in texts]
    assert len(waits) == 1 + len(texts)  # one forward pass per pipeline call
    _, padded = model.token_counts(texts)
    # The wait is what the profile says, less the stand-in's own work (this profile measured no
    # launch CPU, so there is no busy part).
    assert 0 < waits[0] <= Profile.load("h200-bert-base").forward_seconds(8, padded // 8)
    assert waits[0] > Profile.load("h200-bert-base").forward_seconds(8, padded // 8) - 0.005
    got, expected = np.array(batch), np.array(alone)
    assert got.shape == (8, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # padding changes nothing: pooled with the mask
    assert len({tuple(np.round(v, 5)) for v in got}) == 8  # every input its own answer


def test_fill_mask_answers_depend_on_the_input_on_the_emulated_device(tiny_fill_mask_model):
    model = load_model(str(tiny_fill_mask_model), device=H200)
    answers = model.predict(["the [MASK] is red .", "a [MASK] of tea"])
    assert all({"score", "token", "token_str", "sequence"} <= set(a[0]) for a in answers)
    assert answers[0][0]["token"] != answers[1][0]["token"]


def test_a_variant_serves_on_the_emulated_device_and_each_caller_gets_its_own_answer():
    bodies = distinct_inputs(120)
    direct = load_model(device=H200)
    expected = np.array([direct.predict([text])[0] for text in bodies])
    with ServerProcess("thread_offloaded", ["--device", H200, *BREAKER_OFF]) as server:
        info = httpx.get(server.url + "/info").json()
        replies = asyncio.run(post_all(server.url, bodies))
    assert info["model"]["device"] == H200
    assert info["model"]["emulated"]["emulated"] is True
    assert [r.status_code for r in replies] == [200] * len(bodies)
    np.testing.assert_allclose(np.array([r.json() for r in replies]), expected, atol=1e-5)


def test_the_cost_model_recovers_a_and_k_and_reports_each_points_error():
    shapes = [(b, n) for b in (1, 4, 16) for n in (16, 64)]
    points = [{"batch_size": b, "tokens": n, "seconds": 0.005 + 2e-7 * b * n} for b, n in shapes]
    model, errors = fit(points)
    assert model.a == pytest.approx(0.005)
    assert model.k == pytest.approx(2e-7)
    assert max(abs(e["relative_error"]) for e in errors) < 1e-9
    points[0]["seconds"] *= 1.5  # one slow point: its own error shows it
    _, errors = fit(points)
    assert errors[0]["relative_error"] < -0.2
    with pytest.raises(ValueError, match="two or more"):
        fit(points[:1])


def test_a_profile_is_measured_on_a_real_device_and_replays_on_the_emulated_one(tiny_fill_mask_model,
                                                                              tmp_path):
    from servelab.bench import profile

    result = profile.measure(str(tiny_fill_mask_model), device="cpu", batch_sizes=(1, 4), lengths=(8, 16),
                             min_seconds=0.01, progress=lambda *_: None)
    assert [(p["batch_size"], p["tokens"]) for p in result["points"]] == [(1, 8), (4, 8), (1, 16), (4, 16)]
    assert all(p["seconds"] > 0 and p["measured"] for p in result["points"])
    # On the CPU the forward pass is all this thread's work (one torch thread).
    assert all(0 < p["cpu_seconds"] <= 1.5 * p["seconds"] for p in result["points"])
    assert {"a_s", "k_s_per_token", "points"} <= set(result["cost_model"])
    assert {"git", "packages", "machine"} <= set(result)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(result))
    replay = Profile.load(str(path))
    assert replay.forward_seconds(4, 16) == pytest.approx(result["points"][3]["seconds"])
    with pytest.raises(ValueError, match="real device"):
        profile.measure(device="emulated:h200-bert-base")


def test_the_shipped_cpu_profile_serves_as_an_emulated_device():
    profile = Profile.load("cpu-2core-minilm")
    assert profile.forward_seconds(64, 64) > profile.forward_seconds(1, 16) > 0
