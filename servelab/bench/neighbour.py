"""A stand-in for the load generator: keeps the generator's cores as busy as Locust keeps them
during a run, while the offline ceiling is timed.

Why: on a machine whose cores share caches, memory bandwidth or a physical core (the two vCPUs
of the reference VM do), a busy core slows its neighbour. A ceiling timed with the
generator's core idle is faster than anything a server can reach while Locust runs next to it,
so a served run could land above it. The stand-in replays the generator's measured CPU duty
cycle: busy for duty x 10 ms, idle for the rest, in every 10 ms period.

    with BusyNeighbour(cores=[1], duty=0.14) as neighbour:
        ... time the pipeline on core 0 ...
    neighbour.measured_duty   # CPU seconds it used per second, read from the OS

The child runs `spin` by import rather than `python -m servelab.bench.neighbour`: the bench
package imports this module itself, and runpy warns about running a module already imported.
"""

from __future__ import annotations

import subprocess
import sys
import time

from servelab.bench.cpuwatch import cpu_seconds
from servelab.paths import REPO

PERIOD_S = 0.01  # short against a batch (15-200 ms on a CPU), so every batch sees the same mix


def spin(duty: float, period_s: float = PERIOD_S) -> None:
    """Busy for duty x period_s, asleep for the rest, until killed. Pure Python arithmetic keeps
    the core's pipeline and caches busy, as the generator's interpreter does."""
    busy_s = max(0.0, min(1.0, duty)) * period_s
    next_period = time.perf_counter()
    while True:
        busy_until = next_period + busy_s
        x = 0
        while time.perf_counter() < busy_until:
            x += 1
        next_period += period_s
        pause = next_period - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:  # fell behind (preempted): start the next period now rather than burst to catch up
            next_period = time.perf_counter()


class BusyNeighbour:
    """Runs spin(duty) in a child process pinned to `cores` for the duration of a with block.
    duty 0 or no cores: does nothing (measured_duty stays 0)."""

    def __init__(self, cores: list[int] | None, duty: float):
        self.cores, self.duty = cores, float(duty)
        self.process: subprocess.Popen | None = None
        self.measured_duty = 0.0
        self._started = 0.0

    def __enter__(self) -> BusyNeighbour:
        if self.cores and self.duty > 0:
            from servelab.process import pinning

            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from servelab.bench.neighbour import spin; "
                 "spin(float(sys.argv[1]))", str(self.duty)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                preexec_fn=pinning(self.cores),
            )
            time.sleep(0.2)  # past the interpreter's start-up, so that only the spin is timed
            self._started = time.perf_counter()
            self._cpu_at_start = cpu_seconds(self.process.pid)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        used = cpu_seconds(self.process.pid) - self._cpu_at_start
        self.measured_duty = used / max(1e-9, time.perf_counter() - self._started)
        self.process.kill()
        self.process.wait()
        self.process = None

