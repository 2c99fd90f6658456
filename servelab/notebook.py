"""What the walkthrough notebooks (notebooks/*.py) import: results folders, the ceiling, timed
requests, probes, trace and metrics reading, and one plot function per kind of figure.

The notebooks hold the prose and a few calls; the logic is here. Importing this module imports
neither torch nor locust (a Jupyter kernel must never import locust: it hangs), and matplotlib
only when a plot is drawn.

    from servelab import notebook as nb
    nb.banner()
    folder = nb.setup(RESULTS, "02_dynamic_batching")
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import threading
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from servelab.bench import percentile
from servelab.bench.stats import parse_metrics

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# One colour per variant, the same in every figure.
COLORS = {
    "naive": "tab:gray",
    "per_get_timeout": "tab:orange",
    "deadline": "tab:blue",
    "capped_batch": "tab:green",
    "thread_offloaded": "tab:purple",
}
STATUS_COLORS = {"200": "tab:green", "503": "tab:orange", "504": "tab:red", "other": "tab:gray"}


# --- Set-up -------------------------------------------------------------------------------------


def banner() -> dict:
    """Print (and return) the versions and the machine that made this notebook's results."""
    from servelab.bench.machine import git_state, machine

    packages = {"python": platform.python_version()}
    names = ("servelab", "torch", "transformers", "starlette", "uvicorn", "locust", "matplotlib", "numpy")
    for name in names:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    git = git_state()
    info = {"packages": packages, "git": git, "machine": machine()}
    m = info["machine"]
    print("  ".join(f"{k} {v}" for k, v in packages.items()))
    print(f"code {git['short']}{' (uncommitted changes)' if git['dirty'] else ''}")
    print(f"{m['cpu_model']}, {len(m['cores_available'])} of {m['cpu_count']} cores available, "
          f"{m['platform']}; GPUs: {', '.join(m['gpus']) or 'none'}; kernel: {m['executable']}")
    return info


def setup(results: Path, name: str) -> Path:
    """The notebook's own results folder (created), and matplotlib defaults for every figure."""
    import warnings

    import matplotlib.pyplot as plt

    # servelab.bench.sweep imports tqdm.auto even without a progress bar; without ipywidgets
    # that warns on every sweep.
    warnings.filterwarnings("ignore", message="IProgress not found")
    folder = Path(results).resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.figsize": (10, 4), "axes.spines.top": False, "axes.spines.right": False})
    return folder


def save(fig, folder: Path, name: str) -> Path:
    """Save a figure as folder/name.png (the CSV behind it is written by the caller)."""
    path = Path(folder) / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows with numbers as floats, empty cells as None (sweep CSVs, and the ones written here)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    if text in ("", "None", None):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def fresh(path: Path, reuse: bool) -> Path:
    """A sweep CSV to fill: removed first unless reuse (then its finished points are kept)."""
    path = Path(path)
    if not reuse and path.exists():
        path.unlink()
    return path


# --- The offline ceiling ------------------------------------------------------------------------


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


# --- Timed requests -----------------------------------------------------------------------------


def send_schedule(url: str, bodies: list[bytes | str], offsets_s: list[float], *, path: str = "/",
                  timeout_s: float = 120.0) -> list[dict]:
    """POST bodies[i] at offsets_s[i] seconds after a common start, each from its own thread and
    connection (opened before the start, so connecting costs nothing on the clock).

    Returns one dict per request: status, sent and answered (time.monotonic(), the same clock
    as the servers' --trace on Linux), latency_ms, and the answer's JSON (or text).
    """
    import httpx

    n = len(bodies)
    results: list[dict | None] = [None] * n
    ready = threading.Barrier(n + 1)  # every connection is open
    go = threading.Event()  # start[0] is set
    start = [0.0]

    def worker(i: int) -> None:
        body = bodies[i].encode() if isinstance(bodies[i], str) else bodies[i]
        with httpx.Client(timeout=timeout_s) as client:
            try:
                client.get(url + "/health")  # open the connection now
            finally:
                ready.wait()
            go.wait()
            delay = start[0] + offsets_s[i] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            try:
                answer = client.post(url + path, content=body)
                status, text = answer.status_code, answer.text
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            answered = time.monotonic()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        results[i] = {"i": i, "status": status, "sent": sent, "answered": answered,
                      "latency_ms": (answered - sent) * 1000, "answer": payload}

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    start[0] = time.monotonic() + 0.02
    go.set()
    for t in threads:
        t.join()
    return results


