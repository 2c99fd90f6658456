"""Circuit breaking that fires on time, and metrics and traces that add up (fake slow model)."""

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servelab.server import SHUTDOWN_GRACE_S
from tests.conftest import post, serve_in_thread
from tests.fakes import FakeModel


async def timed_post(
    client: httpx.AsyncClient, url: str, body: str
) -> tuple[float, httpx.Response | Exception]:
    start = time.monotonic()
    try:
        reply = await client.post(url + "/", content=body.encode())
    except httpx.HTTPError as exc:
        reply = exc
    return time.monotonic() - start, reply


async def open_loop(url: str, rate: float, seconds: float, client_timeout_s: float = 30):
    """Send at a fixed rate whatever the answers (open loop); returns [(body, latency, reply)]."""
    count = int(rate * seconds)
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(limits=limits, timeout=client_timeout_s) as client:
        await client.get(url + "/health")
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(timed_post(client, url, f"req {i}")))
            await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks)
    return [(f"req {i}", latency, reply) for i, (latency, reply) in enumerate(results)]


def test_max_queue_sheds_the_excess_at_once_and_never_holds_more_than_the_limit():
    # Capacity: batches of at most 4 every 50 ms = 80 req/s. Offered: 320 req/s, 4x capacity.
    model = FakeModel(batch_seconds=0.05)
    args = ["--max-queue", "10", "--max-batch-size", "4", "--max-wait-ms", "2", "--queue-timeout-ms", "60000"]
    with serve_in_thread("thread_offloaded", args, model=model) as (url, server):
        depths = []
        put = server.queue.put

        def recording_put(text, arrived=None):
            job = put(text, arrived)
            depths.append(server.queue.qsize())
            return job

        server.queue.put = recording_put
        results = asyncio.run(open_loop(url, rate=320, seconds=1.5))
    statuses = [reply.status_code for _, _, reply in results]
    assert max(depths) <= 10
    assert statuses.count(503) > len(results) / 2, "4x overload: most requests must be shed"
    shed = sorted(latency for _, latency, reply in results if reply.status_code == 503)
    p95 = shed[int(len(shed) * 0.95)]
    # At once: under the 50 ms batch that any queued request waits behind at least (a loaded
    # 2-core host once crossed the 20 ms bound this had, in a full run; alone it passes).
    assert p95 < 0.05, f"p95 time to a 503: {p95 * 1000:.1f} ms"
    for body, _, reply in results:
        if reply.status_code == 503:
            assert int(reply.headers["retry-after"]) >= 1
            assert "overloaded" in reply.json()["error"]
        else:
            assert reply.status_code == 200
            assert reply.json() == {"echo": body}


def test_queue_timeout_answers_504_on_time_while_the_model_is_busy_and_never_computes_it():
    model = FakeModel(batch_seconds=1.0)
    with serve_in_thread("thread_offloaded", ["--queue-timeout-ms", "100"], model=model) as (url, _):

        async def scenario():
            async with httpx.AsyncClient(timeout=10) as client:
                busy = asyncio.create_task(client.post(url + "/", content=b"the long batch"))
                await asyncio.sleep(0.2)  # the 1 s batch is computing now
                waiting = await asyncio.gather(*(timed_post(client, url, f"late {i}") for i in range(5)))
                return await busy, waiting

        busy, waiting = asyncio.run(scenario())
    assert busy.status_code == 200
    for latency, reply in waiting:
        assert reply.status_code == 504, reply.text
        # At its timeout, by a timer, not when the 1 s batch ends 0.8 s after the send. The upper
        # bound leaves room for a loaded CI machine (120 ms was seen there); the batch is far off.
        assert 0.08 <= latency <= 0.3, f"504 after {latency * 1000:.0f} ms, not at 100 ms"
    assert model.seen == ["the long batch"], "timed-out requests must never reach the model"


