"""The offline ceiling: sequences per second of the bare pipeline, by batch size, no HTTP at all.

    python -m servelab ceiling                      # default model, core 0, 1 torch thread

Same model loading (servelab.models.load_model), same cores and threads as the server gets in
a benchmark, same corpus, after a warm-up over varied lengths, and with the load generator's
cores kept as busy as Locust keeps them during a run (servelab.bench.neighbour): the ceiling is
timed under the conditions of a served run, not on an idle machine. The best batch size gives the
ceiling: a server can at best approach it, and `achieved_rate / ceiling` says how close it came
on this very machine (no speed constant tied to one machine).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from servelab.bench import corpus
from servelab.bench.machine import cores_arg, git_state, machine, parse_cores
from servelab.bench.neighbour import BusyNeighbour
from servelab.costmodel import batch_cost_fit
from servelab.paths import REPO, RESULTS
from servelab.process import pinning, server_env
from servelab.versions import versions

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# CPU share of its core that Locust used while offering 2x the ceiling on the reference VM
# (0.07 at 172 req/s, psutil from first send to last answer). The runner replays each run's own
# measured share in its bracket; this is for a ceiling measured on its own.
DEFAULT_LOADGEN_DUTY = 0.08


@dataclass(frozen=True)
class Bracket:
    """Quick ceilings timed just before and just after one measurement (seq/s), and the load
    generator's CPU share each was timed under. The machine's speed drifts; the bracket says by
    how much during this measurement."""

    before: float
    after: float
    loadgen_duty_before: float = 0.0
    loadgen_duty_after: float = 0.0
    batch_sizes: tuple[int, ...] = ()

    @property
    def low(self) -> float:
        return min(self.before, self.after)

    @property
    def high(self) -> float:
        return max(self.before, self.after)

    @property
    def spread(self) -> float:
        return self.high - self.low

    def judge(self, achieved: float | None) -> dict:
        """Ratios of an achieved rate to each end, and a flag when it is above the bracket's upper
        end by more than the bracket's own spread: no server beats the bare pipeline, so then
        the denominator was timed under other conditions than the run."""
        out = asdict(self) | {"batch_sizes": list(self.batch_sizes), "spread": round(self.spread, 3),
                              "spread_fraction": self.spread / self.high}
        if achieved is None:
            return out
        above = achieved > self.high + self.spread
        return out | {
            "ratio_to_before": achieved / self.before,
            "ratio_to_after": achieved / self.after,
            "above_ceiling": above,
            "note": ABOVE_NOTE if above else None,
        }


ABOVE_NOTE = "above the ceiling: the denominator was measured under different conditions"


@dataclass(frozen=True)
class Ceiling:
    """The offline ceiling a run is compared with: value in seq/s, where it came from (a file's
    path, "measured", "given" or "bracket"), and the quick bracket around one run, once there is
    one. by_batch_size: the measurement's rows, where it has them."""

    value: float
    source: str
    bracket: Bracket | None = None
    best_batch_size: int | None = None
    by_batch_size: tuple = field(default=(), repr=False)

    @classmethod
    def from_data(cls, data: dict, source: str) -> Ceiling:
        """From a measurement's result (a ceiling file's contents)."""
        return cls(data["ceiling_seq_per_s"], source, None, data.get("best_batch_size"),
                   tuple(data.get("by_batch_size", ())))

    @classmethod
    def from_bracket(cls, bracket: Bracket) -> Ceiling:
        """No reference ceiling: the bracket alone is the ceiling."""
        return cls(bracket.high, "bracket", bracket)

    def with_bracket(self, bracket: Bracket) -> Ceiling:
        return replace(self, bracket=bracket)

    def top_batch_sizes(self, count: int = 3) -> tuple[int, ...]:
        """The batch sizes worth timing in a quick bracket: the fastest few of the measurement."""
        rows = sorted(self.by_batch_size, key=lambda r: -r["seq_per_s"])[:count]
        return tuple(sorted(r["batch_size"] for r in rows)) or (4, 8, 16)

    @property
    def denominator(self) -> float:
        """What a run's rate is divided by: the bracket's mean when there is one, else the value."""
        return (self.bracket.before + self.bracket.after) / 2 if self.bracket else self.value

    def ratio(self, achieved: float | None) -> float | None:
        return None if achieved is None else achieved / self.denominator

    def to_dict(self, achieved: float | None = None) -> dict:
        return {
            "value": self.value,
            "source": self.source,
            "best_batch_size": self.best_batch_size,
            "bracket": self.bracket.judge(achieved) if self.bracket else None,
        }


