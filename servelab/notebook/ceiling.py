"""The offline ceiling for the notebooks: measured once per results folder and reused, and its
figure (throughput by batch size)."""

from __future__ import annotations

from pathlib import Path


def ceiling(results: Path, quick: bool, remeasure: bool = False, **model) -> dict:
    """The offline ceiling (bare pipeline, no HTTP, the server's core and threads), measured once
    per results folder and reused by the later notebooks. Quick mode times fewer batch sizes."""
    from servelab.bench import measure_ceiling
    from servelab.bench.ceiling import find_ceiling

    results = Path(results).resolve()
    sizes = (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64)
    if not remeasure and not model:
        default_model = {"id": "all-MiniLM-L6-v2", "task": "feature-extraction", "device": "cpu"}
        known = find_ceiling(results, default_model, 1)
        # A quick-mode measurement (fewer sizes, shorter) is not reused by full mode.
        if known and set(sizes) <= {r["batch_size"] for r in known["by_batch_size"]}:
            print(f"offline ceiling from {known['path']} (measured {known['created_utc']})")
            return known
    timing = {"min_seconds": 1.0} if quick else {}  # full mode: servelab.bench's own default
    print(f"measuring the offline ceiling at batch sizes {sizes} ...")
    data = measure_ceiling(results_dir=results, batch_sizes=sizes, quiet=True, **timing, **model)
    print(f"offline ceiling: {data['ceiling_seq_per_s']:.1f} seq/s at batch {data['best_batch_size']}")
    return data


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
