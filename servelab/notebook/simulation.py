"""The simulator in the notebooks: a calibration measured once per results folder and device,
measured sweep points replayed, curves predicted, and their figures."""

from __future__ import annotations

import json
from pathlib import Path

from servelab.bench.stats import flatten

QUICK_SIZES = (1, 4, 16, 64)


def calibration(results: Path, quick: bool, device: str):
    """The cost model and HTTP time for `device` (servelab/sim/calibration.py), measured once
    per results folder: about a minute, half that in quick mode."""
    from servelab.sim.calibration import Calibration, calibrate

    results = Path(results).resolve()
    try:
        found = Calibration.find(device, results)
        print(f"calibration from {found.data['path']}")
        return found
    except FileNotFoundError:
        pass
    print(f"calibrating {device}: the ceiling's cost model, then five short runs for the server's own work")
    timing = {"duration_s": 2.0, "batch_sizes": QUICK_SIZES, "min_seconds": 0.5} if quick else {}
    return Calibration.load(calibrate(device, results_dir=results, progress=lambda *_: None, **timing))


def describe(cal) -> str:
    return f"{cal.data['device']}: {cal.describe()}"


def replay_points(points: list[dict], cal) -> list[dict]:
    """Each measured sweep point (a row of a sweep's CSV) beside its simulation with the same
    arrivals, inputs and settings: flat rows, simulated figures prefixed with `sim.`."""
    from servelab.sim.replay import MeasuredRun, corpus_token_lengths, replay

    rows = []
    for point in points:
        simulated = replay(MeasuredRun.load(point["run_dir"]), cal.cost, cal.http, corpus_token_lengths())
        rows.append(point | flatten(simulated, "sim."))
    return rows


def predict(cal, variant: str, settings: dict, rates: list[float], duration_s: float = 20.0,
            seed: int = 0, requests: int | None = None) -> list[dict]:
    """Simulated summaries (flat) of `variant` at each Poisson rate, inputs drawn from the corpus:
    duration_s of arrivals, or a number of requests."""
    from servelab.bench.corpus import load_prompts
    from servelab.sim import Policy, simulate
    from servelab.sim.cli import poisson_arrivals
    from servelab.sim.replay import corpus_token_lengths, length_of
    from servelab.sim.summary import summarize

    tokens = corpus_token_lengths()
    population = [length_of(len(t.split()), tokens) for t in load_prompts()]
    policy = Policy.of_variant(variant, settings)
    out = []
    for rate in rates:
        arrivals, lengths = poisson_arrivals(rate, duration_s, requests, seed, population)
        summary = summarize(simulate(arrivals, lengths, policy, cal.cost, cal.http), slo_ms=100.0)
        out.append(flatten(summary) | {"offered_rate": rate, "variant": variant} | settings)
    return out


def errors_table(rows: list[dict]) -> list[dict]:
    """Per replayed point: measured and simulated rate and p50, and the simulation's error."""
    table = []
    for r in rows:
        line = {"variant": r["variant"], "offered_rate": round(r["offered_rate"], 1),
                "max_batch_size": r.get("max_batch_size"), "max_wait_ms": r.get("max_wait_ms")}
        for label, key in (("rate", "achieved_rate"), ("p50", "latency_ms.p50")):
            m, s = r.get(key), r.get(f"sim.{key}")
            line |= {f"{label} measured": m, f"{label} simulated": s,
                     f"{label} error": (s / m - 1) if m and s is not None else None}
        table.append(line)
    return table


def plot_sim_vs_measured(axes, rows: list[dict], curves: dict[str, list[dict]], colors: dict) -> None:
    """axes[0]: achieved rate, axes[1]: p50, against offered rate. Measured points as markers,
    their own replays as crosses, predicted curves (label -> flat summaries) as lines."""
    from servelab.notebook.plots import log_y

    for name, curve in curves.items():
        color = colors.get(name, "black")
        x = [c["offered_rate"] for c in curve]
        axes[0].plot(x, [c["achieved_rate"] or 0 for c in curve], "-", color=color, alpha=0.6,
                     label=f"{name}, simulated")
        axes[1].plot(x, [c["latency_ms.p50"] for c in curve], "-", color=color, alpha=0.6)
    for name in curves:
        mine = [r for r in rows if label(r) == name]
        color = colors.get(name, "black")
        x = [r["offered_rate"] for r in mine]
        axes[0].plot(x, [r["achieved_rate"] for r in mine], "o", color=color, label=f"{name}, measured")
        axes[0].plot(x, [r["sim.achieved_rate"] for r in mine], "x", color=color, ms=8)
        axes[1].plot(x, [r["latency_ms.p50"] for r in mine], "o", color=color)
        axes[1].plot(x, [r["sim.latency_ms.p50"] for r in mine], "x", color=color, ms=8)
    axes[0].set_ylabel("achieved rate (answers 200/s)")
    axes[1].set_ylabel("p50 latency (ms)")
    log_y(axes[1])
    for ax in axes:
        ax.set_xlabel("offered rate (requests/s, open loop)")
    axes[0].legend(fontsize=7, title="x: the same run, simulated", title_fontsize=7)


