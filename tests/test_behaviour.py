"""Each variant over HTTP with a fake model: answers go to their own callers, bad requests stay
bad requests, a failing input fails alone, and a blocked event loop is visible."""

import asyncio
import time

import httpx
import pytest

from tests.conftest import BREAKER_OFF, breaker_off, post, serve_in_thread
from tests.fakes import FakeModel


async def post_many(url: str, bodies: list[str], client_timeout_s: float = 30) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=client_timeout_s) as client:
        return await asyncio.gather(*(client.post(url + "/", content=b.encode()) for b in bodies))


def test_every_caller_gets_its_own_answer(variant):
    model = FakeModel(batch_seconds=0.005)
    with serve_in_thread(variant, breaker_off(variant), model=model) as (url, _):
        bodies = [f"request {i}" for i in range(100)]
        replies = asyncio.run(post_many(url, bodies))
    assert [r.status_code for r in replies] == [200] * 100
    assert [r.json() for r in replies] == [{"echo": b} for b in bodies]
    # (slo_aware also runs inputs of its own at start-up, to measure the model)
    assert sorted(t for t in model.seen if t.startswith("request ")) == sorted(bodies), "each computed once"


def test_a_failing_input_fails_alone_and_the_loop_survives(variant, caplog):
    model = FakeModel(batch_seconds=0.02)
    with serve_in_thread(variant, breaker_off(variant), model=model) as (url, _):
        bodies = [f"ok {i}" for i in range(10)] + ["POISON"] + [f"ok {i}" for i in range(10, 20)]
        replies = asyncio.run(post_many(url, bodies))
        after = post(url, "still there?")
    for body, reply in zip(bodies, replies, strict=True):
        if body == "POISON":
            assert reply.status_code == 500
            error = reply.json()
            assert error["request_id"]
            assert "ValueError" in error["error"]
            assert "Traceback" not in reply.text
            # The client's id is the one its traceback is logged under.
            assert reply.headers["x-request-id"] == error["request_id"]
            logged = [r for r in caplog.records if error["request_id"] in r.getMessage()]
            assert logged
            assert logged[0].exc_info is not None
        else:
            assert reply.status_code == 200
            assert reply.json() == {"echo": body}
    assert after.status_code == 200
    assert after.json() == {"echo": "still there?"}


@pytest.mark.parametrize(("body", "content_type", "status", "words"), [
    (b"\xff\xfe not utf-8", None, 400, "UTF-8"),
    (b"", None, 400, "empty"),
    (b"  \n\t ", None, 400, "empty"),
    (b'{"inputs": ', "application/json", 400, "malformed JSON"),
    (b'{"text": "x"}', "application/json", 400, "inputs"),
    (b"x" * (64 * 1024 + 1), None, 413, "limit"),
])
def test_bad_requests_get_a_clear_status_and_the_next_one_is_served(body, content_type, status, words):
    headers = {"content-type": content_type} if content_type else {}
    with serve_in_thread("deadline") as (url, _):
        reply = httpx.post(url + "/", content=body, headers=headers, timeout=10)
        good = post(url, "good")
    assert reply.status_code == status
    assert words in reply.json()["error"]
    assert good.status_code == 200


def test_a_chunked_body_over_the_limit_gets_413_without_being_read_whole():
    def chunks():
        for _ in range(1000):
            yield b"x" * 1024

    with serve_in_thread("deadline", ["--max-body-bytes", "4096"]) as (url, _):
        reply = httpx.post(url + "/", content=chunks(), timeout=10)
    assert reply.status_code == 413


def test_json_body_is_accepted():
    with serve_in_thread("deadline") as (url, _):
        reply = httpx.post(url + "/", json={"inputs": "hello"}, timeout=10)
    assert reply.status_code == 200
    assert reply.json() == {"echo": "hello"}


def test_capped_batch_holds_its_cap_under_a_flood_over_http():
    model = FakeModel(batch_seconds=0.01)
    with serve_in_thread("capped_batch", ["--max-batch-size", "8", *BREAKER_OFF], model=model) as (url, _):
        replies = asyncio.run(post_many(url, [f"r{i}" for i in range(120)]))
    assert all(r.status_code == 200 for r in replies)
    assert max(model.sizes) <= 8
    assert max(model.sizes) == 8, "a flood should fill batches to the cap"


