"""How late does a 504 reach its client? thread_offloaded with --queue-timeout-ms 200 on the real
model, bursts of 400 requests at once over connections opened beforehand, each timed from its own
send (issue 10's probe).

    .venv/bin/python results/reference/reliability-cpu-2core/probe_504.py [--bursts 5] [--out FILE]

The server is pinned to core 0 and this client to core 1, as in a bench run. Prints the time to
each 504 (p50, p90, max, how many over 300 ms), the statuses, and the event-loop lag the server's
/metrics saw (its histogram's count over 100 ms and its largest bucket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from servelab.bench import corpus, stats
from servelab.bench.machine import parse_cores
from servelab.bench.warmup import warm_up
from servelab.process import ServerProcess

TIMEOUT_MS = 200


async def burst(host: str, port: int, bodies: list[bytes]) -> list[tuple[int, float]]:
    """Open every connection first, then send every request at once; (status, seconds) each."""
    streams = [await asyncio.open_connection(host, port) for _ in bodies]
    sent = [0.0] * len(bodies)
    for i, ((_, writer), body) in enumerate(zip(streams, bodies, strict=True)):
        writer.write(b"POST / HTTP/1.1\r\nHost: probe\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        sent[i] = time.perf_counter()

    async def answer(i: int) -> tuple[int, float]:
        reader, writer = streams[i]
        head = await reader.readuntil(b"\r\n\r\n")
        took = time.perf_counter() - sent[i]
        status = int(head.split()[1])
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        writer.close()
        return status, took

    return await asyncio.gather(*(answer(i) for i in range(len(bodies))))


def loop_lag(metrics_before: str, metrics_after: str) -> dict:
    before, after = stats.parse_metrics(metrics_before), stats.parse_metrics(metrics_after)
    buckets = {}
    for (name, labels), value in after.items():
        if name == "servelab_event_loop_lag_seconds_bucket":
            le = dict(labels)["le"]
            buckets[le] = value - before.get((name, labels), 0.0)
    total = buckets.get("+Inf", 0.0)
    ordered = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
    over_100ms = total - next((n for le, n in ordered if le >= 0.1), total)
    largest = next((le for le, n in reversed(ordered) if n < total), None)
    return {"samples": total, "over_100_ms": over_100ms, "max_at_least_s": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument("--server-cores", default="auto", help="as the bench's: auto is the first core")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server flag, e.g. --server-arg=--model-nice=0 (repeatable)")
    parser.add_argument("--py-spy", default=None, metavar="BINARY",
                        help="record the server with this py-spy during the bursts (collapsed stacks "
                        "beside --out, .stacks.txt)")
    args = parser.parse_args()
    server_cores, client_cores = parse_cores(args.server_cores, "server"), parse_cores("auto", "locust")
    prompts = corpus.load_prompts()
    server_args = ["--queue-timeout-ms", str(TIMEOUT_MS), "--max-queue", "0"]
    server_args += [part for arg in args.server_arg for part in arg.split("=", 1)]
    with ServerProcess("thread_offloaded", server_args, cores=server_cores, torch_threads=1) as server:
        warm_up(server, prompts, max_batch_size=16)
        if client_cores:
            os.sched_setaffinity(0, client_cores)
        host, port = server.url.removeprefix("http://").split(":")
        before = server.metrics_text()
        spy = None
        if args.py_spy:
            seconds = str(args.bursts * 4 + 2)
            stacks = str(Path(args.out).with_suffix(".stacks.txt"))  # collapsed stacks, one per line
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(server.pid), "--threads",
                                    "--rate", "250", "--duration", seconds, "--format", "raw",
                                    "--output", stacks])
            time.sleep(1)
        results = []
        for k in range(args.bursts):
            bodies = [prompts[(k * args.size + i) % len(prompts)].encode() for i in range(args.size)]
            answers = asyncio.run(burst(host, int(port), bodies))
            mine = [took * 1000 for status, took in answers if status == 504]
            print(f"burst {k + 1}: {len(mine)} 504s, p50 {stats.percentile(mine, 50):.0f} ms, "
                  f"p90 {stats.percentile(mine, 90):.0f} ms, max {max(mine, default=0):.0f} ms", flush=True)
            results += answers
            time.sleep(3)  # let the backlog drain between bursts
        after = server.metrics_text()
        if spy:
            spy.wait()
    late = [took * 1000 for status, took in results if status == 504]
    print("time to 504, deciles (ms):", [round(stats.percentile(late, p)) for p in range(0, 101, 10)])
    figures = {
        "requests": len(results),
        "statuses": {str(s): sum(1 for st, _ in results if st == s)
                     for s in sorted({st for st, _ in results})},
        "time_to_504_ms": {"p50": stats.percentile(late, 50), "p90": stats.percentile(late, 90),
                           "max": max(late, default=None)},
        "over_300_ms": sum(1 for v in late if v > 300),
        "loop_lag": loop_lag(before, after),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
