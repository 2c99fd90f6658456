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
    CPU it used (sampled while it ran)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    request_log = out_dir / "requests.csv"
    log = out_dir / "locust.log"
    argv = locust_argv(host, load, request_log, seed)
    if timeout_s is None:
        timeout_s = expected_seconds(load) + load.drain_s + 60
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
            preexec_fn=pinning(cores),
        )
        try:
            with CpuWatch(process.pid) as cpu:
                code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(process)
            raise LoadError(
                f"locust still running after {timeout_s:.0f} s; stopped. Log:\n{tail(log)}"
            ) from None
        finally:
            if process.poll() is None:  # an exception or Ctrl-C in this process
                stop_group(process)
    if code != 0 or not request_log.is_file():
        raise LoadError(f"locust exited with code {code}. Log:\n{tail(log)}")
    return LocustRun(argv, request_log, cpu)


@dataclass
class LocustRun:
    argv: list[str]
    request_log: Path
    cpu: CpuWatch

    def cpu_share(self, rows: list[dict]) -> float | None:
        """Locust's CPU seconds per second while the load ran (first send to last answer),
        start-up and drain left out: what the ceiling's stand-in replays."""
        return load_window_share(self.cpu, rows)


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
