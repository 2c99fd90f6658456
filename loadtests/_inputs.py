"""The inputs users send: sentences from prompts.txt, seeded, with the mask token for fill-mask.

(A leading underscore: `locust -f loadtests` imports every other .py file in this folder.)
"""

from __future__ import annotations

import random
from pathlib import Path

PROMPTS = Path(__file__).with_name("prompts.txt")


def load_prompts(path: Path = PROMPTS) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def with_mask(text: str, mask_token: str, rng: random.Random) -> str:
    """Replace one word, chosen by rng, with the mask token; keep the word's punctuation."""
    words = text.split()
    i = rng.randrange(len(words))
    word = words[i]
    core = word.rstrip(".,!?;:")
    words[i] = mask_token + word[len(core) :]
    return " ".join(words)


class Inputs:
    """An endless seeded stream of request bodies: the same seed gives the same sequence."""

    def __init__(self, prompts: list[str], seed: str, mask_token: str | None = None):
        self.prompts = prompts
        self.rng = random.Random(seed)
        self.mask_token = mask_token

    def draw(self) -> str:
        text = self.rng.choice(self.prompts)
        if self.mask_token:
            text = with_mask(text, self.mask_token, self.rng)
        return text
