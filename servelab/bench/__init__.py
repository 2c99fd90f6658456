"""Benchmarks of the server variants: runs, the offline ceiling, sweeps, and their metrics.

    python -m servelab bench --variant deadline --rate 20 --duration 10
    python -m servelab ceiling
    python -m servelab sweep --variants naive,deadline --rates 10,20,40

From Python (notebooks): `run(...)`, `Load`, `Setup`, `measure_ceiling(...)`, `sweep(...)`.
Importing this package imports neither torch nor locust: Locust runs as a subprocess (in a
Jupyter kernel `import locust` hangs), and so does the ceiling measurement when asked for from here.
"""

from servelab.bench.ceiling import Bracket, Ceiling
from servelab.bench.ceiling import measure_in_subprocess as measure_ceiling
from servelab.bench.loadgen import Load, read_requests
from servelab.bench.run import Bench, RunResult, describe, run
from servelab.bench.setup import Setup
from servelab.bench.stats import find_max_rate, percentile, summarize
from servelab.bench.sweep import read_points, sweep

__all__ = [
    "Bench",
    "Bracket",
    "Ceiling",
    "Load",
    "RunResult",
    "Setup",
    "describe",
    "find_max_rate",
    "measure_ceiling",
    "percentile",
    "read_points",
    "read_requests",
    "run",
    "summarize",
    "sweep",
]
