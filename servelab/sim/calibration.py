"""The measured inputs of a simulation, for one model on one device: the batch cost model (from
the ceiling) and the server's own work outside the pipeline (from a few short runs).

    python -m servelab simulate --calibrate [--device emulated:h200-bert-base]

The server's own work is measured, not guessed. A blocking server (capped_batch) offered more
than it can serve keeps its one core busy with pipeline calls and its own work, one after the
other; /metrics count the pipeline's seconds, and the rest of the span is the rest. That rest is
per_batch x batches + per_request x answers + per_refusal x 503s, and three runs that mix those
differently (caps 1 and 16, a small and a large overload, a short queue limit so the queue stays
as short as in a served run) give all three. Then:
- thread_offloaded at a cap of 1, saturated, gives what handing each batch to a thread and back
  costs beyond that (offload_s);
- capped_batch at a cap of 1 under light load gives what a request's latency holds beyond the
  server's work: the client's own time, and an idle core that computes slower than a hot loop
  (idle_extra_s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from servelab.costmodel import BatchCost
from servelab.paths import RESULTS
from servelab.sim.engine import HttpCost

BIG_BATCH = 16
RUN_FIGURES = ("variant", "offered_rate", "achieved_rate", "ok", "errors_by_status", "mean_batch_size",
               "span_s", "compute_s", "batches", "padded_tokens", "server_cpu_share")
# The calibration runs: (name, variant, cap, offered rate as a multiple of what the pipeline alone
# does at that cap). The breaker's queue limit is twice the cap (a short queue, as a served run
# with a breaker keeps it), and no queue timeout.
RUNS = (
    ("blocking_cap_1", "capped_batch", 1, 1.5),
    ("blocking_cap_16", "capped_batch", BIG_BATCH, 1.3),
    ("blocking_cap_16_flood", "capped_batch", BIG_BATCH, 3.0),
    ("offloaded_cap_1", "thread_offloaded", 1, 1.5),
    ("idle_cap_1", "capped_batch", 1, 0.2),
)


@dataclass(frozen=True)
class Calibration:
    cost: BatchCost
    http: HttpCost
    data: dict  # the file's contents: the cost model with its errors, where each figure came from

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        data = json.loads(Path(path).read_text())
        cost, http = BatchCost.from_ceiling(data["ceiling"]), HttpCost(**data["http"])
        return cls(cost, http, data | {"path": str(path)})

    @classmethod
    def find(cls, device: str, results_dir: Path = RESULTS) -> Calibration:
        """The calibration for `device` (as given to a server: cpu, cuda, emulated:NAME; auto
        means what the servers would pick), or an error that says how to make one."""
        path = calibration_path(results_dir, _resolve(device))
        if not path.is_file():
            raise FileNotFoundError(
                f"no calibration for device {device!r} ({path}): make one with "
                f"`python -m servelab simulate --calibrate --device {device}` (about three minutes)")
        return cls.load(path)

    def describe(self) -> str:
        """The fit and the server's own work, in one line."""
        from servelab.costmodel import describe_fit

        return (f"{describe_fit(self.data['ceiling']['cost_model'])}; "
                f"server's own work {describe_http(self.http)}")


def calibration_path(results_dir: Path, device: str) -> Path:
    safe = device.replace(":", "_").replace("/", "_")
    return Path(results_dir) / "sim" / f"calibration__{safe}.json"


def refused(summary: dict) -> int:
    return int(sum(n for status, n in summary["errors_by_status"].items() if status in ("503", "504")))


def solve_http(runs: list[dict]) -> HttpCost:
    """per_batch_s, per_request_s and per_refusal_s from three saturated blocking runs: in each,
    span - pipeline seconds = per_batch x batches + per_request x answers + per_refusal x refusals."""
    if len(runs) != 3:
        raise ValueError("three runs are needed for three unknowns")
    rows = [[r["batches"], r["ok"], refused(r)] for r in runs]
    rest = [r["span_s"] - r["compute_s"] for r in runs]
    solved = _solve3(rows, rest)
    if solved is None:
        raise ValueError("the runs mix batches, answers and refusals too alike to tell them apart")
    per_batch, per_request, per_refusal = solved
    return HttpCost(per_request_s=per_request, per_batch_s=per_batch, per_refusal_s=max(0.0, per_refusal))


def offload_seconds(summary: dict, cost: BatchCost, http: HttpCost) -> float:
    """What a saturated thread_offloaded run at a cap of 1 spent per batch beyond a blocking
    server's time for the same work: the hand-over to the worker thread and back (or, if below
    zero, what the event loop got done during the device's wait)."""
    batches = summary["batches"]
    length = round(summary["padded_tokens"] / batches)
    own = http.per_batch_s + http.per_request_s + refused(summary) / batches * http.per_refusal_s
    predicted = cost.seconds(1, length) + own
    return summary["span_s"] / batches - predicted


