"""Why servelab/sim does not use SimPy: the same worker written both ways, timed on 10^6 requests.

    .venv/bin/pip install simpy==4.1.2 && .venv/bin/python results/reference/sim-vs-measured/simpy_speed.py

The SimPy version is the textbook one: an arrivals process putting into a Store, and a worker
process that takes the first request, then waits for either the next one or its deadline
(`get | timeout`), up to a cap. It has no circuit breaker (each queue timeout would add a timer
per request). servelab.sim.simulate runs the same policy with the breaker's checks in place.
"""

from __future__ import annotations

import random
import time

from servelab.costmodel import BatchCost, CostModel
from servelab.sim import Policy, simulate

REQUESTS = 1_000_000
RATE, CAP, WAIT_S = 80.0, 16, 0.002
COST = BatchCost(CostModel(0.005, 0.0005))  # 5 ms + 0.5 ms per token, 20 tokens: 15 ms alone
LENGTH = 20


def arrivals(seed: int = 0) -> list[float]:
    rng, now, out = random.Random(seed), 0.0, []
    for _ in range(REQUESTS):
        now += rng.expovariate(RATE)
        out.append(now)
    return out


def with_simpy(times: list[float]) -> list[float]:
    import simpy

    env = simpy.Environment()
    store = simpy.Store(env)
    latencies = []

    def arrive():
        for t in times:
            yield env.timeout(t - env.now)
            store.put(env.now)

    def worker():
        while True:
            batch = [(yield store.get())]
            deadline = env.now + WAIT_S
            while len(batch) < CAP:
                if store.items:
                    batch.append((yield store.get()))
                    continue
                remaining = deadline - env.now
                if remaining <= 0:
                    break
                get = store.get()
                fired = yield get | env.timeout(remaining)
                if get not in fired:
                    get.cancel()
                    break
                batch.append(fired[get])
            yield env.timeout(COST.seconds(len(batch), LENGTH))
            latencies.extend(env.now - a for a in batch)

    env.process(arrive())
    env.process(worker())
    env.run()
    return latencies


def with_servelab(times: list[float]) -> list[float]:
    policy = Policy(max_wait_s=WAIT_S, max_batch_size=CAP)
    return simulate(times, [LENGTH] * len(times), policy, COST, http=0.0).latency_s


if __name__ == "__main__":
    times = arrivals()
    for name, run in (("servelab.sim", with_servelab), ("SimPy 4", with_simpy)):
        started = time.perf_counter()
        latencies = run(times)
        took = time.perf_counter() - started
        latencies.sort()
        print(f"{name:>13}: {len(latencies):,} requests in {took:5.2f} s; "
              f"p50 {latencies[len(latencies) // 2] * 1000:.2f} ms")