class Prober:
    """GET url+path every period_s in a background thread, timing each answer.

    with nb.Prober(server.url) as probe: ...   then probe.samples: [{sent, latency_ms, status}]
    """

    def __init__(self, url: str, path: str = "/health", period_s: float = 0.02, timeout_s: float = 60.0):
        self.url, self.path, self.period_s, self.timeout_s = url, path, period_s, timeout_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            client.get(self.url + self.path)
            next_at = time.monotonic()
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.get(self.url + self.path).status_code
                except httpx.HTTPError:
                    status = 0
                answered = time.monotonic()
                self.samples.append({"sent": sent, "latency_ms": (answered - sent) * 1000, "status": status})
                next_at = max(next_at + self.period_s, answered)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s)


def long_inputs(count: int, words: int, seed: int = 0) -> list[str]:
    """count inputs of about `words` words each, made by joining prompts from the load corpus."""
    import random

    from servelab.bench import corpus

    prompts = corpus.load_prompts()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text: list[str] = []
        while len(text) < words:
            text += rng.choice(prompts).split()
        out.append(" ".join(text[:words]))
    return out


# --- Memory -------------------------------------------------------------------------------------


def memory_mb(pid: int) -> dict:
    """Resident memory of one process in MB: rss (all its resident pages, shared ones included),
    pss (shared pages divided among the processes sharing them), uss (pages only it holds)."""
    import psutil

    m = psutil.Process(pid).memory_full_info()
    return {"rss_mb": m.rss / 1e6, "pss_mb": m.pss / 1e6, "uss_mb": m.uss / 1e6}


