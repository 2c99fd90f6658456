"""Notebook 8, one process against many: one row per setting from its sweep points, and the
figure of those rows."""

from __future__ import annotations

from servelab.notebook.plots import COLORS, STATUS_COLORS, log_y

# One colour per way of serving, whatever its number of processes.
FAMILY_COLORS = {"thread_offloaded": COLORS["thread_offloaded"], "multi_process": "tab:blue",
                 "LitServe": "tab:olive", "Ray Serve": "tab:cyan"}


def side_by_side(points: dict[str, list[dict]], ceiling_rate: float, low: float, high: float) -> list[dict]:
    """One row per setting from its sweep points (offered at `low` and `high` x the ceiling):
    achieved over the ceiling and the answers by status at `high`, the p50 at `low`, the
    server's CPU per answer at `high` (all its processes), and its memory after the `low` load."""
    rows = []
    for setting, mine in points.items():
        by_load = {round(p["offered_rate"] / ceiling_rate, 2): p for p in mine}
        light, heavy = by_load.get(round(low, 2), {}), by_load.get(round(high, 2), {})
        achieved = heavy.get("achieved_rate") or 0.0
        statuses = {k.removeprefix("errors_by_status."): int(v) for k, v in heavy.items()
                    if k.startswith("errors_by_status.") and v}
        cpu = heavy.get("server_cpu_share")
        rows.append({
            "setting": setting,
            "achieved_over_ceiling": achieved / ceiling_rate,
            "p50_ms_light": light.get("latency_ms.p50"),
            "cpu_ms_per_answer": 1e3 * cpu / achieved if cpu and achieved else None,
            "pss_mb": light.get("server_memory.pss_mb"),
            "rss_mb": light.get("server_memory.rss_mb"),
            "processes": light.get("server_memory.processes"),
            "answered_200": int(heavy.get("ok") or 0),
            "refused_503": statuses.pop("503", 0),
            "late_504": statuses.pop("504", 0),
            "no_answer": sum(statuses.values()),  # 0: connection lost; -1: unsent or unfinished at stop
            "failed": heavy.get("failed") or light.get("failed"),
        })
    return rows


def plot_side_by_side(axes, rows: list[dict], device: str) -> None:
    """Notebook 8: one bar per setting (rows from analysis.side_by_side) on each of five axes:
    achieved over the ceiling under overload, p50 at light load, server CPU per answer, memory,
    and the answers by status under overload. Latency and CPU on log scales where they span more
    than a decade: Ray Serve's are ten to a hundred times the others'."""
    names = [r["setting"] for r in rows]
    x = list(range(len(rows)))
    colors = [next((c for prefix, c in FAMILY_COLORS.items() if name.startswith(prefix)), "tab:gray")
              for name in names]
    panels = [("achieved_over_ceiling", "achieved / ceiling at 2x", False),
              ("p50_ms_light", "p50 at 0.1x (ms)", True),
              ("cpu_ms_per_answer", "server CPU per answer at 2x (ms)", True),
              ("pss_mb", "memory, sum of PSS (MB)", False)]
    for ax, (key, title, log) in zip(axes, panels, strict=False):
        ax.bar(x, [r[key] or 0 for r in rows], color=colors)
        for i, r in enumerate(rows):
            if r[key] is None:
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=7)
        values = [r[key] for r in rows if r[key]]
        if log and values and max(values) > 20 * min(values):  # within a decade, a log axis has no labels
            log_y(ax)
        ax.set_title(f"{title}\n{device}", fontsize=9)
    if len(axes) > 4:
        bottom = [0] * len(rows)
        for key, label, color in (("answered_200", "200", STATUS_COLORS["200"]),
                                  ("refused_503", "503", STATUS_COLORS["503"]),
                                  ("late_504", "504", STATUS_COLORS["504"]),
                                  ("no_answer", "no answer", STATUS_COLORS["other"])):
            heights = [r[key] for r in rows]
            axes[4].bar(x, heights, bottom=bottom, label=label, color=color)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        axes[4].set_title(f"requests at 2x, by outcome\n{device}", fontsize=9)
        axes[4].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes:
        ax.set_xticks(x, names)
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
