"""How a benchmark is run, apart from the server's own flags and the load: one frozen
description that Bench, run() and sweep() share, written whole into every run's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from servelab.bench.ceiling import Ceiling
from servelab.paths import RESULTS

DEFAULT_SLO_MS = 100.0


@dataclass(frozen=True)
class Setup:
    """slo_ms: the latency objective of goodput and of the max-rate search.
    seed: seeds the inputs and the arrivals.
    torch_threads: passed to the server as --torch-threads (None: the server's default).
    server_cores, locust_cores: "auto" (the server on the first core, Locust on the second),
        "none" (not pinned), or a list like "0" or "2-3".
    ceiling: the reference ceiling: "auto" (a file from `python -m servelab ceiling` for the same
        model, device and threads, if any), "measure", "none", a number, or a file's path.
    bracket: time a quick ceiling just before and just after each load, under the same
        conditions, and judge the run against both (servelab.bench.bracket).
    bracket_seconds: timed seconds of each quick ceiling.
    warmup: send inputs of every length and bursts of every batch size before measuring.
    """

    slo_ms: float = DEFAULT_SLO_MS
    seed: int = 0
    torch_threads: int | None = 1
    server_cores: str = "auto"
    locust_cores: str = "auto"
    ceiling: str | float | Ceiling = "auto"
    bracket: bool = True
    bracket_seconds: float = 2.0
    warmup: bool = True
    results_dir: Path = RESULTS
    ready_timeout_s: float = 180.0

    def to_dict(self) -> dict:
        out = asdict(self) | {"results_dir": str(self.results_dir)}
        if isinstance(self.ceiling, Ceiling):
            out["ceiling"] = self.ceiling.to_dict()
        return out
