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
# Past one process: thread_offloaded's batching behind several front-end processes (issue 12).
# Not in ALL_VARIANTS: its own tests are tests/test_multi_process.py, not the per-variant ones.
# The bench takes any server_variants/NAME.py by name (servelab.process.variant_path).
PAST_ONE_PROCESS = ["multi_process"]
