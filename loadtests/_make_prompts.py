"""Write loadtests/prompts.txt: 1,000 templated English sentences of 3 to 60 words.

    python loadtests/_make_prompts.py            # rewrite loadtests/prompts.txt
    python loadtests/_make_prompts.py --check    # exit 1 if the committed file differs

The corpus is generated, not downloaded, so a machine without network has it, and it is
deterministic (a fixed seed; `random.Random.random/choice` are stable across Python versions),
so a run's manifest can name its inputs by the file's sha256. Lengths are spread over the whole
range with more short inputs than long ones, as real traffic tends to be: on a CPU the first call
at each new input length is slow, and batching pads to the longest input, so length variety
matters. The leading underscore keeps `locust -f loadtests` from importing this file.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

SEED = 20240611
COUNT = 1000
MIN_WORDS, MAX_WORDS = 3, 60
PATH = Path(__file__).with_name("prompts.txt")

# fmt: off
NAMES = ["Anna", "Omar", "Lena", "Kenji", "Maria", "Tomas", "Priya", "Felix", "Sara", "Diego", "Ines",
         "Noah", "Mei", "Ravi", "Chloe", "Jonas"]
NOUNS = ["engineer", "teacher", "river", "garden", "server", "train", "violin", "market", "storm",
         "library", "kitchen", "bridge", "doctor", "painter", "window", "village", "museum", "harbor",
         "forest", "student", "laptop", "letter", "mountain", "bakery", "robot", "cat", "farmer", "queue",
         "model", "city", "festival", "lighthouse", "orchestra", "pilot"]
ADJECTIVES = ["old", "quiet", "busy", "bright", "small", "famous", "tired", "clever", "broken", "distant",
              "crowded", "patient", "ancient", "noisy", "gentle", "curious", "empty", "careful", "wooden",
              "modern", "sleepy", "generous"]
TRANSITIVE = ["visited", "repaired", "painted", "followed", "described", "watched", "carried", "cleaned",
              "answered", "measured", "ignored", "admired", "opened", "photographed", "studied", "built",
              "found", "remembered"]
INTRANSITIVE = ["slept", "waited", "laughed", "arrived", "worked", "sang", "listened", "rested",
                "disappeared", "hesitated", "smiled", "shivered"]
ADVERBS = ["quietly", "early", "slowly", "again", "happily", "carefully", "suddenly", "late", "patiently",
           "twice", "briefly", "loudly"]
PREPOSITIONS = ["near", "behind", "inside", "across", "under", "beside", "beyond", "above", "around",
                "through"]
CONNECTORS = ["and", "but", "because", "while", "so", "although", "after", "before", "until"]
OPENERS = ["Yesterday", "Every morning", "In the spring", "After the rain", "Last winter", "On Sunday",
           "At midnight", "Years ago", "Later that day", "Once again"]
# fmt: on


def noun_phrase(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        return rng.choice(NAMES)
    if kind < 0.6:
        return f"the {rng.choice(NOUNS)}"
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def place(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(PREPOSITIONS)} the {rng.choice(NOUNS)}"
    return f"{rng.choice(PREPOSITIONS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def clause(rng: random.Random) -> str:
    subject = noun_phrase(rng)
    if rng.random() < 0.35:
        words = [subject, rng.choice(INTRANSITIVE)]
        if rng.random() < 0.6:
            words.append(rng.choice(ADVERBS))
    else:
        words = [subject, rng.choice(TRANSITIVE), noun_phrase(rng)]
    if rng.random() < 0.5:
        words.append(place(rng))
    return " ".join(words)


def sentence(rng: random.Random, target_words: int) -> str:
    """Join clauses until the sentence is about target_words long, never over MAX_WORDS."""
    parts = [clause(rng)]
    if rng.random() < 0.2:
        parts[0] = f"{rng.choice(OPENERS)}, {parts[0]}"
    while len(" ".join(parts).split()) < target_words:
        nxt = f"{rng.choice(CONNECTORS)} {clause(rng)}"
        if len(" ".join([*parts, nxt]).split()) > MAX_WORDS:
            break
        parts.append(nxt)
    text = " ".join(parts)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?"])


def make_prompts(count: int = COUNT, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[str] = []
    while len(prompts) < count:
        # Skewed towards short inputs: target = 3 + 57 * u**1.6 words.
        target = MIN_WORDS + int((MAX_WORDS - MIN_WORDS) * rng.random() ** 1.6)
        text = sentence(rng, target)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    parser.add_argument("--out", type=Path, default=PATH, help="where to write")
    args = parser.parse_args()
    text = "\n".join(make_prompts()) + "\n"
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {COUNT} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