def model_weights_mb(folder: Path | None = None) -> float:
    """Size of the weight files of the default model (or of `folder`), in MB."""
    if folder is None:
        from servelab.models import default_model_dir

        folder = default_model_dir()
    files = [p for p in Path(folder).rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    sizes = {}
    for p in files:  # the same weights may come in two formats: count the largest one only
        sizes[p.suffix] = sizes.get(p.suffix, 0) + p.stat().st_size
    return max(sizes.values(), default=0) / 1e6


# --- What a server saw: its trace and its metrics -------------------------------------------------


def read_trace(path: Path) -> list[dict]:
    """The --trace file: one dict per batch (times in the server's monotonic seconds)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def clear(path: Path) -> None:
    """Empty a trace file the server is still appending to (warm-up batches go away)."""
    Path(path).write_text("")


def first_waits_ms(batches: list[dict]) -> list[float]:
    """For each batch, how long its first request waited from arrival until the batch closed."""
    return [(b["closed"] - b["requests"][0]["arrived"]) * 1000 for b in batches]


def lag(before: str, after: str) -> dict:
    """The event-loop lag seen between two /metrics scrapes: how many stalls, their total, and
    the histogram bucket holding the longest one (lag is observed every 50 ms)."""
    b, a = parse_metrics(before), parse_metrics(after)
    name = "servelab_event_loop_lag_seconds"

    def delta(sample, labels=()):
        key = (sample, labels)
        return a.get(key, 0.0) - b.get(key, 0.0)

    buckets = sorted(
        (float(dict(labels)["le"]), delta(sample, labels))
        for sample, labels in a
        if sample == f"{name}_bucket"
    )
    longest_low, longest_high = 0.0, 0.0
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count > previous_count:
            longest_low, longest_high = previous_bound, bound
        previous_bound, previous_count = bound, count
    return {
        "observations": delta(f"{name}_count"),
        "total_lag_s": delta(f"{name}_sum"),
        "longest_lag_s_between": (longest_low, longest_high),
    }


def metric(text: str, sample: str, **labels) -> float:
    return parse_metrics(text).get((sample, tuple(sorted(labels.items()))), 0.0)


def server_settings(run_dir: Path) -> str:
    """The batching and breaker settings a run's server had (from its manifest), in words."""
    settings = json.loads((Path(run_dir) / "manifest.json").read_text())["server"]["info"]["settings"]
    parts = []
    for key, name, unit in (("max_wait_ms", "wait", " ms"), ("max_batch_size", "cap", ""),
                            ("max_queue", "queue", ""), ("queue_timeout_ms", "timeout", " ms")):
        value = settings.get(key)
        if value is not None:
            parts.append(f"{name} {_fmt(float(value)) if value else 'off'}{unit if value else ''}")
    return ", ".join(parts) or "none"


# --- Load results over time ----------------------------------------------------------------------


def per_second(rows: list[dict], slo_ms: float, bin_s: float = 1.0) -> list[dict]:
    """A run's requests (bench's requests.csv rows) by the second they were due: offered rate,
    goodput (200 within slo_ms), 503 and 504 rates, p50 and p99 of the successful requests."""
    if not rows:
        return []
    t0 = min(r["intended_send_s"] for r in rows)
    bins: dict[int, list[dict]] = {}
    for r in rows:
        bins.setdefault(int((r["intended_send_s"] - t0) // bin_s), []).append(r)
    out = []
    for k in range(max(bins) + 1):
        group = bins.get(k, [])
        ok = [r["latency_ms"] for r in group if r["status"] == 200]
        statuses = Counter(r["status"] for r in group)
        out.append({
            "t_s": k * bin_s,
            "offered_per_s": len(group) / bin_s,
            "ok_per_s": len(ok) / bin_s,
            "goodput_per_s": sum(1 for v in ok if v <= slo_ms) / bin_s,
            "503_per_s": statuses.get(503, 0) / bin_s,
            "504_per_s": statuses.get(504, 0) / bin_s,
            "other_errors_per_s": sum(v for s, v in statuses.items() if s not in (200, 503, 504)) / bin_s,
            "p50_ok_ms": percentile(ok, 50),
            "p99_ok_ms": percentile(ok, 99),
        })
    return out


# --- Plots --------------------------------------------------------------------------------------


def plot_timelines(ax, rows: list[tuple], seconds: float) -> None:
    """One row per server, rows = [(label, batches, t0, color)]: each batch as a light bar while
    it collects (opened -> closed) and a dark bar while the model computes it (its size written
    on it); ticks mark request arrivals. x: ms since that row's t0."""
    for y, (label, batches, t0, color) in enumerate(rows):
        end = t0 + seconds
        for b in batches:
            if b["compute_end"] < t0 or b["opened"] > end:
                continue
            ax.barh(y, (b["closed"] - b["opened"]) * 1000, left=(b["opened"] - t0) * 1000, height=0.5,
                    color=color, alpha=0.25, edgecolor="none")
            ax.barh(y, (b["compute_end"] - b["compute_start"]) * 1000, left=(b["compute_start"] - t0) * 1000,
                    height=0.5, color=color, alpha=0.9, edgecolor="white", linewidth=0.5)
            if b["compute_end"] - b["compute_start"] > 0.03 * seconds:
                ax.text((b["compute_start"] + b["compute_end"] - 2 * t0) * 500, y, str(b["size"]),
                        ha="center", va="center", fontsize=7, color="white")
            arrivals = [(r["arrived"] - t0) * 1000 for r in b["requests"] if t0 <= r["arrived"] <= end]
            ax.plot(arrivals, [y + 0.38] * len(arrivals), "|", color="black", ms=6)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.3)
    ax.set_xlim(0, seconds * 1000)
    ax.set_xlabel("time (ms)")
    ax.grid(axis="y", visible=False)


def timeline_legend(ax) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="gray", alpha=0.25, label="batch collecting"),
                       Patch(color="gray", alpha=0.9, label="model computing (number: batch size)"),
                       Line2D([], [], marker="|", ls="none", color="black",
                              label="request taken in by the server")],
              loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)


def plot_batch_sizes(ax, sizes_by_variant: dict[str, list[int]]) -> None:
    """Histogram of batch sizes, weighted by requests: the share of requests served in batches
    of each size (a batch of 32 counts 32 times, a batch of 1 once)."""
    edges = [0.5] + [2 ** k + 0.5 for k in range(11)]
    for variant, sizes in sizes_by_variant.items():
        if not sizes:
            continue
        weights = [s / sum(sizes) for s in sizes]
        ax.hist(sizes, bins=edges, weights=weights, histtype="step", lw=2, color=COLORS.get(variant),
                label=f"{variant} (mean batch {sum(sizes) / len(sizes):.1f})")
    largest = max((max(s) for s in sizes_by_variant.values() if s), default=1)
    ticks = [2 ** k for k in range(11) if 2 ** k <= 2 * largest]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(0.5, ticks[-1] + 0.5)
    ax.set_xlabel("batch size (requests)")
    ax.set_ylabel("share of requests")
    ax.legend(fontsize=8)


