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
# # 2. Dynamic batching: wait a little, compute many at once
#
# The guide's second idea: since one worker takes requests off a queue, it can take *several*
# and run them as one pipeline call. Three variants do it, one fix at a time:
#
# | variant | a batch closes when | the guide's words |
# |---|---|---|
# | `per_get_timeout` | no request came for `--max-wait-ms` (the wait restarts after each one) | the pseudo-code as written |
# | `deadline` | `--max-wait-ms` after its first request was taken | "better: one deadline" |
# | `capped_batch` | the deadline, or `--max-batch-size` requests, whichever first | "no limit on batch size" fixed |
#
# This notebook measures what each closing rule does to the first request's wait, to the batch
# sizes and to throughput and latency, against the **offline ceiling**: the bare pipeline's best
# throughput on the same core, with no HTTP at all (`python -m servelab ceiling`).

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

from servelab.bench import Bench, Load, Setup, sweep

OUT = nb.setup(RESULTS, "02_dynamic_batching")
MAX_WAIT_MS = 10  # the same wait for the three variants
MAX_BATCH_SIZE = 16  # capped_batch's cap
TRICKLE = {"requests": 40, "gap_ms": 3, "times": 1 if QUICK else 3}  # a request every 3 ms
LOAD_DURATION_S = 2 if QUICK else 10
SWEEP_DURATION_S = 2 if QUICK else 6
# Trade-off grid on capped_batch: a cap of 1 is the no-batching baseline.
GRIDS = [{"max_wait_ms": [MAX_WAIT_MS], "max_batch_size": [1]}] + (
    [{"max_wait_ms": [MAX_WAIT_MS], "max_batch_size": [32]}] if QUICK
    else [{"max_wait_ms": [2, 20], "max_batch_size": [8, 64]}]
)
SWEEP_RATES = ["0.3x", "1.5x"] if QUICK else ["0.25x", "0.5x", "0.75x", "1x", "1.5x"]
print(f"quick={QUICK}, device={DEVICE}; results in {OUT}")

# %% [markdown]
# ## The ceiling: what batching can give at most on this machine
#
# The server gets one core and one torch thread; the load generator gets the other core.
# The same model on the same core, called directly with batches of growing size:

# %%
ceiling = nb.ceiling(RESULTS, QUICK, device=DEVICE)
CEILING = ceiling["ceiling_seq_per_s"]
MEASURED_ON = ceiling["model"]["device"]  # what DEVICE "auto" became, for the figures
# Every load below is judged against quick ceilings timed just before and after it (the bracket).
SETUP = Setup(ceiling=nb.reference(ceiling), results_dir=RESULTS, bracket_seconds=0.5 if QUICK else 2.0)
nb.write_csv(OUT / "ceiling_by_batch.csv", ceiling["by_batch_size"])

fig, ax = plt.subplots(figsize=(7, 3.5))
nb.plot_ceiling_by_batch(ax, ceiling)
ax.set_title(f"Offline pipeline, {ceiling['model']['id']} on {MEASURED_ON}, 1 core, 1 torch thread")
nb.save(fig, OUT, "ceiling_by_batch")
plt.show()
batch1 = ceiling["by_batch_size"][0]["seq_per_s"]
print(f"batch 1: {batch1:.0f} seq/s; best: {CEILING:.0f} seq/s at batch {ceiling['best_batch_size']} "
      f"= {CEILING / batch1:.1f}x batch 1. That ratio is all that batching can add on this core.")

# %% [markdown]
# On a GPU the same curve climbs much further (reference: BERT-base on an H200 does 194 seq/s at
# batch 1 and 2,767 at batch 256, 14x); on one CPU core a single sequence already keeps the core
# busy, and batching mostly saves the per-call overhead.
#
# ## The first request's wait
#
# A trickle: one request every 3 ms, 40 in a row, then silence; all three servers with
# `--max-wait-ms 10`. Each server writes a trace (`--trace FILE`: one JSON line per batch with
# every request's arrival), and the timeline below is drawn from it. Light bar: the batch is
# collecting; dark bar: the model computes it (the event loop is blocked meanwhile, so arrivals
# wait in the socket and join the next batch at once).

# %%
VARIANTS = {
    "per_get_timeout": {"max_wait_ms": MAX_WAIT_MS},
    "deadline": {"max_wait_ms": MAX_WAIT_MS},
    "capped_batch": {"max_wait_ms": MAX_WAIT_MS, "max_batch_size": MAX_BATCH_SIZE},
}
bodies = nb.long_inputs(TRICKLE["requests"], 12)
offsets = [i * TRICKLE["gap_ms"] / 1000 for i in range(TRICKLE["requests"])]
trickle_batches, load_batches, summaries = {}, {}, {}