def _solve3(a: list[list[float]], b: list[float]) -> list[float] | None:
    """x with a x = b for a 3x3 system (Cramer's rule); None when it has no single solution."""
    def det(m):
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    d = det(a)
    if abs(d) < 1e-9 * max(abs(v) for row in a for v in row) ** 3:
        return None
    return [det([[b[i] if j == k else a[i][j] for j in range(3)] for i in range(3)]) / d for k in range(3)]


def calibrate(device: str = "auto", *, results_dir: Path = RESULTS, duration_s: float = 6.0,
              batch_sizes=None, min_seconds: float = 3.0, progress=print) -> Path:
    """Measure the ceiling (and its cost model) and the calibration runs on `device`; write
    results/sim/calibration__DEVICE.json and return its path."""
    from servelab.bench.ceiling import DEFAULT_BATCH_SIZES, measure_in_subprocess
    from servelab.bench.loadgen import Load
    from servelab.bench.run import run
    from servelab.bench.setup import Setup

    steps = len(RUNS) + 1
    progress(f"1/{steps} the ceiling and its cost model on {device} ...")
    ceiling = measure_in_subprocess(device=device, results_dir=results_dir, quiet=True,
                                    batch_sizes=batch_sizes or DEFAULT_BATCH_SIZES, min_seconds=min_seconds)
    cost = BatchCost.from_ceiling(ceiling)
    by_size = {r["batch_size"]: r for r in ceiling["by_batch_size"]}
    setup = Setup(ceiling=ceiling["ceiling_seq_per_s"], bracket=False, results_dir=results_dir)
    runs = {}
    for step, (name, variant, cap, load) in enumerate(RUNS, start=2):
        # What the pipeline alone does at this cap, padded as the ceiling's batches were.
        rate = round(load * cap / cost.seconds(cap, round(_length_at(by_size, cap))), 1)
        progress(f"{step}/{steps} {variant} at a cap of {cap}, offered {rate}/s for {duration_s:.0f} s ...")
        server = {"device": device, "max_batch_size": cap, "max_queue": 2 * cap, "queue_timeout_ms": 0}
        result = run(variant, server, Load.open(rate=rate, duration_s=duration_s), setup,
                     tag=f"calibration-{name}", progress=None)
        runs[name] = result.summary | {"run_dir": str(result.run_dir)}
    http = solve_http([runs["blocking_cap_1"], runs["blocking_cap_16"], runs["blocking_cap_16_flood"]])
    http = replace(http, offload_s=offload_seconds(runs["offloaded_cap_1"], cost, http))
    http = replace(http, idle_extra_s=idle_extra_seconds(runs["idle_cap_1"], Calibration(cost, http, {})))
    resolved = ceiling["model"]["device"]
    path = calibration_path(results_dir, resolved)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "device": resolved,
        "http": http.to_dict(),
        "runs": {name: {k: s.get(k) for k in RUN_FIGURES} | {"run": Path(s["run_dir"]).name}
                 for name, s in runs.items()},
        "ceiling": {k: ceiling[k] for k in ("ceiling_seq_per_s", "best_batch_size", "by_batch_size",
                                            "cost_model", "model", "created_utc", "git", "machine")},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def idle_extra_seconds(summary: dict, calibration: Calibration) -> float:
    """A light-load run's measured median latency minus its simulation's (never below zero)."""
    from servelab.sim.replay import MeasuredRun, corpus_token_lengths, replay

    run = MeasuredRun.load(summary["run_dir"])
    simulated = replay(run, calibration.cost, calibration.http, corpus_token_lengths())
    return max(0.0, (summary["latency_ms"]["p50"] - simulated["latency_ms"]["p50"]) / 1000)


def describe_http(http: HttpCost) -> str:
    ms = {k: v * 1000 for k, v in http.to_dict().items()}
    return (f"{ms['per_request_s']:.2f} ms per request answered, {ms['per_refusal_s']:.2f} ms per request "
            f"refused, {ms['per_batch_s']:.2f} ms per batch, {ms['offload_s']:.2f} ms per batch handed to a "
            f"thread; {ms['idle_extra_s']:.1f} ms more latency when idle")


def _length_at(by_size: dict, cap: int) -> float:
    """The ceiling's mean padded length at this batch size, or at the nearest one it timed."""
    nearest = min(by_size, key=lambda size: abs(size - cap))
    return by_size[nearest]["mean_padded_length"]


def _resolve(device: str) -> str:
    if device != "auto":
        return device
    from servelab.models import resolve_device

    return resolve_device(device)
