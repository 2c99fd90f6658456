"""Simulate a measured run with its own arrivals and inputs, and set the two side by side.

The run folder (python -m servelab bench) gives everything but the costs: the variant and its
settings, the send time and word count of every request. A calibration gives the costs: the
cost model from the ceiling and the server's own work (servelab/sim/calibration.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from servelab.bench.loadgen import read_requests
from servelab.costmodel import BatchCost
from servelab.sim.engine import HttpCost, simulate
from servelab.sim.policy import Policy
from servelab.sim.summary import summarize

# The figures a comparison table shows, as (label, summary key, nested key).
COMPARED = (("achieved req/s", "achieved_rate", None), ("p50 ms", "latency_ms", "p50"),
            ("p99 ms", "latency_ms", "p99"), ("mean batch", "mean_batch_size", None))


@dataclass(frozen=True)
class MeasuredRun:
    run_dir: Path
    summary: dict
    rows: list[dict]

    @classmethod
    def load(cls, run_dir: Path | str) -> MeasuredRun:
        run_dir = Path(run_dir)
        if not (run_dir / "summary.json").is_file() or not (run_dir / "requests.csv").is_file():
            raise FileNotFoundError(f"{run_dir} is not a bench run folder (no summary.json and requests.csv)")
        rows = sorted(read_requests(run_dir / "requests.csv"), key=lambda r: r["actual_send_s"])
        return cls(run_dir, json.loads((run_dir / "summary.json").read_text()), rows)

    @property
    def device(self) -> str:
        return self.summary["settings"].get("device") or "auto"


def replay(run: MeasuredRun, cost: BatchCost, http: HttpCost, token_lengths: dict[int, int]) -> dict:
    """The simulated summary of `run` with these costs (a calibration's): the same arrivals
    (actual sends), inputs (by word count), variant and settings; latency counted from the
    intended sends, as measured."""
    start = run.rows[0]["actual_send_s"]
    arrivals = [r["actual_send_s"] - start for r in run.rows]
    intended = [r["intended_send_s"] - start for r in run.rows]
    lengths = [length_of(r["input_words"], token_lengths) for r in run.rows]
    policy = Policy.of_variant(run.summary["variant"], run.summary["settings"])
    outcome = simulate(arrivals, lengths, policy, cost, http)
    return summarize(outcome, run.summary["slo_ms"], intended)


def compare(measured: dict, simulated: dict) -> dict:
    """Each compared figure, measured and simulated, and the simulated one's relative error."""
    out = {}
    for label, key, sub in COMPARED:
        m, s = measured.get(key), simulated.get(key)
        if sub:
            m, s = (m or {}).get(sub), (s or {}).get(sub)
        out[label] = {"measured": m, "simulated": s,
                      "error": (s / m - 1) if m and s is not None else None}
    return out


def length_of(words: int, token_lengths: dict[int, int]) -> int:
    """Tokens of an input of `words` words: the corpus's mean at that word count, else the
    nearest word count's."""
    if words in token_lengths:
        return token_lengths[words]
    nearest = min(token_lengths, key=lambda w: abs(w - words))
    return token_lengths[nearest]


@cache
def corpus_token_lengths(model: str | None = None) -> dict[int, int]:
    """{word count: mean token count, special tokens included} over the corpus, with the
    model's own tokenizer (loaded offline, without the model)."""
    from transformers import AutoTokenizer

    from servelab.bench import corpus
    from servelab.models import locate_model

    folder, _, _ = locate_model(model, online=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    by_words: dict[int, list[int]] = {}
    prompts = corpus.load_prompts()
    for text, ids in zip(prompts, tokenizer(prompts)["input_ids"], strict=True):
        by_words.setdefault(len(text.split()), []).append(len(ids))
    return {w: round(sum(v) / len(v)) for w, v in sorted(by_words.items())}
