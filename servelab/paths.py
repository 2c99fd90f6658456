"""Where things are in a clone of this repository. Imports nothing of servelab, so any module
may import it without a cycle."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
VARIANTS_DIR = REPO / "server_variants"
LOADTESTS = REPO / "loadtests"
CORPUS = LOADTESTS / "prompts.txt"
NOTEBOOKS = REPO / "notebooks"

# The teaching variants, in the order the walkthrough introduces them.
VARIANTS = ["naive", "per_get_timeout", "deadline", "capped_batch", "thread_offloaded"]
# Past the guide: thread_offloaded with its batches planned against a latency objective (notebook 07).
BEYOND_THE_GUIDE = ["slo_aware"]
ALL_VARIANTS = VARIANTS + BEYOND_THE_GUIDE
