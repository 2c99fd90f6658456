# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Circuit breaking: say no early
#
# When more requests arrive than the model can compute, the queue grows, and every request
# waits for all those ahead of it. Without a limit, latency grows for as long as the overload
# lasts and stays high until the backlog drains: everyone is served, too late. The guide's
# advice: answer with a proper error instead, **503** at once when the queue is too long, or
# **504** after too long a wait. Our servers take two flags:
#
# - `--max-queue N`: a request arriving while N requests wait gets 503 at once (with `Retry-After`);
# - `--queue-timeout-ms T`: a request not started within T ms gets 504 at that moment, and is
#   never computed (nobody is waiting for it any more).
#
# Both on `thread_offloaded` (the breaker needs a free event loop to answer, see notebook 3),
# where they are on by default; `0` turns either off. *Goodput* counts only the answers that
# arrive within the latency objective (`SLO_MS`).

# %%
from servelab import notebook as nb

nb.banner();

# %% tags=["parameters"]
import os
from pathlib import Path

QUICK = os.environ.get("SERVELAB_QUICK", "1") == "1"  # quick: a smoke run of a few seconds per step
DEVICE = os.environ.get("SERVELAB_DEVICE", "auto")  # cpu, cuda, or emulated:h200-bert-base (an emulated accelerator, see servelab/emulated.py)
RESULTS = Path(os.environ.get("SERVELAB_RESULTS", "../results/notebooks"))
REUSE_SWEEPS = False  # True: keep the points already measured in this results folder

# %%
import matplotlib.pyplot as plt

from servelab.bench import Load, Setup, run, sweep

OUT = nb.setup(RESULTS, "04_circuit_breaking")
SLO_MS = 1500  # goodput: answers within 1.5 s (the objective of a slow, one-core CPU server)
OFF = 0  # --max-queue 0: no queue limit; --queue-timeout-ms 0: no timeout
BREAKER = {}  # thread_offloaded's own defaults: its breaker is on
NO_BREAKER = {"max_queue": OFF, "queue_timeout_ms": OFF}
SPIKE = {"factor": 3, "spike_before_s": 2, "spike_s": 4, "spike_after_s": 4} if QUICK else \
        {"factor": 3, "spike_before_s": 10, "spike_s": 10, "spike_after_s": 20}
OVERLOAD = "2x"  # the curves' open-loop rate, as a multiple of the ceiling
CURVE_DURATION_S = 2 if QUICK else 8
QUEUE_LIMITS = [16, OFF] if QUICK else [4, 16, 64, 256, OFF]
QUEUE_TIMEOUTS_MS = [500, OFF] if QUICK else [100, 300, 1000, 3000, OFF]
print(f"quick={QUICK}, device={DEVICE}; results in {OUT}")

# %%
ceiling = nb.ceiling(RESULTS, QUICK, device=DEVICE)
CEILING = ceiling["ceiling_seq_per_s"]
MEASURED_ON = ceiling["model"]["device"]  # what DEVICE "auto" became, for the figures
SETUP = Setup(slo_ms=SLO_MS, ceiling=nb.reference(ceiling), results_dir=RESULTS,
              bracket_seconds=0.5 if QUICK else 2.0)

# %% [markdown]
# ## A spike, with and without the breaker
#
# Open-loop Poisson arrivals at half the ceiling, then 3x the ceiling for a few seconds, then
# half again (`Load.spike`, Locust scenario `spike`). The same server, once as shipped (breaker
# on, settings printed below), once with `--max-queue 0 --queue-timeout-ms 0` (breaker off).

# %%
spike = Load.spike(capacity_rate=CEILING, **SPIKE)
runs = {}
for name, args in {"breaker": BREAKER, "no breaker": NO_BREAKER}.items():
    result = run("thread_offloaded", {**args, "device": DEVICE}, spike, SETUP, tag=name.replace(" ", "_"),
                 progress=None)
    runs[name] = result
    s = result.summary
    settings = result.manifest["server"]["info"]["settings"]
    print(f"{name:10}: --max-queue {settings['max_queue']} "
          f"--queue-timeout-ms {settings['queue_timeout_ms']:g}")
    print(f"{'':10}  {s['requests']} requests, {s['ok']} answered 200 (p99 {s['latency_ms']['p99']:.0f} ms), "
          f"goodput {s['goodput_fraction']:.0%} within {SLO_MS} ms, errors {s['errors_by_status']}")

timelines = {name: nb.per_second(r.requests(), SLO_MS) for name, r in runs.items()}
nb.write_csv(OUT / "spike_per_second.csv",
             [{"setup": name, **row} for name, rows in timelines.items() for row in rows])

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
window = (SPIKE["spike_before_s"], SPIKE["spike_before_s"] + SPIKE["spike_s"])
nb.plot_over_time(axes, timelines, SLO_MS, spike=window)
axes[0].axhline(CEILING, color="red", ls="--", lw=1, label=f"offline ceiling {CEILING:.0f}/s")
axes[0].legend(fontsize=7)
fig.suptitle(f"thread_offloaded on {MEASURED_ON} under a {SPIKE['factor']}x spike (shaded), "
             "by the second each request was due")
