"""The offline ceiling for the notebooks: measured once per results folder and reused, and its
figure (throughput by batch size)."""

from __future__ import annotations

import json
from pathlib import Path


def ceiling(results: Path, quick: bool, remeasure: bool = False, model: str | None = None,
            task: str | None = None, device: str = "auto") -> dict:
    """The offline ceiling (bare pipeline, no HTTP, the server's core and threads, the load
    generator's core kept as busy as during a run), measured once per results folder and reused
    by the later notebooks. Quick mode times fewer batch sizes.

    The cache is keyed by what was asked for (model, task, device as given), so that a later
    notebook finds it without loading the model to learn which device "auto" meant."""
    from servelab.bench import measure_ceiling

    results = Path(results).resolve()
    sizes = (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64)
    asked = {"model": model, "task": task, "device": device, "torch_threads": 1}
    if not remeasure:
        known = _cached(results, asked, sizes)
        if known:
            print(f"offline ceiling from {known['path']} (measured {known['created_utc']})")
            return known
    timing = {"min_seconds": 1.0} if quick else {}  # full mode: servelab.bench's own default
    print(f"measuring the offline ceiling at batch sizes {sizes} ...")
    data = measure_ceiling(model, task, device, results_dir=results, batch_sizes=sizes, quiet=True, **timing)
    path = Path(data.pop("path"))
    path.write_text(json.dumps(data | {"asked": asked}, indent=2) + "\n")
    print(f"offline ceiling: {data['ceiling_seq_per_s']:.1f} seq/s at batch {data['best_batch_size']}")
    return data | {"asked": asked, "path": str(path)}


def _cached(results: Path, asked: dict, sizes) -> dict | None:
    """The newest ceiling file in this results folder asked for the same way, with every size
    (a quick-mode measurement, with fewer sizes, is not reused by full mode)."""
    found = []
    for path in (results / "ceiling").glob("*.json"):
        data = json.loads(path.read_text())
        if data.get("asked") == asked and set(sizes) <= {r["batch_size"] for r in data["by_batch_size"]}:
            found.append(data | {"path": str(path)})
    return max(found, key=lambda d: d["created_utc"], default=None)


def reference(data: dict):
    """The ceiling as the bench takes it (servelab.bench.Ceiling), from ceiling()'s result."""
    from servelab.bench import Ceiling

    return Ceiling.from_data(data, data["path"])


def plot_ceiling_by_batch(ax, data: dict) -> None:
    rows = data["by_batch_size"]
    sizes = [r["batch_size"] for r in rows]
    rates = [r["seq_per_s"] for r in rows]
    ax.plot(sizes, rates, "o-", color="black", label="bare pipeline (no HTTP)")
    ax.axhline(data["ceiling_seq_per_s"], color="red", ls="--",
               label=f"ceiling {data['ceiling_seq_per_s']:.0f} seq/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size (sequences per pipeline call)")
    ax.set_ylabel("throughput (sequences/s)")
    ax.set_ylim(bottom=0)
    ax.legend()
