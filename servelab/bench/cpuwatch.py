"""What a process and its children use: CPU seconds per wall second over a chosen window, and
memory at one moment.

The runner watches Locust with it, so that each run records the load generator's CPU share,
and the ceiling's stand-in (servelab.bench.neighbour) can replay that share.
"""

from __future__ import annotations

import threading
import time


def cpu_seconds(pid: int) -> float:
    """CPU time a process and its live child processes have used so far, user + system, all
    their threads: multi_process's parent does nothing itself; its model process and front
    ends do the work."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:  # a child that ended between the listing and the reading
            continue
        total += times.user + times.system
    return total


def memory_mb(pid: int) -> dict:
    """Resident memory of a process and its live children, in MB, summed. A page that two of
    them share counts twice in the rss sum, but is split between them in pss: the pss sum is
    what the group holds."""
    import psutil

    process = psutil.Process(pid)
    total = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
    for each in [process, *process.children(recursive=True)]:
        try:
            info = each.memory_full_info()
        except psutil.Error:  # ended between the listing and the reading, or not ours to read
            continue
        total["rss_mb"] += info.rss / 1e6
        total["pss_mb"] += getattr(info, "pss", info.rss) / 1e6  # pss is Linux only
        total["processes"] += 1
    return total


class CpuWatch:
    """Samples a process's CPU time (user + system, its threads included) every period_s, on the
    wall clock (time.time(), the clock of the request log), until stopped or the process ends."""

    def __init__(self, pid: int, period_s: float = 0.2):
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float]] = []  # (wall time, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        try:
            while not self._stop.is_set():
                self.samples.append((time.time(), cpu_seconds(self.pid)))
                self._stop.wait(self.period_s)
        except psutil.Error:  # the process ended: the samples so far are all there is
            pass

    def share(self, start: float, end: float) -> float | None:
        """CPU seconds per wall second between two wall times (interpolated between samples);
        None if the samples do not cover at least half of the window."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5 * (end - start):
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
