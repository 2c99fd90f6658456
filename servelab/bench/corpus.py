"""The input corpus (loadtests/prompts.txt): the load tests, the warm-up and the ceiling share it."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from servelab.paths import CORPUS


def load_prompts(path: Path = CORPUS) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sha256(path: Path = CORPUS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_mask(text: str, mask_token: str, rng: random.Random) -> str:
    """Replace one word with the mask token, keeping its punctuation (as loadtests/_inputs.py)."""
    words = text.split()
    i = rng.randrange(len(words))
    core = words[i].rstrip(".,!?;:")
    words[i] = mask_token + words[i][len(core) :]
    return " ".join(words)


def prepare(texts: list[str], mask_token: str | None, seed: int = 0) -> list[str]:
    """The inputs as the server's task wants them: with one mask token each for fill-mask."""
    if not mask_token:
        return list(texts)
    rng = random.Random(f"{seed}:prepare")
    return [with_mask(t, mask_token, rng) for t in texts]


def spread_by_length(prompts: list[str], count: int) -> list[str]:
    """`count` prompts evenly spread from the shortest to the longest (for warm-ups).

    On a CPU the first call at each new input length is slow; batches pad to their longest
    input, so a warm-up must see the whole range of lengths, not a random handful.
    """
    ordered = sorted(prompts, key=lambda t: (len(t.split()), t))
    if count >= len(ordered):
        return ordered
    if count == 1:
        return [ordered[-1]]
    return [ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)]
