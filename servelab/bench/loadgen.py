"""Locust, run headless as a subprocess (never imported: `import locust` monkey-patches the
process with gevent, which hangs a Jupyter kernel), and the per-request rows it writes.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from servelab.bench.cpuwatch import CpuWatch
from servelab.paths import LOADTESTS, REPO
from servelab.process import pinning, stop_group, tail


def _load_options_table():
    """loadtests/_options.py, the one table of the load tests' options (names, types, defaults,
    help). loadtests/ is a folder of Locust files, not a package, so it is loaded by its path;
    it imports only the standard library, never Locust."""
    name = "servelab_loadtest_options"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LOADTESTS / "_options.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


LOAD_OPTIONS = _load_options_table()
DEFAULTS = LOAD_OPTIONS.DEFAULTS


class LoadError(RuntimeError):
    """Locust failed; the message ends with the tail of its log."""


@dataclass
class Load:
    """What the load generator does (see loadtests/README.md for the scenarios).

    open: Poisson arrivals at `rate` per second for `duration_s`, whatever the answers.
    steady: `users` closed-loop users for `duration_s`.
    spike: open loop at spike_baseline x capacity_rate, spike_factor x capacity_rate for
           spike_s, then the baseline again.
    ramp: closed-loop users in steps (ramp_*), as long as the steps take.
    """

    # The defaults are the load tests' own (loadtests/_options.py), except where noted.
    scenario: str = "open"  # Locust's is steady; a benchmark measures open-loop arrivals
    rate: float | None = DEFAULTS["offered_rate"]
    users: int | None = None
    duration_s: float = 10.0  # Locust's -t, which has no default
    capacity_rate: float | None = None  # a spike needs it given: the server's, not a guess
    spike_factor: float = DEFAULTS["spike_factor"]
    spike_baseline: float = DEFAULTS["spike_baseline"]
    spike_before_s: float = DEFAULTS["spike_before_s"]
    spike_s: float = DEFAULTS["spike_s"]
    spike_after_s: float = DEFAULTS["spike_after_s"]
    ramp_start_users: int = DEFAULTS["ramp_start_users"]
    ramp_step_users: int = DEFAULTS["ramp_step_users"]
    ramp_step_s: float = DEFAULTS["ramp_step_s"]
    ramp_max_users: int = DEFAULTS["ramp_max_users"]
    arrivals: str = DEFAULTS["arrivals"]
    late_ms: float = DEFAULTS["late_ms"]
    request_timeout_s: float = DEFAULTS["request_timeout_s"]
    drain_s: float = DEFAULTS["drain_s"]
    # Locust processes sharing the load. One gevent process tops out near a thousand or two
    # requests a second; a GPU server needs several. Each runs its own share (see part()).
    processes: int = 1

    @classmethod
    def open(cls, rate: float, duration_s: float = 10.0, **kwargs) -> Load:
        return cls(scenario="open", rate=rate, duration_s=duration_s, **kwargs)

    @classmethod
    def steady(cls, users: int, duration_s: float = 10.0, **kwargs) -> Load:
        return cls(scenario="steady", rate=None, users=users, duration_s=duration_s, **kwargs)

    @classmethod
    def spike(cls, capacity_rate: float, factor: float = DEFAULTS["spike_factor"], **kwargs) -> Load:
        return cls(scenario="spike", rate=None, capacity_rate=capacity_rate, spike_factor=factor, **kwargs)

    def at_rate(self, rate: float) -> Load:
        return replace(self, scenario="open", rate=rate, users=None)

    def part(self, index: int) -> Load:
        """The share of this load that Locust process `index` of `processes` runs.

        Open and spike loads split the rate: n independent Poisson streams at rate/n add up to
        one Poisson stream at the full rate. A steady load splits its users.
        """
        n = self.processes
        if n == 1:
            return self
        if self.scenario == "open":
            return replace(self, rate=self.rate / n, processes=1)
        if self.scenario == "spike":
            return replace(self, capacity_rate=self.capacity_rate / n, processes=1)
        if self.scenario == "steady":
            users = self.users // n + (1 if index < self.users % n else 0)
            return replace(self, users=users, processes=1)
        raise ValueError(f"a {self.scenario} load runs in one Locust process (processes=1)")

    def offered_rate(self) -> float | None:
        """Mean offered rate of an open-loop load (None for closed-loop users)."""
        if self.scenario == "open":
            return self.rate
        if self.scenario == "spike":
            low = self.spike_baseline * self.capacity_rate
            seconds = self.spike_before_s + self.spike_s + self.spike_after_s
            high = self.spike_factor * self.capacity_rate
            return (low * (self.spike_before_s + self.spike_after_s) + high * self.spike_s) / seconds
        return None

    def locust_args(self) -> list[str]:
        """The loadtests/ options for this load (see loadtests/README.md)."""
        run_time = f"{max(1, math.ceil(self.duration_s))}s"  # Locust takes whole seconds
        stop_timeout = f"{math.ceil(self.request_timeout_s)}s"
        common = flags(
            scenario=self.scenario,
            late_ms=self.late_ms,
            request_timeout_s=self.request_timeout_s,
            drain_s=self.drain_s,
        )
        if self.scenario == "open":
            if not self.rate or self.rate <= 0:
                raise ValueError("an open-loop load needs a rate > 0")
            return common + flags(offered_rate=self.rate, arrivals=self.arrivals) + ["-t", run_time]
        if self.scenario == "steady":
            if not self.users:
                raise ValueError("a steady load needs users > 0")
            # --stop-timeout: requests in flight at the end get their answers, not a kill.
            users = str(self.users)
            return [*common, "-u", users, "-r", users, "-t", run_time, *flags(stop_timeout=stop_timeout)]
        if self.scenario == "spike":
            if not self.capacity_rate:
                raise ValueError("a spike load needs capacity_rate (the server's capacity in req/s)")
            return common + flags(
                capacity_rate=self.capacity_rate,
                spike_factor=self.spike_factor,
                spike_baseline=self.spike_baseline,
                arrivals=self.arrivals,
                spike_before_s=self.spike_before_s,
                spike_s=self.spike_s,
                spike_after_s=self.spike_after_s,
            )
        if self.scenario == "ramp":
            return common + flags(
                ramp_start_users=self.ramp_start_users,
                ramp_step_users=self.ramp_step_users,
                ramp_step_s=self.ramp_step_s,
                ramp_max_users=self.ramp_max_users,
                stop_timeout=stop_timeout,
            )
        raise ValueError(f"unknown scenario {self.scenario!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def flags(**options) -> list[str]:
    """flags(offered_rate=5) -> ["--offered-rate", "5"]"""
    out: list[str] = []
    for name, value in options.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


def locust_argv(host: str, load: Load, request_log: Path, seed: int) -> list[str]:
    # --exit-code-on-error 0: 503s under overload are results, not a failed run.
    # fmt: off
    return [sys.executable, "-m", "locust", "-f", str(LOADTESTS), "--headless", "--host", host,
            "--only-summary", "--exit-code-on-error", "0", *flags(seed=seed, request_log=request_log),
            *load.locust_args()]
    # fmt: on


def run_locust(
    host: str,
    load: Load,
    out_dir: Path,
    *,
    seed: int = 0,
    cores: list[int] | None = None,
    timeout_s: float | None = None,
) -> LocustRun:
    """Run Locust to the end of the load; return its argv, the per-request CSV path, and the
    CPU it used (sampled while it ran).

    With load.processes > 1, that many Locust processes each run their part of the load, with
    seeds of their own, each pinned to one of `cores` in turn; their request logs are merged.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    request_log = out_dir / "requests.csv"
    if timeout_s is None:
        timeout_s = expected_seconds(load) + load.drain_s + 60
    n = load.processes
    if n < 1:
        raise ValueError("a load needs at least one Locust process")
    if n > 1 and load.scenario == "steady" and load.users < n:
        raise ValueError(f"{load.users} users cannot be shared among {n} Locust processes")
    parts = []
    for index in range(n):
        log_path = request_log if n == 1 else out_dir / f"requests-{index}.csv"
        console = out_dir / ("locust.log" if n == 1 else f"locust-{index}.log")
        # Process 0 keeps the run's seed, so that one process draws what a plain run draws.
        argv = locust_argv(host, load.part(index), log_path, seed + PART_SEED_STRIDE * index)
        own_cores = cores if n == 1 or not cores else [cores[index % len(cores)]]
        parts.append((argv, log_path, console, own_cores))
    processes: list[subprocess.Popen] = []
    with ExitStack() as stack:
        # Unwound last: whatever still runs after a timeout, an exception or Ctrl-C is stopped.
        stack.callback(lambda: [stop_group(p) for p in processes if p.poll() is None])
        watches = []
        for argv, _, console, own_cores in parts:
            with console.open("wb") as out:
                process = subprocess.Popen(
                    argv,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    start_new_session=True,
                    preexec_fn=pinning(own_cores),
                )
            processes.append(process)
            watches.append(stack.enter_context(CpuWatch(process.pid)))
        deadline = time.monotonic() + timeout_s
        codes = []
        for process, (_, _, console, _) in zip(processes, parts, strict=True):
            try:
                codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise LoadError(
                    f"locust still running after {timeout_s:.0f} s; stopped. Log:\n{tail(console)}"
                ) from None
    for code, (_, log_path, console, _) in zip(codes, parts, strict=True):
        if code != 0 or not log_path.is_file():
            raise LoadError(f"locust exited with code {code}. Log:\n{tail(console)}")
    if n > 1:
        merge_request_logs([log_path for _, log_path, _, _ in parts], request_log)
    return LocustRun(parts[0][0], request_log, watches)