def test_when_the_model_loop_dies_health_and_requests_answer_503_at_once():
    with serve_in_thread("deadline", model=FakeModel(crash=True)) as (url, _):
        first = post(url, "kills the loop")
        health = httpx.get(url + "/health")
        start = time.monotonic()
        later = post(url, "after")
        elapsed = time.monotonic() - start
    assert first.status_code == 503
    assert "model loop ended" in first.json()["error"]
    assert health.status_code == 503
    assert later.status_code == 503
    assert elapsed < 1


def health_latency_during_a_long_batch(variant: str) -> float:
    """Seconds /health takes to answer while the model computes a 500 ms batch."""
    with (
        serve_in_thread(variant, model=FakeModel(batch_seconds=0.5)) as (url, _),
        httpx.Client(timeout=10) as client,
    ):
        client.get(url + "/health")  # connect first: measure the answer, not the handshake

        async def probe():
            async with httpx.AsyncClient(timeout=10) as aclient:
                busy = asyncio.create_task(aclient.post(url + "/", content=b"slow"))
                await asyncio.sleep(0.1)  # the batch is now computing
                start = time.monotonic()
                await asyncio.to_thread(client.get, url + "/health")
                elapsed = time.monotonic() - start
                assert (await busy).status_code == 200
                return elapsed

        return asyncio.run(probe())


def test_thread_offloaded_answers_health_while_a_batch_runs():
    assert health_latency_during_a_long_batch("thread_offloaded") < 0.05


def test_a_variant_on_the_event_loop_makes_health_wait_for_the_batch():
    assert health_latency_during_a_long_batch("capped_batch") > 0.3


def test_info_names_the_variant_settings_and_versions():
    with serve_in_thread("capped_batch", ["--max-batch-size", "7"]) as (url, _):
        info = httpx.get(url + "/info").json()
    assert info["variant"] == "capped_batch"
    assert info["settings"]["max_batch_size"] == 7
    assert info["model"]["task"] == "fake"
    assert {"python", "torch", "transformers", "starlette", "uvicorn"} <= set(info["versions"])


@pytest.mark.parametrize("variant", ["naive", "capped_batch"])
def test_a_worker_on_the_event_loop_still_sends_answers_between_batches(variant):
    """asyncio.Queue.get never yields when items wait: without a turn for the loop between
    batches, every answer of a burst would be written only once the whole burst was computed."""
    model = FakeModel(batch_seconds=0.05)
    with serve_in_thread(variant, ["--max-batch-size", "2"] if variant == "capped_batch" else [],
                         model=model) as (url, _):

        async def burst():
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20), timeout=30) as client:
                start = time.monotonic()

                async def one(i):
                    await client.post(url + "/", content=f"r{i}".encode())
                    return time.monotonic() - start

                return sorted(await asyncio.gather(*(one(i) for i in range(20))))

        done_at = asyncio.run(burst())
    assert done_at[0] < done_at[-1] / 3, f"first answer at {done_at[0]:.2f} s, last at {done_at[-1]:.2f} s"


def test_shutdown_listens_on_while_connections_come_in_then_closes_within_a_bound(monkeypatch):
    """At SIGTERM a busy server still has connections in its listen backlog, which closing the
    listener would reset. DrainingServer listens on while they come in, one tick when idle."""
    import uvicorn

    from servelab import cli

    monkeypatch.setattr(cli, "BACKLOG_DRAIN_TICK_S", 0.01)
    monkeypatch.setattr(cli, "BACKLOG_DRAIN_MAX_S", 0.5)

    class AppServer:
        open_connections = None

    draining = cli.DrainingServer(uvicorn.Config(app=None), AppServer())

    async def drain_while_connecting(for_s: float) -> float:
        async def connect():
            give_up = time.monotonic() + for_s
            while time.monotonic() < give_up:
                draining.server_state.connections.add(object())  # a new connection each 5 ms
                await asyncio.sleep(0.005)

        async def drain() -> float:
            start = time.monotonic()
            await draining.take_in_the_backlog()
            return time.monotonic() - start

        return (await asyncio.gather(connect(), drain()))[1]

    assert asyncio.run(drain_while_connecting(0)) < 0.05  # idle: one tick
    assert 0.1 <= asyncio.run(drain_while_connecting(0.1)) < 0.2  # while they come, then one tick
    assert asyncio.run(drain_while_connecting(2.0)) < 2.0  # never past the bound (it stops at 0.5)