def log_y(ax, axis: str = "y") -> None:
    """A log axis with plain numbers (50, 100, 200) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    scale = ax.set_yscale if axis == "y" else ax.set_xscale
    target = ax.yaxis if axis == "y" else ax.xaxis
    scale("log")
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def plot_tradeoff(axes, points: list[dict], ceiling_rate: float | None, by=("max_wait_ms", "max_batch_size"),
                  slo_ms: float | None = None) -> None:
    """Sweep points: axes[0] achieved rate, axes[1] p50 and axes[2] p99, against offered rate,
    one curve per server setting."""
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault(tuple(p.get(k) for k in by), []).append(p)
    cmap = plt.get_cmap("viridis", max(2, len(groups)))
    for i, (key, group) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        group = sorted(group, key=lambda p: p["offered_rate"])
        label = ", ".join(f"{name} {_fmt(v)}" for name, v in zip(by, key, strict=True))
        x = [p["offered_rate"] for p in group]
        style = {"color": cmap(i), "marker": "o", "label": label}
        axes[0].plot(x, [p.get("achieved_rate") or 0 for p in group], **style)
        axes[1].plot(x, [p.get("latency_ms.p50") for p in group], **style)
        axes[2].plot(x, [p.get("latency_ms.p99") for p in group], **style)
    top = max([p["offered_rate"] for p in points] + [ceiling_rate or 0])
    axes[0].plot([0, top], [0, top], color="gray", lw=0.8, ls=":", label="achieved = offered")
    if ceiling_rate:
        axes[0].axhline(ceiling_rate, color="red", ls="--", label=f"offline ceiling {ceiling_rate:.0f}/s")
        for ax in axes[1:]:
            ax.axvline(ceiling_rate, color="red", ls="--", label="offline ceiling")
    if slo_ms:
        for ax in axes[1:]:
            ax.axhline(slo_ms, color="black", ls=":", lw=0.8, label=f"SLO {slo_ms:.0f} ms")
    axes[0].set_ylabel("achieved rate (answers 200/s)")
    axes[1].set_ylabel("p50 latency (ms)")
    axes[2].set_ylabel("p99 latency (ms)")
    for ax in axes:
        ax.set_xlabel("offered rate (requests/s, open loop)")
    for ax in axes[1:]:
        log_y(ax)
    axes[0].legend(fontsize=7)


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def plot_over_time(axes, runs: dict[str, list[dict]], slo_ms: float,
                   spike: tuple[float, float] | None = None) -> None:
    """per_second() rows of several runs: axes[0] goodput, axes[1] 503+504 per second,
    axes[2] p99 of the successful requests; the spike window shaded."""
    styles = ["-", "--", "-.", ":"]
    for i, (name, rows) in enumerate(runs.items()):
        t = [r["t_s"] for r in rows]
        ls = styles[i % len(styles)]
        axes[0].plot(t, [r["offered_per_s"] for r in rows], color="gray", ls=ls, lw=1,
                     label=f"offered ({name})" if i == 0 else None)
        axes[0].plot(t, [r["goodput_per_s"] for r in rows], ls=ls, lw=2, label=f"goodput, {name}")
        for status in ("503", "504"):
            axes[1].plot(t, [r[f"{status}_per_s"] for r in rows], color=STATUS_COLORS[status], ls=ls,
                         label=f"{status}, {name}")
        axes[2].plot(t, [r["p99_ok_ms"] for r in rows], ls=ls, lw=2, label=name)
    axes[0].set_ylabel(f"requests/s (goodput: 200 within {slo_ms:.0f} ms)")
    axes[1].set_ylabel("errors/s")
    axes[2].set_ylabel("p99 latency of 200s (ms)")
    axes[2].axhline(slo_ms, color="black", ls=":", lw=0.8, label=f"SLO {slo_ms:.0f} ms")
    log_y(axes[2])
    for ax in axes:
        ax.set_xlabel("time since the first request was due (s)")
        if spike:
            ax.axvspan(*spike, color="red", alpha=0.08, lw=0)
        ax.legend(fontsize=7)


def plot_breaker_curve(axes, points: list[dict], x: str, x_label: str,
                       off_value: float | None = None) -> None:
    """Sweep points at one overload rate against one breaker setting: axes[0] goodput and
    achieved rate, axes[1] shares of 503 and 504 and of answers within the SLO."""
    points = sorted(points, key=lambda p: p[x])
    xs = list(range(len(points)))
    names = ["off" if off_value is not None and p[x] == off_value else _fmt(p[x]) for p in points]
    axes[0].plot(xs, [p.get("goodput_rate") or 0 for p in points], "o-", color="tab:green",
                 label="goodput (200 within SLO)/s")
    axes[0].plot(xs, [p.get("achieved_rate") or 0 for p in points], "s--", color="tab:blue",
                 label="all 200s/s")
    axes[0].set_ylabel("requests/s")
    n = [p["requests"] or 1 for p in points]
    axes[1].plot(xs, [(p.get("errors_by_status.503") or 0) / k for p, k in zip(points, n, strict=True)], "o-",
                 color=STATUS_COLORS["503"], label="503 (queue full)")
    axes[1].plot(xs, [(p.get("errors_by_status.504") or 0) / k for p, k in zip(points, n, strict=True)], "o-",
                 color=STATUS_COLORS["504"], label="504 (queue timeout)")
    axes[1].plot(xs, [p.get("goodput_fraction") or 0 for p in points], "o-", color="tab:green",
                 label="200 within SLO")
    axes[1].set_ylabel("share of requests")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xticks(xs, names)
        ax.set_xlabel(x_label)
        ax.legend(fontsize=7)


def plot_variants(axes, points: list[dict], moderate_rate: float, overload_rate: float,
                  ceiling_rate: float | None) -> None:
    """One bar per variant: axes[0] achieved rate under overload (against the ceiling),
    axes[1] p50 and p99 at moderate load."""
    import numpy as np

    over = [p for p in points if math.isclose(p["offered_rate"], overload_rate, rel_tol=1e-3)]
    mod = [p for p in points if math.isclose(p["offered_rate"], moderate_rate, rel_tol=1e-3)]
    names = [p["variant"] for p in over]
    axes[0].bar(names, [p.get("achieved_rate") or 0 for p in over], color=[COLORS.get(v) for v in names])
    if ceiling_rate:
        axes[0].axhline(ceiling_rate, color="red", ls="--", label=f"offline ceiling {ceiling_rate:.0f}/s")
    axes[0].axhline(overload_rate, color="gray", ls=":", label=f"offered {overload_rate:.0f}/s")
    axes[0].set_ylabel(f"achieved rate at {overload_rate:.0f} req/s offered (200s/s)")
    axes[0].legend(fontsize=7)
    names = [p["variant"] for p in mod]
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, [p.get("latency_ms.p50") or 0 for p in mod], 0.4, label="p50",
                color=[COLORS.get(v) for v in names], alpha=0.5)
    axes[1].bar(x + 0.2, [p.get("latency_ms.p99") or 0 for p in mod], 0.4, label="p99",
                color=[COLORS.get(v) for v in names])
    axes[1].set_xticks(x, names)
    axes[1].set_ylabel(f"latency at {moderate_rate:.0f} req/s offered (ms)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)


# --- Executing the notebooks (tests/test_notebooks.py, notebooks/run_all.py) ----------------------


def notebooks() -> list[Path]:
    """The walkthrough's notebooks, in reading order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def execute(notebook: Path, out: Path | None, *, quick: bool, results: Path, timeout_s: int = 900):
    """Run a notebook top to bottom in a fresh kernel of this very interpreter, with
    SERVELAB_QUICK and SERVELAB_RESULTS set; write the executed copy to `out` if given.
    Raises nbclient's CellExecutionError on the first failing cell."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from traitlets import default

    class ThisInterpreter(AsyncKernelManager):
        # No kernel directories: only ipykernel's own spec, which runs sys.executable, so the
        # kernel is this interpreter whatever kernelspecs the machine has installed.
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[])

    nb = nbformat.read(notebook, as_version=4)
    env = dict(os.environ, SERVELAB_QUICK="1" if quick else "0",
               SERVELAB_RESULTS=str(Path(results).resolve()), JUPYTER_PLATFORM_DIRS="1")
    client = NotebookClient(nb, kernel_name="python3", kernel_manager_class=ThisInterpreter,
                            timeout=timeout_s, resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute(env=env)
    finally:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
    return nb


# --- Servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(*servers):
    """Start several ServerProcess objects at once (their model loads overlap); always stop all."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(), servers))
        yield servers
    finally:
        for s in servers:
            s.stop()


