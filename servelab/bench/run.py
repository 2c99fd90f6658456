"""One benchmark run: start a variant, warm it up, put a load on it, write what happened.

    from servelab.bench import Load, Setup, run
    result = run("deadline", {"max_wait_ms": 2, "max_batch_size": 64}, Load.open(rate=40, duration_s=20))
    result.summary["latency_ms"]["p99"], result.run_dir

A run writes results/runs/<utc>_<variant>_<commit>/:
  manifest.json   code revision and dirty flag, versions, machine, the server's /info, the
                  load's options, the whole Setup, corpus sha256, core pinning: enough to redo it
  requests.csv    one row per request (loadtests/_request_log.py says what the columns mean)
  summary.json    rates, latency percentiles, goodput, errors, batching, the ceiling with its
                  bracket and the ratio to it, and where the model's time went
  server.log, locust.log, metrics_before.txt, metrics_after.txt
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from servelab.bench import ceiling as ceilings
from servelab.bench import corpus, stats
from servelab.bench.bracket import QuickCeiling
from servelab.bench.ceiling import ABOVE_NOTE, Bracket, Ceiling
from servelab.bench.cpuwatch import CpuWatch, memory_mb
from servelab.bench.loadgen import Load, load_window_share, read_requests, run_locust
from servelab.bench.machine import git_state, machine, parse_cores
from servelab.bench.setup import Setup
from servelab.bench.warmup import warm_up
from servelab.paths import REPO
from servelab.process import ServerProcess, server_argv
from servelab.versions import versions

# Locust's CPU per request on the reference VM (7% of a core while offering 172 req/s, first send
# to last answer): the first guess of the generator's share before a run; each run's measured
# share replaces it.
LOADGEN_CPU_S_PER_REQUEST = 0.00045


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    manifest: dict = field(repr=False)

    @property
    def requests_csv(self) -> Path:
        return self.run_dir / "requests.csv"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def requests(self) -> list[dict]:
        return read_requests(self.requests_csv)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_dir(results_dir: Path, variant: str, tag: str | None = None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}_{variant}_{git_state()['short']}"
    if tag:
        name += "_" + re.sub(r"[^\w.-]+", "-", tag)
    path = Path(results_dir) / "runs" / name
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{name}_{n}")
    path.mkdir(parents=True)
    return path


def server_option(server_args, name: str):
    """The value of one server flag in a dict or list of server args (None if absent)."""
    if isinstance(server_args, dict):
        return server_args.get(name)
    argv = server_argv(server_args)
    flag = "--" + name.replace("_", "-")
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


class Bench:
    """One server variant, started once and warmed up, then measured under one or more loads.

    with Bench("deadline", {"max_wait_ms": 2}, Setup(slo_ms=200), log_dir=folder) as bench:
        summary = bench.measure(Load.open(rate=20), out_dir)
    """

    def __init__(self, variant: str, server_args: dict | list | None = None, setup: Setup | None = None, *,
                 log_dir: Path, quick: QuickCeiling | None = None, progress=print):
        """quick: a started quick-ceiling helper to use and leave running (a sweep shares one
        across its server settings: they serve the same model); by default the bench starts its
        own when setup.bracket is set, and stops it on exit."""
        self.server_args = server_args
        self.setup = setup = setup or Setup()
        self.server_cores = parse_cores(setup.server_cores, "server")
        self.locust_cores = parse_cores(setup.locust_cores, "locust")
        self.progress = progress or (lambda *_: None)
        self.server = ServerProcess(
            variant,
            server_args,
            log=Path(log_dir) / "server.log",
            cores=self.server_cores,
            torch_threads=setup.torch_threads,
            ready_timeout_s=setup.ready_timeout_s,
        )
        self.variant = self.server.variant
        self.ceiling: Ceiling | None = None
        self.quick = quick
        self.owns_quick = quick is None
        self.warmup_result: dict | None = None
        self.loadgen_cpu_per_request = LOADGEN_CPU_S_PER_REQUEST

    def __enter__(self) -> Bench:
        try:
            if self.setup.ceiling == "measure":  # before the server starts: they would share its core
                self.progress("measuring the offline ceiling ...")
                data = ceilings.measure_in_subprocess(
                    **self._model_options(),
                    torch_threads=self.setup.torch_threads or 1,
                    cores=self.server_cores or "none",
                    loadgen_cores=self.locust_cores or "none",
                    results_dir=self.setup.results_dir,
                    quiet=True,
                )
                self.ceiling = Ceiling.from_data(data, "measured")
            self.progress(f"starting {self.variant}: {' '.join(self.server.argv[1:])}")
            self.server.start()
            self.ceiling = self.ceiling or self._known_ceiling()
            if self.setup.bracket and self.quick is None:  # its own model copy, on the idle server's core
                self.progress("starting the quick-ceiling helper ...")
                self.quick = QuickCeiling(
                    **self._model_options(),
                    torch_threads=self.setup.torch_threads or 1,
                    cores=self.server_cores,
                    loadgen_cores=self.locust_cores,
                    batch_sizes=self.ceiling.top_batch_sizes() if self.ceiling else (4, 8, 16),
                    seconds=self.setup.bracket_seconds,
                    seed=self.setup.seed,
                ).__enter__()
            if self.setup.warmup:
                self._warm_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _warm_up(self) -> None:
        settings = (self.server.info or {}).get("settings") or {}
        cap = settings.get("max_batch_size") or server_option(self.server_args, "max_batch_size") or 64
        self.warmup_result = warm_up(self.server, corpus.load_prompts(), max_batch_size=min(int(cap), 64),
                                     seed=self.setup.seed)
        self.progress(f"warmed up: {self.warmup_result}")

    def __exit__(self, *exc) -> None:
        self.server.stop()
        if self.quick and self.owns_quick:
            self.quick.__exit__()
        self.quick = None

    def _model_options(self) -> dict:
        return {
            "model": server_option(self.server_args, "model"),
            "task": server_option(self.server_args, "task"),
            "device": server_option(self.server_args, "device") or "auto",
        }

    def _known_ceiling(self) -> Ceiling | None:
        spec = self.setup.ceiling
        if isinstance(spec, Ceiling):
            return spec
        if spec in (None, "none", "measure"):
            return None
        if isinstance(spec, (int, float)):
            return Ceiling(float(spec), "given")
        if spec == "auto":
            data = ceilings.find_ceiling(self.setup.results_dir, self.server.info.get("model", {}),
                                         self.setup.torch_threads)
            return Ceiling.from_data(data, data["path"]) if data else None
        return Ceiling.from_data(json.loads(Path(spec).read_text()), str(spec))

    def base_manifest(self) -> dict:
        return {
            "git": git_state(),
            "packages": versions(),
            "machine": machine(),
            "server": {
                "variant": self.variant,
                "path": str(self.server.path.relative_to(REPO)) if self.server.path.is_relative_to(REPO)
                else str(self.server.path),
                "argv": self.server.argv[1:],
                "url": self.server.url,
                "info": self.server.info,
            },
            "setup": self.setup.to_dict(),
            "pinning": {
                "server_cores": self.server_cores,
                "locust_cores": self.locust_cores,
                "torch_threads": self.setup.torch_threads,
            },
            "seed": self.setup.seed,
            "corpus": {
                "path": str(corpus.CORPUS.relative_to(REPO)),
                "sha256": corpus.sha256(),
                "prompts": len(corpus.load_prompts()),
            },
            "warmup": self.warmup_result,
            "slo_ms": self.setup.slo_ms,
            "ceiling": self.ceiling.to_dict() if self.ceiling else None,
        }

    def measure(self, load: Load, out_dir: Path) -> dict:
        """Run one load; write manifest.json, requests.csv, summary.json into out_dir; return the summary.

        With a bracket, a quick ceiling is timed just before the load (the generator's share
        guessed from the offered rate) and just after it (the share this run measured)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.server.check_alive()
        before_quick = self._quick_ceiling(self._expected_loadgen_share(load))
        started = utc_now()
        before = self.server.metrics_text()
        (out_dir / "metrics_before.txt").write_text(before)
        # The server's own CPU share too: where a fast device leaves the model idle, the limit is
        # the one Python process in front of it (notebook 06).
        with CpuWatch(self.server.pid) as server_cpu:
            locust = run_locust(self.server.url, load, out_dir, seed=self.setup.seed, cores=self.locust_cores)
        try:
            after = self.server.metrics_text()
        except TimeoutError:  # a model on the event loop, still working through an overload's backlog
            after = ""
            self.progress("the server did not answer /metrics within 10 s of the load's end: its event "
                          "loop is still busy; this run has no server-side figures")
        (out_dir / "metrics_after.txt").write_text(after)
        self.server.check_alive()
        server_memory = memory_mb(self.server.pid)  # after the load: its queues and buffers at their largest
        rows = read_requests(locust.request_log)
        loadgen_share = locust.cpu_share(rows)
        server_share = load_window_share(server_cpu, rows)
        self.wait_idle()  # a backlog would share the quick ceiling's core
        after_quick = self._quick_ceiling(loadgen_share)
        bracket = None
        if before_quick and after_quick:
            bracket = Bracket(before_quick["seq_per_s"], after_quick["seq_per_s"],
                              before_quick["loadgen_duty"], after_quick["loadgen_duty"],
                              self.quick.batch_sizes)
        manifest = self.base_manifest() | {
            "started_utc": started,
            "finished_utc": utc_now(),
            "locust": {"argv": locust.argv[1:], "load": load.to_dict(), "cores": self.locust_cores},
            "quick_ceilings": {"before": before_quick, "after": after_quick},
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        summary = self.summarize(load, rows, before, after, bracket, loadgen_share, server_share)
        summary["server_memory"] = server_memory
        if loadgen_share and summary.get("sent_rate"):  # the next load's first guess
            self.loadgen_cpu_per_request = loadgen_share / summary["sent_rate"]
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _expected_loadgen_share(self, load: Load) -> float:
        rate = load.offered_rate() or (self.ceiling.value if self.ceiling else 0.0)
        return min(1.0, self.loadgen_cpu_per_request * rate)

    def _quick_ceiling(self, loadgen_share: float | None) -> dict | None:
        if not self.quick:
            return None
        return self.quick.measure(loadgen_duty=loadgen_share or 0.0)

    def summarize(self, load: Load, rows: list[dict], before: str, after: str, bracket: Bracket | None,
                  loadgen_share: float | None, server_share: float | None = None) -> dict:
        summary = {
            "variant": self.variant,
            "scenario": load.scenario,
            "offered_rate": load.offered_rate(),
            "users": load.users if load.scenario == "steady" else None,
        }
        summary |= stats.summarize(rows, self.setup.slo_ms, late_ms=load.late_ms)
        try:
            batching = stats.batch_stats(stats.parse_metrics(before), stats.parse_metrics(after))
            summary |= batching | stats.where_time_went(batching, summary["span_s"])
        except Exception as exc:  # a server without our metrics still gets a summary
            summary["metrics_error"] = str(exc)
        summary["loadgen_cpu_share"] = loadgen_share
        summary["server_cpu_share"] = server_share
        ceiling = self.ceiling
        if bracket:
            ceiling = ceiling.with_bracket(bracket) if ceiling else Ceiling.from_bracket(bracket)
        summary |= judge(ceiling, summary.get("achieved_rate"))
        summary["settings"] = (self.server.info or {}).get("settings")
        return summary

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until the server's queue is empty, so one measurement's backlog spares the next."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                depth = stats.parse_metrics(self.server.metrics_text()).get(("servelab_queue_depth", ()))
            except Exception:
                return
            if not depth:
                return
            time.sleep(0.2)

    def find_max_rate(self, load: Load, out_dir: Path, *, start_rate: float | None = None, max_steps: int = 8,
                      tolerance: float = 0.05) -> dict:
        """The highest open-loop rate whose p99 (errors counting as misses) meets the SLO."""
        from servelab.bench.maxrate import search

        return search(self, load, out_dir, start_rate=start_rate, max_steps=max_steps, tolerance=tolerance)


def judge(ceiling: Ceiling | None, achieved: float | None) -> dict:
    """The summary's ceiling fields: the denominator, the ratio to it, and the flag."""
    if ceiling is None:
        return {"ceiling": None, "ceiling_seq_per_s": None, "ceiling_ratio": None, "above_ceiling": None}
    detail = ceiling.to_dict(achieved)
    if detail["bracket"]:  # above the bracket by more than its own spread
        above = detail["bracket"].get("above_ceiling")
    else:  # no bracket to say how far the machine drifts: any rate above the ceiling
        above = None if achieved is None else achieved > ceiling.value
    return {
        "ceiling": detail,
        "ceiling_seq_per_s": ceiling.denominator,
        "ceiling_ratio": ceiling.ratio(achieved),
        "above_ceiling": above,
    }


def run(variant: str, server_args: dict | list | None = None, load: Load | None = None,
        setup: Setup | None = None, *, find_max_rate: bool = False, max_rate_steps: int = 8,
        max_rate_tolerance: float = 0.05, tag: str | None = None, progress=print) -> RunResult:
    """Start `variant` with `server_args`, warm it up, run `load` (default: 10 req/s open loop
    for 10 s), and write the run's folder. With find_max_rate, search the highest open-loop rate
    whose p99 stays under setup.slo_ms instead (load gives the step length and the first rate).
    """
    load = load or Load()
    setup = setup or Setup()
    progress = progress or (lambda *_: None)
    run_dir = new_run_dir(setup.results_dir, Path(variant).stem, tag)
    progress(f"run folder: {run_dir}")
    with Bench(variant, server_args, setup, log_dir=run_dir, progress=progress) as bench:
        if not find_max_rate:
            summary = bench.measure(load, run_dir)
        else:
            found = bench.find_max_rate(load, run_dir, max_steps=max_rate_steps, tolerance=max_rate_tolerance)
            summary = dict(found["best"] or {"variant": bench.variant})
            summary.update(
                max_sustainable_rate=found["max_sustainable_rate"],
                lowest_failing_rate=found["lowest_failing_rate"],
                max_rate_search=found["search"],
            )
            if found["best_dir"] is not None:  # the run folder shows the best passing step
                # Every file of it: one locust.log, or locust-N.log for each of several processes.
                for path in found["best_dir"].iterdir():
                    if path.is_file():
                        shutil.copy(path, run_dir / path.name)
            else:
                (run_dir / "manifest.json").write_text(json.dumps(bench.base_manifest(), indent=2) + "\n")
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    progress(describe(summary))
    return RunResult(run_dir, summary, manifest)


def describe(summary: dict) -> str:
    """A one-paragraph reading of a summary, for the terminal."""
    lat = summary.get("latency_ms") or {}

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    def num(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    get = summary.get
    lines = [
        f"{get('variant')} / {get('scenario')}: offered {num(get('offered_rate'))}/s, "
        f"sent {num(get('sent_rate'))}/s, achieved {num(get('achieved_rate'))}/s "
        f"({get('ok')}/{get('requests')} ok)",
        f"latency ms p50 {ms(lat.get('p50'))}  p90 {ms(lat.get('p90'))}  p99 {ms(lat.get('p99'))}  "
        f"max {ms(lat.get('max'))};  goodput {num(get('goodput_rate'))}/s within {get('slo_ms')} ms",
        f"errors {get('errors_by_status')}; late sends {get('late_sends')}; "
        f"mean batch {num(get('mean_batch_size'))}",
        f"model busy {num(get('model_busy_fraction'), '.0%')} of the time, "
        f"{num(get('busy_seq_per_s'), '.1f')} seq/s "
        f"while busy; padding {num(get('padding_share'), '.0%')} of the tokens computed; "
        f"server process {num(get('server_cpu_share'), '.0%')} of a core, "
        f"load generator {num(get('loadgen_cpu_share'), '.0%')} of its core",
        f"server memory {num((get('server_memory') or {}).get('pss_mb'), '.0f')} MB (pss, "
        f"{(get('server_memory') or {}).get('processes')} processes)",
    ]
    ceiling = get("ceiling") or {}
    bracket = ceiling.get("bracket")
    if bracket:
        lines.append(
            f"ceiling bracket {bracket['before']:.1f} -> {bracket['after']:.1f} seq/s: ratio "
            f"{num(get('ceiling_ratio'))} "
            f"({bracket['ratio_to_before']:.2f} / {bracket['ratio_to_after']:.2f} "
            f"to each end)" + (f"  ** {bracket['note']} **" if bracket.get("above_ceiling") else "")
        )
    elif get("ceiling_ratio") is not None:
        lines.append(f"ceiling {num(get('ceiling_seq_per_s'), '.1f')} seq/s ({ceiling.get('source')}): "
                     f"ratio {num(get('ceiling_ratio'))}"
                     + (f"  ** {ABOVE_NOTE} **" if get("above_ceiling") else ""))
    if "max_sustainable_rate" in summary:
        lines.append(
            f"max sustainable rate: {num(summary['max_sustainable_rate'])}/s "
            f"(p99 <= {summary.get('slo_ms')} ms)"
        )
    return "\n".join(lines)