def label(row: dict) -> str:
    """The curve a point belongs to: its variant, and its cap and max wait where a sweep varied them."""
    out = row["variant"]
    if row.get("max_batch_size") not in (None, "-", ""):
        out += f" cap {int(row['max_batch_size'])}"
    if row.get("max_wait_ms") not in (None, "-", ""):
        out += f" wait {row['max_wait_ms']:g} ms"
    return out


def plot_cost_fit(ax, cal, color: str = "black", name: str = "") -> None:
    """The ceiling's time per batch against the fitted a + k*b*L (+ the device's wait)."""
    points = cal.data["ceiling"]["cost_model"]["points"]
    sizes = [p["batch_size"] for p in points]
    ax.plot(sizes, [p["seconds"] * 1000 for p in points], "o", color=color, label=f"{name} measured")
    ax.plot(sizes, [p["predicted_s"] * 1000 for p in points], "-", color=color, alpha=0.6,
            label=f"{name} fitted")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("time per pipeline call (ms)")
    ax.legend(fontsize=7)


def save_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def accelerator(device: str) -> str:
    """The device notebook 6 sets beside this CPU: a GPU where there is one (or where asked),
    else the emulated H200."""
    if device not in ("auto", "cpu"):
        return device
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "emulated:h200-bert-base"


def per_sequence_ms(cals: dict) -> list[dict]:
    """Per device: the fitted cost of one sequence alone and in a batch of 64, each at the mean
    padded length the ceiling's batches of that size had."""
    out = []
    for device, cal in cals.items():
        lengths = {r["batch_size"]: r["mean_padded_length"] for r in cal.data["ceiling"]["by_batch_size"]}
        alone = cal.cost.seconds(1, round(lengths[1])) * 1000
        batched = cal.cost.seconds(64, round(lengths[64])) / 64 * 1000
        out.append({"device": device, "a_ms": cal.cost.host.a * 1000, "k_us_per_token": cal.cost.host.k * 1e6,
                    "batch_1_ms": alone, "batch_64_ms": batched, "gain": alone / batched})
    return out


def curve_colors(curves: dict) -> dict:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {name: cmap(i) for i, name in enumerate(curves)}


def describe_error(line: dict) -> str:
    def pct(v):
        return "   -" if v is None else f"{v:+4.0%}"

    return (f"{label(line):>34} at {line['offered_rate']:7.1f}/s: "
            f"rate {line['rate measured']:7.1f} measured, "
            f"{line['rate simulated']:7.1f} simulated ({pct(line['rate error'])}); p50 "
            f"{line['p50 measured']:8.1f} vs {line['p50 simulated']:8.1f} ms ({pct(line['p50 error'])})")


def batching_gain(rows: list[dict]) -> str:
    """At the highest offered rate: the best cap's throughput over the cap-1 throughput."""
    top = max(r["offered_rate"] for r in rows)
    at_top = [r for r in rows if r["offered_rate"] == top]
    base = max((r for r in at_top if r.get("max_batch_size") == 1), key=lambda r: r["achieved_rate"])
    best = max(at_top, key=lambda r: r["achieved_rate"])
    return (f"at {top:.0f} req/s offered: cap 1 answered {base['achieved_rate']:.0f}/s, {label(best)} "
            f"{best['achieved_rate']:.0f}/s: "
            f"{best['achieved_rate'] / base['achieved_rate']:.1f}x, measured through HTTP "
            f"(simulated: {best['sim.achieved_rate'] / base['sim.achieved_rate']:.1f}x)")


def limit_rows(rows_by_device: dict[str, list[dict]], cals: dict) -> list[dict]:
    """Per measured point: how busy the model, the accelerator and the server's core were.
    The accelerator's share is estimated from the tokens the run computed (its profile's time
    for the mean padded batch, times the batches); the simulation's is exact for its model."""
    out = []
    for device, rows in rows_by_device.items():
        cal = cals[device]
        ceiling = cal.data["ceiling"]["ceiling_seq_per_s"]
        for r in rows:
            accel = None
            if cal.cost.device and r.get("batches") and r.get("span_s"):
                per_batch = cal.cost.device.forward_seconds(1, round(r["padded_tokens"] / r["batches"]))
                accel = per_batch * r["batches"] / r["span_s"]
            out.append({"device": device, "curve": label(r), "offered_rate": r["offered_rate"],
                        "offered_x": round(r["offered_rate"] / ceiling, 2),
                        "achieved_rate": r["achieved_rate"],
                        "model_busy_fraction": r.get("model_busy_fraction"),
                        "accelerator_busy_fraction": accel,
                        "server_cpu_share": r.get("server_cpu_share"),
                        "simulated_accelerator_busy": r.get("sim.device_busy_fraction")})
    return out