for variant, args in VARIANTS.items():
    trace = OUT / f"trace_{variant}.jsonl"
    trace.unlink(missing_ok=True)
    with Bench(variant, {**args, "trace": trace, "device": DEVICE}, SETUP, log_dir=OUT / variant,
               progress=None) as bench:
        trickles = []
        for _ in range(TRICKLE["times"]):
            nb.clear(trace)  # drop the warm-up's (and the previous trickle's) batches
            answers = nb.send_schedule(bench.server.url, bodies, offsets)
            assert all(a["status"] == 200 for a in answers)
            trickles.append(nb.read_trace(trace))
        trickle_batches[variant] = trickles
        # The same server under open-loop Poisson load at the ceiling rate.
        nb.clear(trace)
        load = Load.open(rate=CEILING, duration_s=LOAD_DURATION_S)
        summaries[variant] = bench.measure(load, OUT / "runs" / variant)
        load_batches[variant] = nb.read_trace(trace)
    print(f"{variant}: done")

rows = []
for variant, trickles in trickle_batches.items():
    for k, batches in enumerate(trickles):
        for b, wait in zip(batches, nb.first_waits_ms(batches), strict=True):
            rows.append({"variant": variant, "trickle": k, "batch": b["batch"], "size": b["size"],
                         "close_reason": b["close_reason"], "first_request_wait_ms": round(wait, 2),
                         "compute_ms": round((b["compute_end"] - b["compute_start"]) * 1000, 2)})
nb.write_csv(OUT / "trickle_batches.csv", rows)

# %%
fig, ax = plt.subplots(figsize=(11, 3))
timeline = [(v, t[-1], t[-1][0]["requests"][0]["arrived"], nb.COLORS[v]) for v, t in trickle_batches.items()]
span_s = max(max(b["compute_end"] for b in batches) - t0 for _, batches, t0, _ in timeline)
nb.plot_timelines(ax, timeline, span_s * 1.05)
ax.set_xlabel("time since the trickle's first request arrived (ms)")
ax.set_title(f"{TRICKLE['requests']} requests, one every {TRICKLE['gap_ms']} ms; "
             f"--max-wait-ms {MAX_WAIT_MS}; on {MEASURED_ON}")
nb.timeline_legend(ax)
nb.save(fig, OUT, "trickle_timeline")
plt.show()

for variant, trickles in trickle_batches.items():
    first = [nb.first_waits_ms(batches)[0] for batches in trickles]
    print(f"{variant:16} the trickle's first request waited {', '.join(f'{w:.0f}' for w in first)} ms "
          f"for its batch to close; batch sizes {[b['size'] for b in trickles[-1]]}")

# %% [markdown]
# With the per-get timeout every arrival restarts the 10 ms wait, so the first request waits
# for the whole trickle, however long it lasts. With one deadline the first batch closes 10 ms
# after its first request; `capped_batch` also never lets a batch grow past its cap.
#
# ## Batch sizes and a per-batch timeline under load
#
# The same three servers under open-loop Poisson arrivals at the ceiling rate (requests are
# sent on schedule whatever the answers, as real clients do).

# %%
sizes = {v: [b["size"] for b in batches] for v, batches in load_batches.items()}
nb.write_csv(OUT / "load_batch_sizes.csv",
             [{"variant": v, "batch": b["batch"], "size": b["size"], "close_reason": b["close_reason"],
               "compute_ms": round((b["compute_end"] - b["compute_start"]) * 1000, 2)}
              for v, batches in load_batches.items() for b in batches])

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
nb.plot_batch_sizes(ax1, sizes)
ax1.set_title(f"Batch sizes at {CEILING:.0f} req/s offered, on {MEASURED_ON}")
window_s = 1.0
timeline = []
for v, batches in load_batches.items():
    middle = batches[0]["opened"] + (batches[-1]["compute_end"] - batches[0]["opened"]) / 2
    timeline.append((v, batches, middle, nb.COLORS[v]))
nb.plot_timelines(ax2, timeline, window_s)
ax2.set_xlabel("time within a 1 s window in the middle of the run (ms)")
ax2.set_title("Per-batch timeline from the --trace files")
nb.timeline_legend(ax2)
nb.save(fig, OUT, "load_batches")
plt.show()