def ceiling_path(results_dir: Path, model: dict, torch_threads: int | None) -> Path:
    """results/ceiling/<model>__<task>__<device>__t<threads>.json; model as a server's /info."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model.get("id", "?"))).strip("_")
    device = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model.get("device", "?")))
    name = f"{slug}__{model.get('task', '?')}__{device}__t{torch_threads}.json"
    return Path(results_dir) / "ceiling" / name


def find_ceiling(results_dir: Path, model: dict, torch_threads: int | None) -> dict | None:
    """A ceiling measured before for this model (a server's /info "model"), device and threads."""
    path = ceiling_path(results_dir, model, torch_threads)
    if path.is_file():
        data = json.loads(path.read_text())
        data["path"] = str(path)
        return data
    return None


def time_batches(predict, texts: list[str], batch_sizes, *, min_seconds: float, rounds: int,
                 min_batches: int = 3, position: int = 0, token_counts=None,
                 lengths: list[int] | None = None, seed: int = 0) -> list[dict]:
    """Sequences per second of predict(batch) for each batch size, timed in interleaved rounds:
    each size is timed in every round, so a machine whose speed drifts during the measurement
    (shared or throttled CPUs do) biases no size against another.

    With token_counts (LoadedModel.token_counts), each row also gets the batches' mean padded
    length, counted off the clock: what the cost model t(b, L) is fitted against.

    lengths (each input's, in tokens): batches of inputs of nearly one length, the least padding
    any batching could reach on this corpus. The inputs are sorted by length and cut into batches,
    which are then timed in a shuffled order, so that every size sees every length."""
    totals = {size: [0, 0.0, 0] for size in batch_sizes}  # sequences, seconds, batches
    padded = dict.fromkeys(batch_sizes, 0)
    batches = {size: _walk(texts, size, position, lengths, seed) for size in batch_sizes}
    for _ in range(rounds):
        for size in batch_sizes:
            total = totals[size]
            round_seconds = 0.0
            while round_seconds < min_seconds / rounds or total[2] < min_batches:
                batch = next(batches[size])
                t0 = time.perf_counter()
                predict(batch)
                elapsed = time.perf_counter() - t0
                if token_counts:
                    padded[size] += token_counts(batch)[1]
                round_seconds += elapsed
                total[0] += size
                total[1] += elapsed
                total[2] += 1
    rows = [
        {"batch_size": size, "sequences": done, "seconds": round(seconds, 4),
         "seq_per_s": round(done / seconds, 3)}
        for size, (done, seconds, _) in totals.items()
    ]
    if token_counts:
        for row in rows:
            row["mean_padded_length"] = round(padded[row["batch_size"]] / row["sequences"], 2)
    return rows


def _walk(texts: list, size: int, position: int, lengths: list[int] | None, seed: int):
    """Batches of `size`, forever: consecutive inputs in the (shuffled) corpus order, or, given
    their lengths, inputs sorted by length, cut into batches, and the batches shuffled."""
    if lengths is None:
        while True:
            yield [texts[(position + i) % len(texts)] for i in range(size)]
            position += size
    by_length = [text for _, text in sorted(zip(lengths, texts, strict=True), key=lambda pair: pair[0])]
    cut = [by_length[i:i + size] for i in range(0, len(by_length) - size + 1, size)]
    random.Random(f"{seed}:sorted:{size}").shuffle(cut)
    yield from itertools.cycle(cut)


def load_for_timing(model, task, device, torch_threads: int, seed: int, batch_sizes, progress):
    """The model as a server loads it, the corpus as the load test sends it, and a warm-up of
    every batch size over the whole range of lengths (a CPU kernel's first call at a new shape
    is slow). Returns (loaded model, shuffled texts)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from servelab.models import load_model

    torch.set_num_threads(torch_threads)
    started = time.perf_counter()
    loaded = load_model(model=model, task=task, device=device)
    load_s = time.perf_counter() - started
    texts = corpus.prepare(corpus.load_prompts(), loaded.mask_token, seed)
    random.Random(f"{seed}:ceiling").shuffle(texts)
    spread = corpus.prepare(corpus.spread_by_length(corpus.load_prompts(), 16), loaded.mask_token, seed)
    started = time.perf_counter()
    for size in batch_sizes:
        for i in range(0, len(spread), size):
            loaded.predict(spread[i : i + size])
    progress(f"loaded in {load_s:.1f} s, warmed up in {time.perf_counter() - started:.1f} s")
    return loaded, texts


def measure(
    model: str | None = None,
    task: str | None = None,
    device: str = "auto",
    *,
    torch_threads: int = 1,
    cores: list[int] | None = None,
    loadgen_cores: list[int] | None = None,
    loadgen_duty: float = DEFAULT_LOADGEN_DUTY,
    batch_sizes=DEFAULT_BATCH_SIZES,
    min_seconds: float = 3.0,
    rounds: int = 3,
    seed: int = 0,
    from_token_ids: bool = False,
    length_sorted: bool = False,
    progress=print,
) -> dict:
    """Time the pipeline in this process (pinned to `cores`), with loadgen_cores kept
    loadgen_duty busy; return the result dict.

    from_token_ids: time the model's work on inputs tokenized beforehand, off the clock
    (LoadedModel.predict_encoded), as multi_process's model process does it while its front
    ends tokenize: the ceiling of that one process, not of a server that tokenizes too.

    length_sorted: batches of inputs of nearly one length (time_batches): the denominator for a
    server that groups its queue by length, as slo_aware does."""
    if cores:
        os.sched_setaffinity(0, cores)
    import torch

    loaded, texts = load_for_timing(model, task, device, torch_threads, seed, batch_sizes, progress)
    predict, inputs, token_counts = loaded.predict, texts, loaded.token_counts
    if from_token_ids:
        predict, inputs = loaded.predict_encoded, [loaded.encode(text) for text in texts]

        def token_counts(batch):
            lengths = [len(item["input_ids"]) for item in batch]
            return sum(lengths), max(lengths) * len(lengths)

    lengths = loaded.token_lengths(texts) if length_sorted else None
    with BusyNeighbour(loadgen_cores, loadgen_duty) as neighbour:
        rows = time_batches(predict, inputs, batch_sizes, min_seconds=min_seconds, rounds=rounds,
                            token_counts=token_counts, lengths=lengths, seed=seed)
    for row in rows:
        progress(f"batch {row['batch_size']:4d}: {row['seq_per_s']:8.1f} seq/s, "
                 f"padded to {row['mean_padded_length']:.1f} tokens on average")
    best = max(rows, key=lambda r: r["seq_per_s"])
    return {
        "ceiling_seq_per_s": best["seq_per_s"],
        "best_batch_size": best["batch_size"],
        "inputs": "token ids (tokenized off the clock)" if from_token_ids else "texts",
        "batches": "sorted by length" if length_sorted else "in corpus order",
        "by_batch_size": rows,
        "cost_model": batch_cost_fit(rows, loaded.describe()),
        "model": loaded.describe(),
        "torch_threads": torch_threads,
        "torch_threads_actual": torch.get_num_threads(),
        "cores": cores,
        "loadgen_stand_in": {"cores": loadgen_cores, "duty": loadgen_duty,
                             "measured_duty": round(neighbour.measured_duty, 4)},
        "corpus_sha256": corpus.sha256(),
        "seed": seed,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": versions(),
        "machine": machine(),
    }


def write(result: dict, results_dir: Path, out: Path | None = None) -> Path:
    path = Path(out) if out else ceiling_path(results_dir, result["model"], result["torch_threads"])
    if not out and result.get("inputs", "texts") != "texts":  # never where a server's ceiling is looked up
        path = path.with_name(path.stem + "__token_ids.json")
    elif not out and result.get("batches") == "sorted by length":  # nor this one
        path = path.with_name(path.stem + "__length_sorted.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["batch_size", "sequences", "seconds", "seq_per_s",
                                               "mean_padded_length"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["by_batch_size"])
    return path


def measure_in_subprocess(
    model: str | None = None,
    task: str | None = None,
    device: str = "auto",
    *,
    torch_threads: int = 1,
    cores="auto",
    loadgen_cores="auto",
    loadgen_duty: float = DEFAULT_LOADGEN_DUTY,
    results_dir: Path = RESULTS,
    batch_sizes=DEFAULT_BATCH_SIZES,
    min_seconds: float = 3.0,
    quiet: bool = False,
) -> dict:
    """Measure in a fresh pinned process (the caller's cores and threads stay as they are)."""
    cores = parse_cores(cores, "server")
    loadgen_cores = parse_cores(loadgen_cores, "locust")
    argv = [
        sys.executable, "-m", "servelab", "ceiling",
        "--device", device,
        "--torch-threads", str(torch_threads),
        "--cores", cores_arg(cores),
        "--loadgen-cores", cores_arg(loadgen_cores),
        "--loadgen-duty", str(loadgen_duty),
        "--results-dir", str(results_dir),
        "--batch-sizes", ",".join(map(str, batch_sizes)),
        "--min-seconds", str(min_seconds),
    ]  # fmt: skip
    if model:
        argv += ["--model", model]
    if task:
        argv += ["--task", task]
    done = subprocess.run(
        argv, cwd=REPO, env=server_env(), capture_output=True, text=True, check=False,
        preexec_fn=pinning(cores),
    )  # fmt: skip
    if not quiet:
        sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"ceiling measurement failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("ceiling written to ").strip())
    data = json.loads(path.read_text())
    data["path"] = str(path)
    return data
