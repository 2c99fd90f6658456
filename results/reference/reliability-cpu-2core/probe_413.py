"""Can every client read its 413? thread_offloaded on the real model; Python's urllib (which sends
the whole body before it reads) posts bodies over the limit, 20 times each, on an idle machine
and with the server's core kept busy by another process (issue 10's probe).

    .venv/bin/python results/reference/reliability-cpu-2core/probe_413.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request

from servelab.bench.machine import parse_cores
from servelab.bench.neighbour import BusyNeighbour
from servelab.process import ServerProcess

SIZES = {"1 MiB": 1 << 20, "8 MiB": 8 << 20}
TRIES = 20


def post(url: str, body: bytes) -> str:
    try:
        urllib.request.urlopen(urllib.request.Request(url + "/", data=body, method="POST"), timeout=30)
        return "200"
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:  # the client never read an answer
        return type(exc).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    server_cores, client_cores = parse_cores("auto", "server"), parse_cores("auto", "locust")
    figures = {}
    with ServerProcess("thread_offloaded", {}, cores=server_cores, torch_threads=1) as server:
        if client_cores:
            os.sched_setaffinity(0, client_cores)
        for condition, duty in (("idle", 0.0), ("server core busy", 1.0)):
            with BusyNeighbour(server_cores if duty else None, duty):
                for label, size in SIZES.items():
                    outcomes = [post(server.url, b"x" * size) for _ in range(TRIES)]
                    figures[f"{label}, {condition}"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
                    print(f"{label:>6}, {condition:>16}: {figures[f'{label}, {condition}']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
