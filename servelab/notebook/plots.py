"""The notebooks' figures: one plot function per kind of figure, each drawing on axes it is given
(the notebook makes the figure and saves it). matplotlib is imported inside the functions only."""

from __future__ import annotations

import math

from servelab.notebook.analysis import _fmt

# One colour per variant, the same in every figure.
COLORS = {
    "naive": "tab:gray",
    "per_get_timeout": "tab:orange",
    "deadline": "tab:blue",
    "capped_batch": "tab:green",
    "thread_offloaded": "tab:purple",
    "slo_aware": "tab:red",
}
STATUS_COLORS = {"200": "tab:green", "503": "tab:orange", "504": "tab:red", "other": "tab:gray"}




def plot_timelines(ax, rows: list[tuple], seconds: float) -> None:
    """One row per server, rows = [(label, batches, t0, color)]: each batch as a light bar while
    it collects (opened -> closed) and a dark bar while the model computes it (its size written
    on it); ticks mark request arrivals. x: ms since that row's t0."""
    for y, (_label, batches, t0, color) in enumerate(rows):
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
    for i, (key, unsorted) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        group = sorted(unsorted, key=lambda p: p["offered_rate"])
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
    """One bar per variant: axes[0] achieved rate under overload, with the quick ceilings timed just
    before and after that point (black lines) and the reference ceiling; axes[1] p50 and p99 at
    moderate load."""
    import numpy as np

    over = [p for p in points if math.isclose(p["offered_rate"], overload_rate, rel_tol=1e-3)]
    mod = [p for p in points if math.isclose(p["offered_rate"], moderate_rate, rel_tol=1e-3)]
    names = [p["variant"] for p in over]
    axes[0].bar(names, [p.get("achieved_rate") or 0 for p in over], color=[COLORS.get(v) for v in names])
    for i, p in enumerate(over):
        ends = [p.get("ceiling.bracket.before"), p.get("ceiling.bracket.after")]
        if None not in ends:
            axes[0].hlines(ends, i - 0.4, i + 0.4, colors="black", lw=1.5,
                           label="quick ceilings just before and after the point" if i == 0 else None)
            if p.get("above_ceiling"):
                axes[0].annotate("above the\nbracket", (i, p["achieved_rate"]), ha="center", va="bottom",
                                 fontsize=7, color="red")
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
