"""The offline ceiling: sequences per second of the bare pipeline, by batch size, no HTTP at all.

    python -m servelab ceiling                      # default model, core 0, 1 torch thread

Same model loading (servelab.models.load_model), same cores and threads as the server gets in
a benchmark, same corpus, after a warm-up over varied lengths. The best batch size gives the
ceiling: a server can at best approach it, and `achieved_rate / ceiling` says how close it came
on this very machine (no speed constant tied to one machine).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from servelab.bench import corpus
from servelab.bench.corpus import REPO
from servelab.bench.machine import git_state, machine, package_versions, parse_cores
from servelab.process import pinning

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
RESULTS = REPO / "results"


def ceiling_path(results_dir: Path, model_id: str, task: str, device: str, torch_threads: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return Path(results_dir) / "ceiling" / f"{slug}__{task}__{device}__t{torch_threads}.json"


def find_ceiling(results_dir: Path, model: dict, torch_threads: int | None) -> dict | None:
    """A ceiling measured before for this model (a server's /info "model"), device and threads."""
    path = ceiling_path(
        results_dir, model.get("id", "?"), model.get("task", "?"), model.get("device", "?"), torch_threads
    )
    if path.is_file():
        data = json.loads(path.read_text())
        data["path"] = str(path)
        return data
    return None


def measure(
    model: str | None = None,
    task: str | None = None,
    device: str = "auto",
    *,
    torch_threads: int = 1,
    cores: list[int] | None = None,
    batch_sizes=DEFAULT_BATCH_SIZES,
    min_seconds: float = 3.0,
    min_batches: int = 3,
    rounds: int = 3,
    seed: int = 0,
    progress=print,
) -> dict:
    """Time the pipeline in this process (pinned to `cores`); return the result dict."""
    if cores:
        os.sched_setaffinity(0, cores)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from servelab.models import load_model

    torch.set_num_threads(torch_threads)
    started = time.perf_counter()
    loaded = load_model(model=model, task=task, device=device)
    load_s = time.perf_counter() - started
    texts = corpus.prepare(corpus.load_prompts(), loaded.mask_token, seed)
    rng = random.Random(f"{seed}:ceiling")
    rng.shuffle(texts)

    # Warm-up: every batch size over the whole range of lengths, once.
    spread = corpus.prepare(corpus.spread_by_length(corpus.load_prompts(), 16), loaded.mask_token, seed)
    warm_started = time.perf_counter()
    for size in batch_sizes:
        for i in range(0, len(spread), size):
            loaded.predict(spread[i : i + size])
    warmup_s = time.perf_counter() - warm_started
    progress(f"loaded in {load_s:.1f} s, warmed up in {warmup_s:.1f} s")

    # Interleaved rounds: each batch size is timed in every round, so a machine whose speed
    # drifts during the measurement (shared or throttled CPUs do) biases no size against another.
    totals = {size: [0, 0.0, 0] for size in batch_sizes}  # sequences, seconds, batches
    position = 0
    for _ in range(rounds):
        for size in batch_sizes:
            total = totals[size]
            round_seconds = 0.0
            while round_seconds < min_seconds / rounds or total[2] < min_batches:
                batch = [texts[(position + i) % len(texts)] for i in range(size)]
                position += size
                t0 = time.perf_counter()
                loaded.predict(batch)
                elapsed = time.perf_counter() - t0
                round_seconds += elapsed
                total[0] += size
                total[1] += elapsed
                total[2] += 1
    rows = []
    for size, (done, seconds, _) in totals.items():
        rows.append({"batch_size": size, "sequences": done, "seconds": round(seconds, 4),
                     "seq_per_s": round(done / seconds, 3)})
        progress(f"batch {size:4d}: {done / seconds:8.1f} seq/s")
    best = max(rows, key=lambda r: r["seq_per_s"])
    return {
        "ceiling_seq_per_s": best["seq_per_s"],
        "best_batch_size": best["batch_size"],
        "by_batch_size": rows,
        "model": loaded.describe(),
        "torch_threads": torch_threads,
        "torch_threads_actual": torch.get_num_threads(),
        "cores": cores,
        "corpus_sha256": corpus.sha256(),
        "seed": seed,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "warmup_s": round(warmup_s, 3),
    }


def write(result: dict, results_dir: Path, out: Path | None = None) -> Path:
    model = result["model"]
    path = (
        Path(out)
        if out
        else ceiling_path(results_dir, model["id"], model["task"], model["device"], result["torch_threads"])
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["batch_size", "sequences", "seconds", "seq_per_s"])
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
    results_dir: Path = RESULTS,
    batch_sizes=DEFAULT_BATCH_SIZES,
    min_seconds: float = 3.0,
    quiet: bool = False,
) -> dict:
    """Measure in a fresh pinned process (the caller's cores and threads stay as they are)."""
    cores = parse_cores(cores, "server")
    argv = [
        sys.executable,
        "-m",
        "servelab",
        "ceiling",
        "--device",
        device,
        "--torch-threads",
        str(torch_threads),
        "--cores",
        ",".join(map(str, cores)) if cores else "none",
        "--results-dir",
        str(results_dir),
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--min-seconds",
        str(min_seconds),
    ]
    if model:
        argv += ["--model", model]
    if task:
        argv += ["--task", task]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=pinning(cores))
    if not quiet:
        sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"ceiling measurement failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("ceiling written to ").strip())
    data = json.loads(path.read_text())
    data["path"] = str(path)
    return data
