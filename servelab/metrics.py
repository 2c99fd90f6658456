"""Prometheus metrics of one server process: what each request and each batch did."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 0.5 ms to 30 s: a CPU batch takes tens of ms, a GPU one a few.
SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, queue_depth=lambda: 0):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("servelab_requests", "Prediction requests by final HTTP status "
                                "(499: the client left before its answer)", ["status"], registry=registry)
        self.queue_depth = Gauge("servelab_queue_depth", "Requests waiting to be started", registry=registry)
        self.queue_depth.set_function(queue_depth)
        self.queue_wait = Histogram("servelab_queue_wait_seconds", "From arrival to being taken into a batch",
                                    buckets=SECONDS, registry=registry)
        self.batch_size = Histogram("servelab_batch_size", "Requests per batch", buckets=BATCH_SIZES,
                                    registry=registry)
        self.batch_compute = Histogram("servelab_batch_compute_seconds", "Pipeline time of one batch",
                                       buckets=SECONDS, registry=registry)
        self.batch_tokens = Counter("servelab_batch_tokens", "Token positions the model computed: real "
                                    "ones, and all of them with the padding to each batch's longest input",
                                    ["kind"], registry=registry)
        self.batches = Counter("servelab_batches", "Batches by why they closed", ["close_reason"],
                               registry=registry)
        self.refusals = Counter("servelab_refusals", "Requests refused by the circuit breaker or the plan, "
                                "by reason: queue_full and predicted_late (503), late_on_arrival and "
                                "queue_timeout (504)", ["reason"], registry=registry)
        self.loop_lag = Histogram("servelab_event_loop_lag_seconds", "How late a periodic timer fires: "
                                  "the time the event loop was blocked", buckets=SECONDS, registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PlanMetrics:
    """What slo_aware's plan predicted, beside what happened, in the server's own registry."""

    def __init__(self, registry: CollectorRegistry):
        self.objective = Gauge("servelab_plan_objective_seconds", "The latency objective (--slo-ms)",
                               registry=registry)
        self.cost = Gauge("servelab_plan_cost_model", "The cost model t(b, L) = a + k*b*L refitted from the "
                          "batches run: a in seconds, k in seconds per padded token", ["param"],
                          registry=registry)
        self.predicted = Histogram("servelab_plan_predicted_latency_seconds", "Arrival to answer, as "
                                   "predicted at admission", buckets=SECONDS, registry=registry)
        self.actual = Histogram("servelab_plan_actual_latency_seconds", "Arrival to answer, as it "
                                "happened, for the same requests", buckets=SECONDS, registry=registry)
        self.late = Counter("servelab_plan_late", "Requests admitted as on time and answered past the "
                            "objective: the prediction was wrong", registry=registry)
        self.passes = Counter("servelab_plan_forward_passes", "Forward passes (micro-batches) the plan ran",
                              registry=registry)
