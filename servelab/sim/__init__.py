"""A simulator of the variants' batching policies: one model worker fed by a queue.

    python -m servelab simulate --calibrate                               # once per device, ~3 minutes
    python -m servelab simulate --variant capped_batch --rates 60,0.5x    # on this CPU's cost model
    python -m servelab simulate --replay results/runs/<run>               # a measured run, side by side

The worker, its batching policy (per-get timeout, one deadline, a cap) and the circuit breaker
(--max-queue, --queue-timeout-ms) are replayed event by event, with batch times from the cost
model that `python -m servelab ceiling` fits (servelab/costmodel.py) and the server's own work
outside the pipeline measured by a few short runs (servelab/sim/calibration.py). The output is a
run's summary, in the bench's own schema, so simulated and measured points sit in one table or
one plot. Notebook 6 and results/reference/sim-vs-measured/ check it against measurement.
"""

from servelab.sim.engine import Outcome, simulate
from servelab.sim.policy import Policy

__all__ = ["Outcome", "Policy", "simulate"]
