"""The job queue: FIFO, the length limit, the timer that fires on time, and skipped dead jobs."""

import asyncio

import pytest

from servelab.jobs import JobQueue, QueueFull, QueueTimeout, ServiceUnavailable


def run(coro):
    return asyncio.run(coro)


def test_fifo_and_qsize():
    async def main():
        queue = JobQueue()
        jobs = [queue.put(str(i)) for i in range(3)]
        assert queue.qsize() == 3
        taken = [await queue.get(), queue.get_nowait(), await queue.get()]
        assert taken == jobs
        assert queue.empty()
        assert all(job.started is not None for job in taken)

    run(main())


def test_max_queue_refuses_when_full_and_counts_only_waiting():
    async def main():
        queue = JobQueue(max_queue=2)
        queue.put("a")
        queue.put("b")
        with pytest.raises(QueueFull):
            queue.put("c")
        await queue.get()  # started jobs no longer count against the limit
        queue.put("c")

    run(main())


def test_queue_timeout_fires_on_time_and_job_is_never_taken():
    async def main():
        loop = asyncio.get_running_loop()
        queue = JobQueue(queue_timeout_s=0.05)
        expired = queue.put("late")
        start = loop.time()
        with pytest.raises(QueueTimeout):
            await expired.future
        assert 0.04 <= loop.time() - start < 0.1
        assert queue.qsize() == 0
        fresh = queue.put("fresh")
        assert await queue.get() is fresh  # the expired job was skipped

    run(main())


def test_started_job_does_not_time_out():
    async def main():
        queue = JobQueue(queue_timeout_s=0.02)
        job = queue.put("x")
        await queue.get()
        await asyncio.sleep(0.05)
        assert not job.future.done()

    run(main())


def test_drop_and_drop_all():
    async def main():
        queue = JobQueue()
        a, b, c = (queue.put(t) for t in "abc")
        assert queue.drop(b, ServiceUnavailable("client left"))
        assert not queue.drop(b, ServiceUnavailable("twice"))
        assert await queue.get() is a
        assert queue.drop_all(ServiceUnavailable("shutdown")) == 1
        with pytest.raises(ServiceUnavailable):
            c.future.result()
        with pytest.raises(asyncio.QueueEmpty):
            queue.get_nowait()

    run(main())


def test_a_request_already_late_when_queued_gets_504_at_once():
    """The timeout counts from the request's arrival: time spent reading it counts too."""
    async def main():
        loop = asyncio.get_running_loop()
        queue = JobQueue(queue_timeout_s=0.05)
        with pytest.raises(QueueTimeout, match="before it could even be queued"):
            queue.put("late", arrived=loop.time() - 0.06)
        assert queue.empty()  # never queued, so never computed
        job = queue.put("on time", arrived=loop.time() - 0.03)  # 20 ms left of its 50
        await asyncio.sleep(0.035)
        assert isinstance(job.future.exception(), QueueTimeout)

    run(main())
