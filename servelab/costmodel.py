"""The batch cost model t(b, L) = a + k * b * L: a fixed cost per forward pass (a) and a cost
per padded token (k), fitted by least squares to measured forward times.

a is what batching spreads over many inputs; k is what it cannot. Batching pays while a is large
against k * b * L: on a GPU a is the kernel-launch floor and dominates up to large batches; on a
CPU k dominates almost at once.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    xs = [p["batch_size"] * p["tokens"] for p in points]
    ys = [p["seconds"] for p in points]
    if len(set(xs)) < 2:
        raise ValueError("fitting a + k*b*L needs points at two or more batch sizes or lengths")
    ws = [1 / y**2 for y in ys]
    sw = sum(ws)
    sx = sum(w * x for w, x in zip(ws, xs, strict=True))
    sy = sum(w * y for w, y in zip(ws, ys, strict=True))
    sxx = sum(w * x * x for w, x in zip(ws, xs, strict=True))
    sxy = sum(w * x * y for w, x, y in zip(ws, xs, ys, strict=True))
    k = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    model = CostModel((sy - k * sx) / sw, k)
    errors = [
        {**p, "predicted_s": model.seconds(p["batch_size"], p["tokens"]),
         "relative_error": model.seconds(p["batch_size"], p["tokens"]) / p["seconds"] - 1}
        for p in points
    ]
    return model, errors