fig.tight_layout()
nb.save(fig, OUT, "spike_over_time")
plt.show()

# %% [markdown]
# How long until the p99 of the successful requests is back under the objective after the
# spike, and what each setup gave:

# %%
for name, rows in timelines.items():
    s = runs[name].summary
    back = nb.recovered_after(rows, window[1], SLO_MS)
    recovery = f"p99 back within the SLO {back:.0f} s after the spike" if back is not None else \
        "p99 not back within the SLO before the end"
    print(f"{name:10}: goodput {s['goodput_rate']:.1f}/s over the run, {recovery}; "
          f"503: {s['errors_by_status'].get('503', 0)}, 504: {s['errors_by_status'].get('504', 0)}")

# %% [markdown]
# Without the breaker the server computes everything it accepted, so every request that came
# during and after the spike waits behind the backlog, and the latency stays high long after
# the spike is over. With it, the excess is refused as it arrives (503 at once when the queue is
# full, 504 when a request has waited the queue timeout): the requests the server does take wait at most about the timeout
# plus one batch, and latency falls back as soon as the spike ends.
#
# ## The breaker's settings against goodput
#
# Steady overload (open loop at `OVERLOAD` x the ceiling) for each queue limit (no timeout),
# then for each queue timeout (no queue limit). "off" is the no-breaker point; one server start
# per setting.

# %%
points_csv = nb.fresh(OUT / "breaker_curves.csv", REUSE_SWEEPS)
common = {"duration_s": CURVE_DURATION_S, "out": points_csv, "server_args": {"device": DEVICE},
          "progress_bar": False, "progress": None}
sweep(["thread_offloaded"], {"max_queue": QUEUE_LIMITS, "queue_timeout_ms": [OFF]}, [OVERLOAD], SETUP, **common)
sweep(["thread_offloaded"], {"max_queue": [OFF], "queue_timeout_ms": QUEUE_TIMEOUTS_MS}, [OVERLOAD], SETUP,
      **common)
points = nb.read_csv(points_csv)
assert not [p for p in points if p.get("failed")], [p["failed"] for p in points if p.get("failed")]

by_queue = [p for p in points if p["queue_timeout_ms"] == OFF]
by_timeout = [p for p in points if p["max_queue"] == OFF]
fig, axes = plt.subplots(2, 2, figsize=(13, 7))
nb.plot_breaker_curve(axes[0], by_queue, "max_queue", "--max-queue (no queue timeout)", off_value=OFF)
nb.plot_breaker_curve(axes[1], by_timeout, "queue_timeout_ms", "--queue-timeout-ms (no queue limit)",
                      off_value=OFF)
offered = points[0]["offered_rate"]
for ax in axes[:, 0]:
    ax.axhline(CEILING, color="red", ls="--", lw=1, label=f"offline ceiling {CEILING:.0f}/s")
    ax.legend(fontsize=7)
fig.suptitle(f"thread_offloaded on {MEASURED_ON} at {offered:.0f} req/s offered ({OVERLOAD} the ceiling), "
             f"{CURVE_DURATION_S} s each; goodput = 200 within {SLO_MS} ms")
fig.tight_layout()
nb.save(fig, OUT, "breaker_curves")
plt.show()

off_point = next(p for p in points if p["max_queue"] == OFF and p["queue_timeout_ms"] == OFF)
best = max(points, key=lambda p: p["goodput_rate"] or 0)
def setting(value):
    return "off" if value == OFF else f"{value:g}"


print(f"no breaker: goodput {off_point['goodput_rate']:.1f}/s ({off_point['goodput_fraction']:.0%} of "
      f"requests), p99 of 200s {off_point['latency_ms.p99']:.0f} ms")
print(f"best: --max-queue {setting(best['max_queue'])} --queue-timeout-ms {setting(best['queue_timeout_ms'])}"
      f": goodput {best['goodput_rate']:.1f}/s ({best['goodput_fraction']:.0%}), "
      f"p99 of 200s {best['latency_ms.p99']:.0f} ms")

# %% [markdown]
# Reading the curves:
#
# - A **queue limit** bounds the wait to about `max_queue / service rate`; past the point where
#   that wait exceeds the objective, a longer queue only turns timely answers into late ones.
#   Its refusals cost the server nothing: 503 comes before any work.
# - A **queue timeout** bounds the wait directly, whatever the service rate, but a request it
#   expires has held a queue slot until then, and its client learns only after T ms.
# - Both together (as in `thread_offloaded`'s defaults) give the fast refusal and the hard
#   bound. Choose the timeout from the latency objective minus a batch's compute time,
#   and the queue limit from about the number of requests the server completes in that time.
# - A 503 with `Retry-After` is an answer a client can act on (back off, try another replica);
#   a request that waits 20 s is not.
