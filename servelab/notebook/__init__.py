"""What the walkthrough notebooks (notebooks/*.py) import, one job per module: results folders
and files (results), the offline ceiling (ceiling), client probes (probes), pure reading of
traces, metrics and request rows (analysis), figures (plots), running notebooks and servers
(execution), and what notebooks 6 and 8 alone need (simulation, side_by_side). This file only
re-exports their public names.

The notebooks hold the prose and a few calls; the logic is here. Importing this package imports
neither torch nor locust (a Jupyter kernel must never import locust: it hangs), and matplotlib
only when a plot is drawn.

    from servelab import notebook as nb
    nb.banner()
    folder = nb.setup(RESULTS, "02_dynamic_batching")
"""

from servelab.bench.ceiling import ABOVE_NOTE
from servelab.bench.stats import percentile
from servelab.notebook.analysis import (
    clear,
    first_waits_ms,
    lag,
    per_second,
    read_trace,
    recovered_after,
    server_settings,
)
from servelab.notebook.ceiling import ceiling, plot_ceiling_by_batch, reference
from servelab.notebook.execution import NOTEBOOKS, execute, notebooks, running, tiny_fill_mask_model
from servelab.notebook.plots import (
    COLORS,
    STATUS_COLORS,
    log_y,
    plot_batch_sizes,
    plot_blocking,
    plot_breaker_curve,
    plot_health_during,
    plot_memory,
    plot_over_time,
    plot_timelines,
    plot_tradeoff,
    plot_variants,
    timeline_legend,
)
from servelab.notebook.probes import Prober, long_inputs, memory_mb, model_weights_mb, send_schedule
from servelab.notebook.results import banner, fresh, read_csv, save, setup, write_csv
from servelab.notebook.side_by_side import plot_side_by_side, side_by_side

__all__ = [
    "ABOVE_NOTE",
    "COLORS",
    "NOTEBOOKS",
    "STATUS_COLORS",
    "Prober",
    "banner",
    "ceiling",
    "clear",
    "execute",
    "first_waits_ms",
    "fresh",
    "lag",
    "log_y",
    "long_inputs",
    "memory_mb",
    "model_weights_mb",
    "notebooks",
    "per_second",
    "percentile",
    "plot_batch_sizes",
    "plot_blocking",
    "plot_breaker_curve",
    "plot_ceiling_by_batch",
    "plot_health_during",
    "plot_memory",
    "plot_over_time",
    "plot_side_by_side",
    "plot_timelines",
    "plot_tradeoff",
    "plot_variants",
    "read_csv",
    "read_trace",
    "recovered_after",
    "reference",
    "running",
    "save",
    "send_schedule",
    "server_settings",
    "setup",
    "side_by_side",
    "timeline_legend",
    "tiny_fill_mask_model",
    "write_csv",
]
