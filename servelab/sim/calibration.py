"""The two measured inputs of a simulation, for one model on one device: the batch cost model
(from the ceiling) and the HTTP path's time per request (from a run at batch 1).

    python -m servelab simulate calibrate [--device emulated:h200-bert-base]

The HTTP time is measured, not guessed: capped_batch at a cap of 1, offered more than it can
serve, keeps its one core busy with model calls and HTTP work only, one after the other (it
blocks its event loop). The server's /metrics count the model calls' seconds; the rest of the
run's span, per request, is the HTTP path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from servelab.costmodel import BatchCost
from servelab.paths import RESULTS

CALIBRATION_VARIANT = "capped_batch"
OVERLOAD = 1.5  # offered rate, as a multiple of the batch-1 ceiling: saturated, not absurd


@dataclass(frozen=True)
class Calibration:
    cost: BatchCost
    http_s: float
    data: dict  # the file's contents: the cost model with its errors, where each figure came from

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        data = json.loads(Path(path).read_text())
        return cls(BatchCost.from_ceiling(data["ceiling"]), data["http_s"], data | {"path": str(path)})

    @classmethod
    def find(cls, device: str, results_dir: Path = RESULTS) -> Calibration:
        """The calibration for `device` (as given to a server: cpu, cuda, emulated:NAME; auto
        means what the servers would pick), or an error that says how to make one."""
        path = calibration_path(results_dir, _resolve(device))
        if not path.is_file():
            raise FileNotFoundError(
                f"no calibration for device {device!r} ({path}): make one with "
                f"`python -m servelab simulate calibrate --device {device}` (about a minute)")
        return cls.load(path)


def calibration_path(results_dir: Path, device: str) -> Path:
    safe = device.replace(":", "_").replace("/", "_")
    return Path(results_dir) / "sim" / f"calibration__{safe}.json"


def http_seconds(summary: dict) -> float:
    """Per request, the part of a saturated batch-1 run that was not the model: the span minus
    the model's seconds (/metrics), over the requests served."""
    if summary.get("mean_batch_size") != 1 or not summary.get("batches"):
        raise ValueError("the HTTP time is read from a run at batch size 1")
    return (summary["span_s"] - summary["compute_s"]) / summary["batches"]


def calibrate(device: str = "auto", *, results_dir: Path = RESULTS, duration_s: float = 6.0,
              progress=print) -> Path:
    """Measure the ceiling (and its cost model) and a saturated batch-1 run on `device`; write
    results/sim/calibration__DEVICE.json and return its path."""
    from servelab.bench.ceiling import measure_in_subprocess
    from servelab.bench.loadgen import Load
    from servelab.bench.run import run
    from servelab.bench.setup import Setup

    progress(f"1/2 the ceiling and its cost model on {device} ...")
    ceiling = measure_in_subprocess(device=device, results_dir=results_dir, quiet=True)
    batch1 = next(r for r in ceiling["by_batch_size"] if r["batch_size"] == 1)["seq_per_s"]
    rate = round(OVERLOAD * batch1, 1)
    progress(f"2/2 the HTTP path: {CALIBRATION_VARIANT} at batch 1, offered {rate}/s for {duration_s:.0f} s")
    setup = Setup(ceiling=ceiling["ceiling_seq_per_s"], bracket=False, results_dir=results_dir)
    server_args = {"device": device, "max_batch_size": 1, "max_queue": 0, "queue_timeout_ms": 0}
    result = run(CALIBRATION_VARIANT, server_args, Load.open(rate=rate, duration_s=duration_s), setup,
                 tag="calibration", progress=None)
    http_s = http_seconds(result.summary)
    resolved = ceiling["model"]["device"]
    path = calibration_path(results_dir, resolved)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "device": resolved,
        "http_s": http_s,
        "http_run": {"run_dir": result.run_dir.name, "offered_rate": rate,
                     "achieved_rate": result.summary["achieved_rate"],
                     "model_busy_fraction": result.summary["model_busy_fraction"]},
        "ceiling": {k: ceiling[k] for k in ("ceiling_seq_per_s", "best_batch_size", "by_batch_size",
                                            "cost_model", "model", "created_utc", "git", "machine")},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _resolve(device: str) -> str:
    if device != "auto":
        return device
    from servelab.models import resolve_device

    return resolve_device(device)
