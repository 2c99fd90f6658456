"""The batch cost model t(b, L) = a + k * b * L: a fixed cost per forward pass (a) and a cost
per padded token (k), fitted by least squares to measured forward times.

a is what batching spreads over many inputs; k is what it cannot. Batching pays while a is large
against k * b * L: on a GPU a is the kernel-launch floor and dominates up to large batches; on a
CPU k dominates almost at once.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CostModel:
    a: float  # seconds per forward pass, whatever its size
    k: float  # seconds per padded token

    def seconds(self, batch_size: int, length: int) -> float:
        return self.a + self.k * batch_size * length

    def to_dict(self) -> dict:
        return {"a_s": self.a, "k_s_per_token": self.k}


def fit(points: list[dict]) -> tuple[CostModel, list[dict]]:
    """Least squares of the relative error over points {"batch_size", "tokens" (padded length),
    "seconds"}: each point weighs 1/seconds^2, so a batch of 1 is fitted as closely as a batch of
    64 (a plain fit would sacrifice the small batches, where a lives). Returns the model and, per
    point, its prediction and relative error."""
    sums = _WeightedSums()
    for p in points:
        sums.add(p["batch_size"] * p["tokens"], p["seconds"])
    if sums.distinct_x() < 2:
        raise ValueError("fitting a + k*b*L needs points at two or more batch sizes or lengths")
    model = sums.solve()
    errors = [
        {**p, "predicted_s": model.seconds(p["batch_size"], p["tokens"]),
         "relative_error": model.seconds(p["batch_size"], p["tokens"]) / p["seconds"] - 1}
        for p in points
    ]
    return model, errors


class _WeightedSums:
    """The sums a weighted least-squares line needs (weight 1/y^2), kept so that points can be
    added and taken away one at a time."""

    def __init__(self):
        self.sw = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.xs: Counter[float] = Counter()

    def add(self, x: float, y: float, sign: int = 1) -> None:
        w = sign / y**2
        self.sw += w
        self.sx += w * x
        self.sy += w * y
        self.sxx += w * x * x
        self.sxy += w * x * y
        self.xs[x] += sign
        if self.xs[x] == 0:
            del self.xs[x]

    def distinct_x(self) -> int:
        return len(self.xs)

    def solve(self) -> CostModel:
        k = (self.sw * self.sxy - self.sx * self.sy) / (self.sw * self.sxx - self.sx * self.sx)
        return CostModel((self.sy - k * self.sx) / self.sw, k)


class OnlineCost:
    """t(b, L) = a + k*b*L, refitted after every batch from the last `window` batches a server
    actually ran (a sliding window follows a machine that warms up, slows down or gets a
    neighbour). Until the window holds two different shapes, the first model (a start-up
    measurement) stands; a fit with a <= 0 or k <= 0 keeps the last good one, since a planner
    given a free batch would split forever."""

    def __init__(self, first: CostModel, window: int = 256):
        # A first fit can come out with a or k at or below zero (a model too fast to time): a
        # planner takes the smallest positive costs instead, never a free pass.
        self.model = CostModel(max(first.a, 1e-6), max(first.k, 1e-9))
        self.window: deque[tuple[float, float]] = deque()
        self.size = window
        self._sums = _WeightedSums()

    def seconds(self, batch_size: int, length: int) -> float:
        return self.model.seconds(batch_size, length)

    def observe(self, batch_size: int, length: int, seconds: float) -> None:
        if seconds <= 0:
            return
        point = (batch_size * length, seconds)
        self.window.append(point)
        self._sums.add(*point)
        if len(self.window) > self.size:
            self._sums.add(*self.window.popleft(), sign=-1)
        if self._sums.distinct_x() >= 2:
            fitted = self._sums.solve()
            if fitted.a > 0 and fitted.k > 0:
                self.model = fitted


@dataclass(frozen=True)
class BatchCost:
    """What one pipeline call on a batch costs a server, in two parts that behave differently:

    host:   the part that holds this CPU (tokenizing, pre- and post-processing, and on a CPU
            device the forward pass too): a + k*b*L, fitted to the ceiling's timings;
    device: the forward pass on an (emulated) accelerator, which waits without holding the CPU
            or the GIL: the profile's time, or nothing when this CPU is the device.

    A thread-offloaded server overlaps the device part with other requests' HTTP work; it can
    never overlap the host part, which needs the same core.
    """

    host: CostModel
    device: Any = None  # a servelab.emulated.Profile, or None when the CPU is the device

    def host_s(self, batch_size: int, length: int) -> float:
        return self.host.seconds(batch_size, length)

    def device_s(self, batch_size: int, length: int) -> float:
        return self.device.forward_seconds(batch_size, length) if self.device else 0.0

    def seconds(self, batch_size: int, length: int) -> float:
        return self.host_s(batch_size, length) + self.device_s(batch_size, length)

    @classmethod
    def from_ceiling(cls, data: dict) -> BatchCost:
        """From a ceiling file's contents (python -m servelab ceiling)."""
        fitted = data.get("cost_model")
        if not fitted:
            raise ValueError("this ceiling has no cost model (measured before it recorded padded "
                             "lengths): measure it again with `python -m servelab ceiling`")
        return cls(CostModel(fitted["a_s"], fitted["k_s_per_token"]), _profile_of(data["model"]))


def batch_cost_fit(rows: list[dict], model: dict) -> dict:
    """Fit the host part a + k*b*L to a ceiling's rows (batch size, mean padded length, seconds):
    a row's mean time per batch is a + k*b*mean(L) exactly, as t is linear in L. On an emulated
    device the profile's wait is taken off each row first, so a and k are this CPU's own work.
    Returns the fit as a ceiling file stores it, with each row's error."""
    device = _profile_of(model)
    points = []
    for row in rows:
        b, length = row["batch_size"], row["mean_padded_length"]
        per_batch = row["seconds"] * b / row["sequences"]
        wait = device.forward_seconds(b, round(length)) if device else 0.0
        points.append({"batch_size": b, "tokens": length, "seconds": per_batch - wait, "device_s": wait})
    host, errors = fit(points)
    return host.to_dict() | {
        "device_profile": device.name if device else None,
        "points": [
            {"batch_size": p["batch_size"], "mean_padded_length": p["tokens"],
             "seconds": round(p["seconds"] + p["device_s"], 7),
             "predicted_s": round(p["predicted_s"] + p["device_s"], 7),
             "relative_error": round(p["relative_error"] * p["seconds"] / (p["seconds"] + p["device_s"]), 4)}
            for p in errors
        ],
    }


def describe_fit(fitted: dict) -> str:
    """One line a person can read: the fit and its worst point."""
    worst = max(fitted["points"], key=lambda p: abs(p["relative_error"]))
    device = f" + the {fitted['device_profile']} profile's wait" if fitted.get("device_profile") else ""
    a_ms, k_us = fitted["a_s"] * 1000, fitted["k_s_per_token"] * 1e6
    return (f"t(b, L) = {a_ms:.3f} ms + {k_us:.2f} us x b x L{device}; "
            f"worst point: batch {worst['batch_size']}, off by {worst['relative_error']:+.0%}")


def _profile_of(model: dict):
    emulated = model.get("emulated")
    if not emulated:
        return None
    from servelab.emulated import Profile

    # By its path where this machine has it; by its name where the file was made elsewhere.
    path = emulated["profile_path"]
    return Profile.load(path if Path(path).is_file() else emulated["profile"])
