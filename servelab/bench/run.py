"""One benchmark run: start a variant, warm it up, put a load on it, write what happened.

    from servelab.bench import Load, run
    result = run("deadline", {"max_wait_ms": 2, "max_batch_size": 64}, Load.open(rate=40, duration_s=20))
    result.summary["latency_ms"]["p99"], result.run_dir

A run writes results/runs/<utc>_<variant>_<commit>/:
  manifest.json   code revision and dirty flag, versions, machine, the server's /info, the
                  load's options, seed, corpus sha256, core pinning: enough to redo the run
  requests.csv    one row per request (loadtests/_request_log.py says what the columns mean)
  summary.json    rates, latency percentiles, goodput, errors, batching, ratio to the ceiling
  server.log, locust.log, metrics_before.txt, metrics_after.txt
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from servelab.bench import ceiling as ceiling_mod
from servelab.bench import corpus, stats
from servelab.bench.loadgen import Load, read_requests, run_locust
from servelab.bench.machine import git_state, machine, package_versions, parse_cores
from servelab.process import ServerProcess, server_argv

RESULTS = ceiling_mod.RESULTS
DEFAULT_SLO_MS = 100.0


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


def _server_option(server_args, name: str):
    """The value of one server flag in a dict or list of server args (None if absent)."""
    if isinstance(server_args, dict):
        return server_args.get(name)
    argv = server_argv(server_args)
    flag = "--" + name.replace("_", "-")
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


class Bench:
    """One server variant, started once and warmed up, then measured under one or more loads.

    with Bench("deadline", {"max_wait_ms": 2}) as bench:
        summary = bench.measure(Load.open(rate=20), out_dir)
    """

    def __init__(
        self,
        variant: str,
        server_args: dict | list | None = None,
        *,
        log_dir: Path,
        slo_ms: float = DEFAULT_SLO_MS,
        seed: int = 0,
        torch_threads: int | None = 1,
        server_cores="auto",
        locust_cores="auto",
        ceiling="auto",
        warmup: bool = True,
        results_dir: Path = RESULTS,
        ready_timeout_s: float = 180.0,
        progress=print,
    ):
        self.server_args = server_args
        self.slo_ms, self.seed, self.torch_threads = slo_ms, seed, torch_threads
        self.server_cores = parse_cores(server_cores, "server")
        self.locust_cores = parse_cores(locust_cores, "locust")
        self.ceiling_spec, self.warmup, self.results_dir = ceiling, warmup, Path(results_dir)
        self.progress = progress or (lambda *_: None)
        self.server = ServerProcess(
            variant,
            server_args,
            log=Path(log_dir) / "server.log",
            cores=self.server_cores,
            torch_threads=torch_threads,
            ready_timeout_s=ready_timeout_s,
        )
        self.variant = self.server.variant
        self.ceiling: dict | None = None
        self.warmup_result: dict | None = None

    def __enter__(self) -> Bench:
        if self.ceiling_spec == "measure":  # before the server: they would share its core
            self.progress("measuring the offline ceiling ...")
            self.ceiling = ceiling_mod.measure_in_subprocess(
                model=_server_option(self.server_args, "model"),
                task=_server_option(self.server_args, "task"),
                device=_server_option(self.server_args, "device") or "auto",
                torch_threads=self.torch_threads or 1,
                cores=self.server_cores or "none",
                results_dir=self.results_dir,
                quiet=True,
            )
        self.progress(f"starting {self.variant}: {' '.join(self.server.argv[1:])}")
        self.server.start()
        try:
            self.ceiling = self.ceiling or self._known_ceiling()
            if self.warmup:
                settings = (self.server.info or {}).get("settings") or {}
                max_batch = int(
                    settings.get("max_batch_size") or _server_option(self.server_args, "max_batch_size") or 64
                )
                self.warmup_result = self.server.warm_up(
                    corpus.load_prompts(), max_batch_size=min(max_batch, 64), seed=self.seed
                )
                self.progress(f"warmed up: {self.warmup_result}")
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def _known_ceiling(self) -> dict | None:
        spec = self.ceiling_spec
        if spec in (None, "none", "measure"):
            return None
        if isinstance(spec, (int, float)):
            return {"ceiling_seq_per_s": float(spec), "source": "given"}
        if spec == "auto":
            return ceiling_mod.find_ceiling(
                self.results_dir, self.server.info.get("model", {}), self.torch_threads
            )
        data = json.loads(Path(spec).read_text())
        data["path"] = str(spec)
        return data

    def base_manifest(self) -> dict:
        return {
            "git": git_state(),
            "packages": package_versions(),
            "machine": machine(),
            "server": {
                "variant": self.variant,
                "path": str(self.server.path),
                "argv": self.server.argv[1:],
                "url": self.server.url,
                "log": str(self.server.log),
                "info": self.server.info,
            },
            "pinning": {
                "server_cores": self.server_cores,
                "locust_cores": self.locust_cores,
                "torch_threads": self.torch_threads,
            },
            "seed": self.seed,
            "corpus": {
                "path": str(corpus.CORPUS.relative_to(corpus.REPO)),
                "sha256": corpus.sha256(),
                "prompts": len(corpus.load_prompts()),
            },
            "warmup": self.warmup_result,
            "slo_ms": self.slo_ms,
            "ceiling": _ceiling_brief(self.ceiling),
        }

    def measure(self, load: Load, out_dir: Path) -> dict:
        """Run one load; write manifest.json, requests.csv, summary.json into out_dir; return the summary."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.server.check_alive()
        started = utc_now()
        before = self.server.metrics_text()
        (out_dir / "metrics_before.txt").write_text(before)
        argv, request_log = run_locust(
            self.server.url, load, out_dir, seed=self.seed, cores=self.locust_cores
        )
        after = self.server.metrics_text()
        (out_dir / "metrics_after.txt").write_text(after)
        self.server.check_alive()
        manifest = self.base_manifest() | {
            "started_utc": started,
            "finished_utc": utc_now(),
            "locust": {"argv": argv[1:], "load": load.to_dict(), "cores": self.locust_cores},
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        summary = self.summarize(load, read_requests(request_log), before, after)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.wait_idle()
        return summary

    def summarize(self, load: Load, rows: list[dict], before: str, after: str) -> dict:
        summary = {
            "variant": self.variant,
            "scenario": load.scenario,
            "offered_rate": load.offered_rate(),
            "users": load.users if load.scenario == "steady" else None,
        }
        summary |= stats.summarize(rows, self.slo_ms, late_ms=load.late_ms)
        try:
            summary |= stats.batch_stats(stats.parse_metrics(before), stats.parse_metrics(after))
        except Exception as exc:  # a server without our metrics still gets a summary
            summary["metrics_error"] = str(exc)
        ceiling_rate = (self.ceiling or {}).get("ceiling_seq_per_s")
        summary["ceiling_seq_per_s"] = ceiling_rate
        achieved = summary.get("achieved_rate")
        summary["ceiling_ratio"] = achieved / ceiling_rate if ceiling_rate and achieved is not None else None
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

    def find_max_rate(
        self,
        load: Load,
        out_dir: Path,
        *,
        start_rate: float | None = None,
        max_steps: int = 8,
        tolerance: float = 0.05,
    ) -> dict:
        """The highest open-loop rate whose p99 (errors counting as misses) meets the SLO."""
        if start_rate is None:
            ceiling_rate = (self.ceiling or {}).get("ceiling_seq_per_s")
            start_rate = (
                load.rate
                if load.scenario == "open" and load.rate
                else (0.5 * ceiling_rate if ceiling_rate else 10.0)
            )
        summaries: list[tuple[float, Path, dict]] = []

        def measure_at(rate: float) -> tuple[float, dict]:
            step_dir = Path(out_dir) / "steps" / f"{len(summaries):02d}_rate_{rate:.2f}"
            summary = self.measure(load.at_rate(rate), step_dir)
            summaries.append((rate, step_dir, summary))
            p99 = summary["p99_ms_counting_errors"]
            late = summary["late_sends"] / max(1, summary["requests"])
            detail = {
                "dir": str(step_dir),
                "achieved_rate": summary["achieved_rate"],
                "error_fraction": summary["error_fraction"],
                "late_fraction": late,
            }
            self.progress(
                f"  rate {rate:8.2f}/s: p99 {p99 if p99 is not None else math.inf:9.1f} ms, "
                f"achieved {summary['achieved_rate'] or 0:7.2f}/s, errors {summary['error_fraction']:.1%}"
            )
            if late > 0.01:  # the generator could not keep its schedule: this point says nothing
                detail["invalid"] = "load generator late on more than 1% of sends"
                return math.inf, detail
            return (math.inf if p99 is None else p99), detail

        result = stats.find_max_rate(
            measure_at, self.slo_ms, start_rate, max_steps=max_steps, tolerance=tolerance
        )
        best = next((s for r, _, s in summaries if r == result.max_rate), None)
        best_dir = next((d for r, d, _ in summaries if r == result.max_rate), None)
        return {
            "max_sustainable_rate": result.max_rate,
            "lowest_failing_rate": result.lowest_failing_rate,
            "search": result.to_dict()["steps"],
            "best": best,
            "best_dir": best_dir,
        }


def _ceiling_brief(ceiling: dict | None) -> dict | None:
    if not ceiling:
        return None
    keys = ("ceiling_seq_per_s", "best_batch_size", "torch_threads", "cores", "created_utc", "path", "source")
    return {k: ceiling[k] for k in keys if k in ceiling}


def run(
    variant: str,
    server_args: dict | list | None = None,
    load: Load | None = None,
    *,
    slo_ms: float = DEFAULT_SLO_MS,
    seed: int = 0,
    torch_threads: int | None = 1,
    server_cores="auto",
    locust_cores="auto",
    ceiling="auto",
    find_max_rate: bool = False,
    max_rate_steps: int = 8,
    max_rate_tolerance: float = 0.05,
    warmup: bool = True,
    results_dir: Path = RESULTS,
    tag: str | None = None,
    progress=print,
) -> RunResult:
    """Start `variant` with `server_args`, warm it up, run `load` (default: 10 req/s open loop
    for 10 s), and write the run's folder. With find_max_rate, search the highest open-loop rate
    whose p99 stays under slo_ms instead (load gives the step length and the first rate).

    ceiling: "auto" (a ceiling file from `python -m servelab ceiling` for the same model and
    threads, if any), "measure" (measure it first), "none", a number, or a path to a file.
    Cores: "auto" (server on the first core, Locust on the second), "none", or "0,1"-style.
    """
    load = load or Load()
    progress = progress or (lambda *_: None)
    results_dir = Path(results_dir)
    run_dir = new_run_dir(results_dir, Path(variant).stem, tag)
    progress(f"run folder: {run_dir}")
    with Bench(
        variant,
        server_args,
        log_dir=run_dir,
        slo_ms=slo_ms,
        seed=seed,
        torch_threads=torch_threads,
        server_cores=server_cores,
        locust_cores=locust_cores,
        ceiling=ceiling,
        warmup=warmup,
        results_dir=results_dir,
        progress=progress,
    ) as bench:
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
                for name in (
                    "requests.csv",
                    "manifest.json",
                    "locust.log",
                    "metrics_before.txt",
                    "metrics_after.txt",
                ):
                    shutil.copy(found["best_dir"] / name, run_dir / name)
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
        f"mean batch {num(get('mean_batch_size'))}; ceiling ratio {num(get('ceiling_ratio'))}",
    ]
    if "max_sustainable_rate" in summary:
        lines.append(
            f"max sustainable rate: {num(summary['max_sustainable_rate'])}/s "
            f"(p99 <= {summary.get('slo_ms')} ms)"
        )
    return "\n".join(lines)