def test_requests_whose_clients_left_are_never_computed():
    model = FakeModel(batch_seconds=0.5)
    with serve_in_thread("thread_offloaded", model=model) as (url, _):

        async def scenario():
            async with httpx.AsyncClient(timeout=10) as client:
                busy = asyncio.create_task(client.post(url + "/", content=b"first"))
                await asyncio.sleep(0.1)
                async with httpx.AsyncClient(timeout=0.1) as impatient:
                    await asyncio.gather(*(timed_post(impatient, url, f"gone {i}") for i in range(5)))
                return await busy

        assert asyncio.run(scenario()).status_code == 200
        time.sleep(0.2)
        after = post(url, "after")
        metrics = httpx.get(url + "/metrics").text
    assert after.status_code == 200
    assert model.seen == ["first", "after"]
    assert 'servelab_requests_total{status="499"} 5.0' in metrics


def test_waiting_requests_get_503_when_the_server_shuts_down():
    """On shutdown the running batch finishes; requests still queued after the grace get 503."""
    model = FakeModel(batch_seconds=3.0)
    with ThreadPoolExecutor(4) as pool:
        with serve_in_thread("thread_offloaded", ["--queue-timeout-ms", "60000"], model=model) as (url, _):
            running = pool.submit(post, url, "running")
            time.sleep(0.2)
            queued = [pool.submit(post, url, f"queued {i}") for i in range(3)]
            time.sleep(0.2)
            shutdown_started = time.monotonic()
        # Leaving the block stopped the server, as SIGTERM does.
        assert time.monotonic() - shutdown_started < SHUTDOWN_GRACE_S + 2
        for future in queued:
            reply = future.result(timeout=10)
            assert reply.status_code == 503
            assert "shutting down" in reply.json()["error"]
        assert running.result(timeout=10).status_code == 200
    assert model.seen == ["running"]


def test_metrics_parse_and_count_each_request_once_by_its_final_status():
    model = FakeModel(batch_seconds=0.01)
    with serve_in_thread("thread_offloaded", ["--max-queue", "2"], model=model) as (url, _):
        sent = {"ok": 30, "bad": 7}
        for i in range(sent["ok"]):
            post(url, f"ok {i}")
        for _ in range(sent["bad"]):
            post(url, "")
        flood = asyncio.run(open_loop(url, rate=400, seconds=0.25))
        text = httpx.get(url + "/metrics").text
    observed = {}
    for _, _, reply in flood:
        observed[reply.status_code] = observed.get(reply.status_code, 0) + 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    by_status = {s.labels["status"]: s.value for s in families["servelab_requests"].samples
                 if s.name == "servelab_requests_total"}
    assert sum(by_status.values()) == sent["ok"] + sent["bad"] + len(flood)
    assert by_status["400"] == sent["bad"]
    assert by_status["200"] == sent["ok"] + observed.get(200, 0)
    assert by_status.get("503", 0) == observed.get(503, 0) > 0
    batches = {s.labels["close_reason"]: s.value for s in families["servelab_batches"].samples
               if s.name == "servelab_batches_total"}
    assert sum(batches.values()) == len(model.batches)
    size_count = next(s.value for s in families["servelab_batch_size"].samples if s.name.endswith("_count"))
    assert size_count == len(model.batches)
    for name in ("servelab_queue_depth", "servelab_queue_wait_seconds", "servelab_batch_compute_seconds",
                 "servelab_event_loop_lag_seconds"):
        assert name in families


def test_trace_has_one_consistent_line_per_batch(tmp_path):
    trace = tmp_path / "trace.jsonl"
    model = FakeModel(batch_seconds=0.02)
    flags = ["--trace", str(trace), "--max-batch-size", "4"]
    with serve_in_thread("capped_batch", flags, model=model) as (url, _):
        asyncio.run(open_loop(url, rate=200, seconds=0.3))
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == len(model.batches)
    assert sum(line["size"] for line in lines) == 60
    for line in lines:
        assert line["close_reason"] in ("deadline", "size_cap")
        assert line["opened"] <= line["closed"] <= line["compute_start"] <= line["compute_end"]
        for request in line["requests"]:
            assert request["arrived"] <= request["started"] <= request["answered"]
