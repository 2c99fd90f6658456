"""An emulated accelerator: the real pipeline on this CPU, with only the model's forward pass
replaced by a wait as long as a measured device profile says that batch takes.

    python server_variants/deadline.py --device emulated:h200-bert-base

Tokenizing, padding, pre- and post-processing run for real, here, holding the GIL exactly as in
the pipeline. The forward pass becomes time.sleep(t), which releases the GIL as a GPU kernel wait
does, for the profile's time at that batch's padded shape, and returns tensors of the right shape
derived from each input's token ids: every request still gets its own, distinct answer.

A profile (servelab/profiles/NAME.json, or any path; `python -m servelab profile` measures
one) gives the forward time by batch size, at `sequence_tokens` or at each point's own `tokens`.
Shapes are looked up by padded tokens (batch x length): below the smallest point the time stays
at the launch floor, between points it is interpolated, above the last it grows in proportion.
"""

from __future__ import annotations

import json
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

    @classmethod
    def load(cls, spec: str) -> Profile:
        """A profile by name (servelab/profiles/NAME.json) or by path."""
        path = Path(spec) if spec.endswith(".json") else PROFILES / f"{spec}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.json")))
            raise ProfileError(f"no device profile {spec!r} (known: {known}; or give a .json path)")
        data = json.loads(path.read_text())
        length = int(data["sequence_tokens"])
        by_tokens: dict[int, list[float]] = {}  # a point may give its own padded length
        for p in data["points"]:
            by_tokens.setdefault(int(p["batch_size"]) * int(p.get("tokens", length)), []).append(p["seconds"])
        if not by_tokens:
            raise ProfileError(f"device profile {path} has no points")
        points = sorted((tokens, sum(times) / len(times)) for tokens, times in by_tokens.items())
        return cls(data.get("name", path.stem), str(path), data.get("device", "?"), length, tuple(points))

    def forward_seconds(self, batch_size: int, length: int) -> float:
        """The forward time of a batch padded to `length` tokens."""
        tokens = batch_size * length
        (t0, s0) = self.points[0]
        if tokens <= t0:
            return s0  # the launch floor
        for (t1, s1), (t2, s2) in zip(self.points, self.points[1:], strict=False):
            if tokens <= t2:
                return s1 + (s2 - s1) * (tokens - t1) / (t2 - t1)
        last_tokens, last_seconds = self.points[-1]
        return last_seconds * tokens / last_tokens

    def describe(self) -> dict:
        return {"emulated": True, "profile": self.name, "profile_path": self.path, "emulates": self.device}


def is_emulated(device: str) -> bool:
    return device.startswith(PREFIX)


def emulate(pipe: Any, task: str, profile: Profile) -> None:
    """Replace pipe.model's forward pass by the profile's wait and deterministic outputs."""
    from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

    model = pipe.model
    embeddings = model.get_input_embeddings()
    config = model.config

    def forward(input_ids=None, attention_mask=None, **_):
        batch, length = input_ids.shape
        time.sleep(profile.forward_seconds(batch, length))  # releases the GIL, as a kernel wait does
        return outputs(input_ids)

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
