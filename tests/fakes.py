"""A fake model with the LoadedModel interface: fast, deterministic, and records every batch.

Behaviour tests use it so that they do not depend on a real model's speed (LitServe's way).
"""

from __future__ import annotations

import threading
import time


class FakeModel:
    task = "fake"
    mask_token = None

    def __init__(self, batch_seconds: float = 0.0, crash: bool = False, cost=None):
        self.batch_seconds = batch_seconds  # how long predict() blocks, per batch
        self.cost = cost  # a CostModel: then predict() blocks a + k * b * (longest input's words)
        self.crash = crash  # raise from predict itself: simulates a bug that kills the loop
        self.batches: list[tuple[float, list[str]]] = []  # (start time, inputs) per call
        self.lock = threading.Lock()

    def describe(self) -> dict:
        return {"id": "fake", "revision": None, "task": self.task, "device": "cpu", "dtype": "none",
                "max_tokens": 10_000, "truncates": False, "mask_token": None}

    def check_input(self, text: str) -> None:
        pass

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]  # a word per token: enough to check the counting

    def estimate_tokens(self, text: str) -> int:
        return len(text.split())  # exact, so that a plan's decisions can be computed by hand

    def token_counts(self, texts: list[str]) -> tuple[int, int]:
        lengths = self.token_lengths(texts)
        return sum(lengths), max(lengths, default=0) * len(lengths)

    def predict(self, texts: list[str]) -> list:
        with self.lock:
            self.batches.append((time.monotonic(), list(texts)))
        if self.crash:
            raise RuntimeError("simulated bug in the model loop")
        time.sleep(self.cost.seconds(len(texts), max(self.token_lengths(texts))) if self.cost
                   else self.batch_seconds)
        return [ValueError("poisoned input") if "POISON" in t else {"echo": t} for t in texts]

    @property
    def seen(self) -> list[str]:
        return [t for _, texts in self.batches for t in texts]

    @property
    def sizes(self) -> list[int]:
        return [len(texts) for _, texts in self.batches]