def plot_limits(axes, limits: list[dict], devices: list[str]) -> None:
    for ax, device in zip(axes, devices, strict=True):
        mine = [r for r in limits if r["device"] == device]
        for i, name in enumerate(sorted({r["curve"] for r in mine})):
            curve = sorted((r for r in mine if r["curve"] == name), key=lambda r: r["offered_rate"])
            x = [r["offered_rate"] for r in curve]
            color = f"C{i}"
            ax.plot(x, [r["server_cpu_share"] for r in curve], "s-", color=color,
                    label=f"{name}: server process CPU")
            ax.plot(x, [r["model_busy_fraction"] for r in curve], "o--", color=color,
                    label=f"{name}: in the pipeline")
            if any(r["accelerator_busy_fraction"] is not None for r in curve):
                ax.plot(x, [r["accelerator_busy_fraction"] for r in curve], "^:", color=color,
                        label=f"{name}: accelerator busy")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(device)
        ax.set_xlabel("offered rate (requests/s)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("fraction of the run's time (CPU: of one core)")


def describe_limit(row: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.0%}"

    return (f"{row['device']:>24} {row['curve']:>22} at {row['offered_x']}x: {row['achieved_rate']:7.1f}/s; "
            f"server process {pct(row['server_cpu_share'])} of a core, in the pipeline "
            f"{pct(row['model_busy_fraction'])} of the time, "
            f"accelerator busy {pct(row['accelerator_busy_fraction'])}")


def best_wait_by_load(cals: dict, waits_ms: list[float], loads: list[float],
                      requests: int = 20_000) -> list[dict]:
    """For each device (thread_offloaded, cap = the ceiling's best batch size, breaker off), the
    p99 at each max wait and load; load as a share of the capacity the simulator finds at 3x
    overload. One row per (device, load, wait), the best wait of each load flagged."""
    out = []
    for device, cal in cals.items():
        cap = cal.data["ceiling"]["best_batch_size"]
        base = {"max_batch_size": cap, "max_queue": 0, "queue_timeout_ms": 0}
        ceiling = cal.data["ceiling"]["ceiling_seq_per_s"]
        capacity = predict(cal, "thread_offloaded", base | {"max_wait_ms": 2}, [3 * ceiling],
                           requests=requests)[0]["achieved_rate"]
        for load in loads:
            rows = [predict(cal, "thread_offloaded", base | {"max_wait_ms": wait}, [load * capacity],
                            requests=requests)[0] | {"device": device, "load": load, "capacity": capacity}
                    for wait in waits_ms]
            best = min(rows, key=lambda r: r["latency_ms.p99"])
            out += [{k: r[k] for k in ("device", "load", "capacity", "max_wait_ms", "max_batch_size",
                                       "latency_ms.p50", "latency_ms.p99", "mean_batch_size")}
                    | {"best": r is best} for r in rows]
    return out


def plot_best_wait(axes, rows: list[dict], shown_waits=(0, 2, 10, 50)) -> None:
    """axes[0]: the wait with the lowest p99, by load; axes[1]: p99 by load for a few waits."""
    from servelab.notebook.plots import log_y

    styles = ["-", "--", "-.", ":"]
    for i, device in enumerate(dict.fromkeys(r["device"] for r in rows)):
        mine = [r for r in rows if r["device"] == device]
        best = [r for r in mine if r["best"]]
        color = f"C{i}"
        axes[0].plot([r["load"] for r in best], [r["max_wait_ms"] for r in best], "o-", color=color,
                     label=f"{device} (cap {best[0]['max_batch_size']})")
        for wait, style in zip(shown_waits, styles, strict=False):
            curve = [r for r in mine if r["max_wait_ms"] == wait]
            axes[1].plot([r["load"] for r in curve], [r["latency_ms.p99"] for r in curve], style, color=color,
                         marker="o", ms=3, label=f"{device}, max wait {wait} ms")
    axes[0].set_ylabel("max wait with the lowest p99 (ms)")
    axes[1].set_ylabel("p99 latency (ms)")
    log_y(axes[1])
    for ax in axes:
        ax.set_xlabel("load (share of the server's simulated capacity)")
        ax.legend(fontsize=7)
    axes[0].set_title("The best --max-wait-ms, by load (simulated)")
    axes[1].set_title("p99 by load, for a few waits (simulated)")
