"""A variant's batching policy and circuit breaker, as the simulator needs them."""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace

from servelab.paths import VARIANTS_DIR

# What each variant file's code does, which its DEFAULTS cannot say: the numbers (max wait, cap,
# breaker) come from the file's DEFAULTS and the run's settings; tests/test_sim.py checks this
# table against the files (the per-get wait, the thread offload).
BEHAVIOUR = {
    "naive": {"max_batch_size": 1},
    "per_get_timeout": {"wait_restarts": True},
    "deadline": {},
    "capped_batch": {},
    "thread_offloaded": {"offloaded": True},
    "slo_aware": {"offloaded": True, "planned": True},  # its plan: servelab/sim/plan.py
}


@dataclass(frozen=True)
class Policy:
    max_wait_s: float = 0.0
    max_batch_size: int | None = None  # None: no cap
    wait_restarts: bool = False  # per_get_timeout: the wait restarts after every request taken
    offloaded: bool = False  # thread_offloaded: the event loop keeps serving while the model runs
    max_queue: int | None = None  # the breaker: 503 at once when this many wait
    queue_timeout_s: float | None = None  # the breaker: 504 after waiting this long unstarted
    planned: bool = False  # slo_aware: batches sized, cut and admitted by its plan
    slo_s: float | None = None  # the plan's objective; None: 10x one input's time, as the server
    slo_headroom: float = 0.2
    max_batch_tokens: int | None = None
    without: tuple[str, ...] = ()  # the plan's parts turned off (--without)

    @classmethod
    def of_variant(cls, variant: str, settings: dict | None = None) -> Policy:
        """The policy of server_variants/VARIANT.py with its defaults, overridden by `settings`
        (a run's server settings, or flags: max_wait_ms, max_batch_size, max_queue,
        queue_timeout_ms; 0 or None turns a limit off, as on the servers)."""
        if variant not in BEHAVIOUR:
            raise ValueError(f"no simulated policy for variant {variant!r} (known: {', '.join(BEHAVIOUR)})")
        s = variant_defaults(variant) | {k: v for k, v in (settings or {}).items() if v is not None}
        policy = cls(
            max_wait_s=float(s.get("max_wait_ms") or 0) / 1000,
            max_batch_size=int(s["max_batch_size"]) if s.get("max_batch_size") else None,
            max_queue=int(s["max_queue"]) if s.get("max_queue") else None,
            queue_timeout_s=float(s["queue_timeout_ms"]) / 1000 if s.get("queue_timeout_ms") else None,
            slo_s=float(s["slo_ms"]) / 1000 if s.get("slo_ms") else None,
            slo_headroom=float(s.get("slo_headroom", 0.2)),
            max_batch_tokens=int(s["max_batch_tokens"]) if s.get("max_batch_tokens") else None,
            without=tuple(s.get("without") or ()),
        )
        return replace(policy, **BEHAVIOUR[variant])

    def describe(self) -> dict:
        return {
            "max_wait_ms": self.max_wait_s * 1000, "max_batch_size": self.max_batch_size,
            "wait_restarts": self.wait_restarts, "offloaded": self.offloaded,
            "max_queue": self.max_queue,
            "queue_timeout_ms": None if self.queue_timeout_s is None else self.queue_timeout_s * 1000,
            **(self._plan_settings() if self.planned else {}),
        }


    def _plan_settings(self) -> dict:
        return {"slo_ms": None if self.slo_s is None else self.slo_s * 1000,
                "slo_headroom": self.slo_headroom, "max_batch_tokens": self.max_batch_tokens,
                "without": list(self.without)}


def variant_defaults(variant: str) -> dict:
    """The DEFAULTS dict of server_variants/VARIANT.py, read from its source (not imported:
    importing a variant pulls in Starlette and the server for four numbers)."""
    tree = ast.parse((VARIANTS_DIR / f"{variant}.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "DEFAULTS" and node.value is not None:
            return {k: v for k, v in ast.literal_eval(node.value).items() if not k.endswith("_help")}
    return {}
