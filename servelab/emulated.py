"""An emulated accelerator: the real pipeline on this CPU, with only the model's forward pass
replaced by a wait as long as a measured device profile says that batch takes.

    python server_variants/deadline.py --device emulated:h200-bert-base

Tokenizing, padding, pre- and post-processing run for real, here, holding the GIL exactly as in
the pipeline. The forward pass lasts the profile's time at that batch's padded shape and returns
tensors of the right shape derived from each input's token ids: every request still gets its own,
distinct answer. Of that time, the profile's launch CPU (where it was measured: the calling
thread's CPU time until a GPU call returns, its kernels queued) is spent busy on this thread,
taking the GIL in short turns as issuing kernel after kernel does; the rest is time.sleep, which
releases the GIL as waiting for the GPU does. A launch-bound GPU (MiniLM's forward pass on an
H200 is 2-4 ms whatever the batch) spends most of its time in that first part, and an emulation
that only sleeps ran 1.5x too fast there (results/reference/nvidia-h200/first-run-defaults/).
Holding the GIL for all of it errs the other way: much of a real launch is spent in torch's
dispatch and the driver with the GIL released, so under load the emulated model process is the
slower one (results/reference/nvidia-h200/README.md). A profile cannot yet tell the two apart.

A profile (servelab/profiles/NAME.json, or any path; `python -m servelab profile` measures
one) gives the forward time by batch size, at `sequence_tokens` or at each point's own `tokens`.
Shapes are looked up by padded tokens (batch x length): below the smallest point the time stays
at the launch floor, between points it is interpolated, above the last it grows in proportion.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = Path(__file__).resolve().parent / "profiles"
PREFIX = "emulated:"


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    path: str
    device: str
    sequence_tokens: int
    points: tuple[tuple[int, float], ...]  # (padded tokens, seconds), by tokens
    launch_points: tuple[tuple[int, float], ...] = ()  # (padded tokens, launch CPU seconds), if measured

    @classmethod
    def load(cls, spec: str) -> Profile:
        """A profile by name (servelab/profiles/NAME.json) or by path."""
        path = Path(spec) if spec.endswith(".json") else PROFILES / f"{spec}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.json")))
            raise ProfileError(f"no device profile {spec!r} (known: {known}; or give a .json path)")
        data = json.loads(path.read_text())
        length = int(data["sequence_tokens"])
        points = _by_tokens(data["points"], length, "seconds")
        if not points:
            raise ProfileError(f"device profile {path} has no points")
        measured = [p for p in data["points"] if "launch_cpu_seconds" in p]
        launch = _by_tokens(measured, length, "launch_cpu_seconds")
        return cls(data.get("name", path.stem), str(path), data.get("device", "?"), length, points, launch)

    def forward_seconds(self, batch_size: int, length: int) -> float:
        """The forward time of a batch padded to `length` tokens."""
        return _interpolate(self.points, batch_size * length)

    def launch_cpu_seconds(self, batch_size: int, length: int) -> float:
        """How much of forward_seconds the calling thread spends busy issuing the work (0 if the
        profile did not measure it)."""
        if not self.launch_points:
            return 0.0
        busy = _interpolate(self.launch_points, batch_size * length)
        return min(busy, self.forward_seconds(batch_size, length))

    def describe(self) -> dict:
        return {"emulated": True, "profile": self.name, "profile_path": self.path, "emulates": self.device}


def _by_tokens(points: list[dict], length: int, field: str) -> tuple[tuple[int, float], ...]:
    """(padded tokens, mean of `field`) for each shape, sorted; a point may give its own length."""
    by_tokens: dict[int, list[float]] = {}
    for p in points:
        by_tokens.setdefault(int(p["batch_size"]) * int(p.get("tokens", length)), []).append(p[field])
    return tuple(sorted((tokens, sum(values) / len(values)) for tokens, values in by_tokens.items()))


def _interpolate(points: tuple[tuple[int, float], ...], tokens: int) -> float:
    """Flat below the first point (the launch floor), linear between points, in proportion above."""
    (t0, s0) = points[0]
    if tokens <= t0:
        return s0
    for (t1, s1), (t2, s2) in itertools.pairwise(points):
        if tokens <= t2:
            return s1 + (s2 - s1) * (tokens - t1) / (t2 - t1)
    last_tokens, last_seconds = points[-1]
    return last_seconds * tokens / last_tokens


KERNEL_LAUNCH_S = 20e-6  # one kernel's launch, roughly: how long each busy turn holds the GIL


def _issue_kernels(cpu_seconds: float, since: float) -> None:
    """Keep this thread busy until it has used cpu_seconds of CPU since `since` (its thread_time),
    letting go of the GIL between short turns: torch holds it for each op's Python side and
    drops it while the op is dispatched, so other threads get it between launches, as here."""
    left = cpu_seconds - (time.thread_time() - since)  # less what the stand-in already used
    while left > 0:
        # Turns are timed by the wall clock, which is cheap to read everywhere (a thread's CPU
        # clock is a system call, and a slow one under a sandbox such as gVisor). Time spent
        # waiting for the GIL between turns is not counted: no kernel is issued then either.
        turn = min(left, KERNEL_LAUNCH_S)
        end = time.perf_counter() + turn
        while time.perf_counter() < end:
            pass
        left -= turn
        os.sched_yield()  # releases the GIL for a moment (time.sleep(0) would sleep ~50 us)


def is_emulated(device: str) -> bool:
    return device.startswith(PREFIX)


def emulate(pipe: Any, task: str, profile: Profile) -> None:
    """Replace pipe.model's forward pass by the profile's wait and deterministic outputs."""
    from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

    model = pipe.model
    embeddings = model.get_input_embeddings()
    config = model.config

    def forward(input_ids=None, attention_mask=None, **_):
        started, cpu_started = time.perf_counter(), time.thread_time()
        batch, length = input_ids.shape
        result = outputs(input_ids)  # the stand-in's own work counts towards the profile's time
        _issue_kernels(profile.launch_cpu_seconds(batch, length), since=cpu_started)
        left = started + profile.forward_seconds(batch, length) - time.perf_counter()
        time.sleep(max(0.0, left))  # releases the GIL, as waiting for the GPU does
        return result

    def outputs(input_ids):
        import torch

        with torch.no_grad():
            if task == "feature-extraction":
                # The input's own token embeddings: after pooling, each text gets its own vector.
                return BaseModelOutput(last_hidden_state=embeddings(input_ids))
            if task == "fill-mask":
                # A word that depends on the whole input (padding ids are 0: they change nothing).
                logits = torch.zeros(*input_ids.shape, config.vocab_size)
                guess = (input_ids * 7919 + input_ids.sum(-1, keepdim=True) * 31 + 13) % config.vocab_size
                logits.scatter_(-1, guess.unsqueeze(-1), 10.0)
                return MaskedLMOutput(logits=logits)
            if task == "text-classification":
                scores = (input_ids.sum(-1, keepdim=True) * torch.arange(1, config.num_labels + 1)) % 97
                return SequenceClassifierOutput(logits=scores.float())
        raise ProfileError(f"the emulated device does not know task {task!r}")

    model.forward = forward