# Locust process i of a multi-process load is seeded with seed + PART_SEED_STRIDE * i.
PART_SEED_STRIDE = 1_000_003


def merge_request_logs(parts: list[Path], merged: Path) -> None:
    """One request log from several processes' logs, in order of intended send. A row's user
    gets its process's number ("open@1"), so that (user, seq) still names one request."""
    rows = []
    header = None
    for index, path in enumerate(parts):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            user = header.index("user")
            for row in reader:
                row[user] = f"{row[user]}@{index}"
                rows.append(row)
    intended = header.index("intended_send_s")
    rows.sort(key=lambda row: float(row[intended]))
    with merged.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    for path in parts:
        path.unlink()


@dataclass
class LocustRun:
    argv: list[str]  # the first process's, when there are several
    request_log: Path
    cpus: list[CpuWatch]  # one per Locust process

    def cpu_share(self, rows: list[dict]) -> float | None:
        """Locust's CPU seconds per second while the load ran (first send to last answer),
        start-up and drain left out, summed over its processes: what the ceiling's stand-in
        replays."""
        shares = [load_window_share(cpu, rows) for cpu in self.cpus]
        return None if None in shares else sum(shares)


def load_window_share(cpu: CpuWatch, rows: list[dict]) -> float | None:
    """A watched process's CPU share from the first send to the last answer of these rows."""
    if not rows:
        return None
    start = min(r["actual_send_s"] for r in rows)
    ends = [r["actual_send_s"] + (r["latency_ms"] or 0) / 1000 for r in rows]
    return cpu.share(start, max(ends))


def expected_seconds(load: Load) -> float:
    if load.scenario == "spike":
        return load.spike_before_s + load.spike_s + load.spike_after_s
    if load.scenario == "ramp":
        steps = (load.ramp_max_users - load.ramp_start_users) // load.ramp_step_users + 1
        return steps * load.ramp_step_s
    return load.duration_s


def read_requests(path: Path) -> list[dict]:
    """The per-request CSV as dicts with numbers (latency_ms None when no answer came)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    "seq": int(row["seq"]),
                    "user": row["user"],
                    "intended_send_s": float(row["intended_send_s"]),
                    "actual_send_s": float(row["actual_send_s"]),
                    "lateness_ms": float(row["lateness_ms"]),
                    "latency_ms": float(row["latency_ms"]) if row["latency_ms"] else None,
                    "service_ms": float(row["service_ms"]) if row["service_ms"] else None,
                    "status": int(row["status"]),
                    "input_words": int(row["input_words"]),
                    "error": row["error"],
                }
            )
    return rows