def tiny_fill_mask_model(folder: Path) -> Path:
    """A small random-weight BERT masked-LM (servelab.models.build_tiny_fill_mask_model), built
    once in a subprocess so this kernel never loads torch."""
    import subprocess
    import sys

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        code = "import sys; from servelab.models import build_tiny_fill_mask_model as b; b(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True)
    return folder


# --- Plots of single notebooks ---------------------------------------------------------------------


def plot_memory(ax, rows: list[dict], weights_mb: float) -> None:
    """Notebook 1: summed RSS and PSS of each setup (rows from memory_mb, summed per setup)."""
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["rss_mb"] for r in rows], 0.4, color="lightgray",
           label="sum of RSS (shared pages counted in every process)")
    ax.bar([i + 0.2 for i in x], [r["pss_mb"] for r in rows], 0.4, color="tab:blue",
           label="sum of PSS (shared pages counted once)")
    ax.axhline(weights_mb, color="red", ls="--",
               label=f"one copy of the model's weights ({weights_mb:.0f} MB)")
    ax.set_xticks(x, [r["setup"] for r in rows])
    ax.set_ylabel("resident memory (MB)")
    ax.legend(fontsize=8)


def plot_health_during(axes, runs: dict[str, tuple], samples: list[dict]) -> None:
    """Notebook 3: per variant (one axis each), /health latency by send time, the pipeline calls
    shaded, and the time to the bad request's 400. runs: {variant: (t0, batches, bad_request)}."""
    for ax, (variant, (t0, batches, bad)) in zip(axes, runs.items(), strict=True):
        color = COLORS.get(variant, "tab:blue")
        for i, b in enumerate(batches):
            ax.axvspan((b["compute_start"] - t0) * 1000, (b["compute_end"] - t0) * 1000, color=color,
                       alpha=0.15, lw=0, label="model computing" if i == 0 else None)
        mine = [s for s in samples if s["variant"] == variant and s["t_ms"] > -100]
        ax.plot([s["t_ms"] for s in mine], [s["health_latency_ms"] for s in mine], ".-", color=color,
                lw=0.8, label="GET /health latency")
        ax.plot([(bad["sent"] - t0) * 1000], [bad["latency_ms"]], "X", color="red", ms=10,
                label="empty POST: time to its 400")
        log_y(ax)
        ax.set_ylim(0.5, None)
        ax.set_ylabel("latency (ms)")
        ax.set_title(variant, loc="left", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")


def plot_blocking(ax, summary: list[dict]) -> None:
    """Notebook 3: slowest /health and time to the 400 against the burst's pipeline time."""
    for variant in dict.fromkeys(r["variant"] for r in summary):
        rows = [r for r in summary if r["variant"] == variant]
        x = [r["compute_total_ms"] for r in rows]
        ax.plot(x, [r["health_max_ms"] for r in rows], "o", ms=8, color=COLORS.get(variant),
                label=f"{variant}: slowest /health")
        ax.plot(x, [r["bad_request_ms"] for r in rows], "X", ms=8, color=COLORS.get(variant),
                label=f"{variant}: time to the 400")
    values = [r[k] for r in summary for k in ("compute_total_ms", "health_max_ms", "bad_request_ms")]
    low, high = min(values) / 2, max(values) * 1.5
    ax.plot([low, high], [low, high], color="gray", ls=":", label="as long as the burst's pipeline time")
    log_y(ax, "x")
    log_y(ax)
    ax.set_xlabel("pipeline time of the burst: sum of its calls (ms)")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7)


def recovered_after(rows: list[dict], end_s: float, slo_ms: float) -> float | None:
    """Notebook 4: seconds after end_s until every later second's p99 of 200s is within slo_ms
    (per_second rows); None if that never happens before the run ends."""
    late = [r for r in rows if r["t_s"] >= end_s]
    for i, r in enumerate(late):
        if all(x["p99_ok_ms"] is not None and x["p99_ok_ms"] <= slo_ms for x in late[i:] if x["ok_per_s"]):
            return r["t_s"] - end_s
    return None