for v, s in summaries.items():
    print(f"{v:16} mean batch {sum(sizes[v]) / len(sizes[v]):5.1f}, largest {max(sizes[v]):3d}; "
          f"achieved {s['achieved_rate']:.1f}/s of {s['offered_rate']:.1f} offered; "
          f"p50 {s['latency_ms']['p50']:.0f} ms, p99 {s['latency_ms']['p99']:.0f} ms")

# %% [markdown]
# ## Trade-off: throughput and latency against offered load
#
# `capped_batch` over a grid of `--max-wait-ms` x `--max-batch-size`, each at several open-loop
# rates (given as multiples of the ceiling). `--max-batch-size 1` is the no-batching baseline.
# One server start per setting; one run folder and one CSV row per point (`servelab.bench.sweep`).

# %%
points_csv = nb.fresh(OUT / "tradeoff.csv", REUSE_SWEEPS)
for grid in GRIDS:
    sweep(["capped_batch"], grid, SWEEP_RATES, SETUP, duration_s=SWEEP_DURATION_S, out=points_csv,
          server_args={"device": DEVICE}, progress_bar=False, progress=None)
points = nb.read_csv(points_csv)
assert not [p for p in points if p.get("failed")], [p["failed"] for p in points if p.get("failed")]

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
nb.plot_tradeoff(axes, points, CEILING)
fig.suptitle(f"capped_batch on {MEASURED_ON}: throughput and latency vs offered load (open loop, Poisson)")
fig.tight_layout()
nb.save(fig, OUT, "tradeoff")
plt.show()

top = max(p["offered_rate"] for p in points)
at_top = {(p["max_wait_ms"], p["max_batch_size"]): p for p in points if p["offered_rate"] == top}
baseline = next(p for k, p in at_top.items() if k[1] == 1)
best_key, best = max(at_top.items(), key=lambda kv: kv[1]["achieved_rate"] or 0)
print(f"at {top:.0f} req/s offered: without batching {baseline['achieved_rate']:.1f}/s answered; "
      f"best setting (max_wait_ms {best_key[0]:g}, max_batch_size {best_key[1]:g}) "
      f"{best['achieved_rate']:.1f}/s = {best['achieved_rate'] / baseline['achieved_rate']:.2f}x, "
      f"{best['ceiling_ratio']:.0%} of the offline ceiling timed around that point"
      f"{' (' + nb.ABOVE_NOTE + ')' if best['above_ceiling'] else ''}.")

# %% [markdown]
# ## When batching does not pay
#
# Batching trades latency for throughput. Below the no-batching capacity it cannot raise
# throughput (every request is answered either way), and a lone request may wait up to
# `--max-wait-ms` for company that does not come; only short bursts still gain. Nor can it beat
# the offline curve above: where one sequence already keeps the hardware busy, as on a CPU core,
# the gain is the per-call overhead saved, not more arithmetic per second. The numbers, at the
# lowest offered load:

# %%
low = min(p["offered_rate"] for p in points)
at_low = sorted((p for p in points if p["offered_rate"] == low),
                key=lambda p: (p["max_batch_size"], p["max_wait_ms"]))
for p in at_low:
    print(f"max_wait_ms {p['max_wait_ms']:4g}, max_batch_size {p['max_batch_size']:3g}: "
          f"achieved {p['achieved_rate']:5.1f}/s, p50 {p['latency_ms.p50']:6.1f} ms, "
          f"p99 {p['latency_ms.p99']:6.1f} ms, mean batch {p['mean_batch_size']:.2f}")
low_base = next(p for p in points if p["offered_rate"] == low and p["max_batch_size"] == 1)
worst = max((p for p in points if p["offered_rate"] == low), key=lambda p: p["latency_ms.p50"])
print(f"at {low:.0f} req/s the largest p50 was {worst['latency_ms.p50']:.1f} ms (max_wait_ms "
      f"{worst['max_wait_ms']:g}, max_batch_size {worst['max_batch_size']:g}) against "
      f"{low_base['latency_ms.p50']:.1f} ms without batching; throughput {worst['achieved_rate']:.1f}/s "
      f"vs {low_base['achieved_rate']:.1f}/s.")

# %% [markdown]
# Rules of thumb that the figures support:
#
# - Batch when the load comes near the no-batching capacity; below it, keep `--max-wait-ms`
#   small (a few ms), since every lone request may wait that long.
# - Bound the wait from the *first* request (one deadline), never per get.
# - Cap the batch near where the offline curve stops rising: a bigger batch only adds padding,
#   memory and the time everyone in it waits for the slowest.
# - How much batching gives depends on the hardware: the offline curve says it before any server
#   runs. On a GPU (the guide's case, and BLOOM's) it is the difference between serving and not.
