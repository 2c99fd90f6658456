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
# # 3. Blocking the event loop
#
# The guide warns: PyTorch is not async-aware, so a pipeline call made from the event loop
# blocks it. While one inference runs, the server cannot read a request, answer `/health`, or
# even send an error. It matters when one call is long (the guide says more than about 1 s),
# and a batch is one long call.
#
# Three servers get the same burst of long inputs (one big batch for the batching variants):
#
# - `naive`: one pipeline call per request, on the event loop;
# - `capped_batch`: one call per batch, on the event loop;
# - `thread_offloaded`: the same batch, run in a worker thread (`asyncio.to_thread`).
#
# Meanwhile we probe `/health` every 20 ms, send one bad request (an empty body, which any
# server should refuse at once with 400) in the middle of the batch, and read the event-loop lag
# the server measures itself (`servelab_event_loop_lag_seconds` in `/metrics`: how late a 50 ms
# timer fires).

# %%
from servelab import notebook as nb

nb.banner();

# %% tags=["parameters"]
import os
from pathlib import Path

QUICK = os.environ.get("SERVELAB_QUICK", "1") == "1"  # quick: a smoke run of a few seconds per step
DEVICE = os.environ.get("SERVELAB_DEVICE", "auto")  # cpu, cuda, or emulated:h200-bert-base (an emulated accelerator, see servelab/emulated.py)
RESULTS = Path(os.environ.get("SERVELAB_RESULTS", "../results/notebooks"))

# %%
import time

import matplotlib.pyplot as plt

from servelab.process import ServerProcess

OUT = nb.setup(RESULTS, "03_blocking_the_event_loop")
BURSTS = [16] if QUICK else [8, 16, 32]  # requests sent at once; the last burst is drawn over time
WORDS = 200  # words per input: about 256 tokens, where MiniLM truncates
BAD_REQUEST_AT_S = 0.3  # the empty body goes out this long after the burst
PROBE_PERIOD_S = 0.02
BATCHING = {"max_batch_size": 64, "max_wait_ms": 100}  # a whole burst becomes one batch
VARIANTS = {"naive": {}, "capped_batch": BATCHING, "thread_offloaded": BATCHING}
print(f"quick={QUICK}, device={DEVICE}; results in {OUT}")

# %%
samples, summary, traces = [], [], {}

for variant, args in VARIANTS.items():
    trace = OUT / f"trace_{variant}.jsonl"
    trace.unlink(missing_ok=True)
    with ServerProcess(variant, {**args, "trace": trace, "device": DEVICE}, log=OUT / f"{variant}.log",
                       cores=[0], torch_threads=1) as server:
        MEASURED_ON = server.info["model"]["device"]  # what DEVICE "auto" became, for the figures
        for burst in BURSTS:
            bodies = nb.long_inputs(burst, WORDS, seed=burst)
            nb.send_schedule(server.url, bodies, [0.0] * burst)  # warm-up: a new shape is slow once
            nb.clear(trace)
            before = server.metrics_text()
            with nb.Prober(server.url, period_s=PROBE_PERIOD_S) as probe:
                time.sleep(0.1)
                answers = nb.send_schedule(server.url, [*bodies, b""], [0.0] * burst + [BAD_REQUEST_AT_S])
                time.sleep(0.1)
            after = server.metrics_text()
            batches = nb.read_trace(trace)
            bad = answers[-1]
            assert bad["status"] == 400 and all(a["status"] == 200 for a in answers[:-1]), answers
            t0 = min(a["sent"] for a in answers)
            lag = nb.lag(before, after)
            during = [s for s in probe.samples if s["sent"] >= t0]  # probes sent from the burst on
            summary.append({
                "variant": variant, "burst": burst, "batches": len(batches),
                "longest_call_ms": max(b["compute_end"] - b["compute_start"] for b in batches) * 1000,
                "compute_total_ms": sum(b["compute_end"] - b["compute_start"] for b in batches) * 1000,
                "burst_done_ms": (max(a["answered"] for a in answers[:-1]) - t0) * 1000,
                "health_max_ms": max(s["latency_ms"] for s in during),
                "health_p50_ms": nb.percentile([s["latency_ms"] for s in during], 50),
                "bad_request_ms": bad["latency_ms"],
                "loop_lag_total_ms": lag["total_lag_s"] * 1000,
                "loop_lag_longest_ms_up_to": lag["longest_lag_s_between"][1] * 1000,
            })
            samples += [{"variant": variant, "burst": burst, "t_ms": (s["sent"] - t0) * 1000,
                         "health_latency_ms": s["latency_ms"], "status": s["status"]} for s in probe.samples]
            traces[variant] = (t0, batches, bad)
    print(f"{variant}: done")

nb.write_csv(OUT / "health_samples.csv", samples)
nb.write_csv(OUT / "summary.csv", summary)

# %%
burst = BURSTS[-1]
fig, axes = plt.subplots(len(VARIANTS), 1, figsize=(11, 2.2 * len(VARIANTS)), sharex=True)
nb.plot_health_during(axes, traces, [s for s in samples if s["burst"] == burst])
axes[-1].set_xlabel(f"time since a burst of {burst} inputs of {WORDS} words was sent (ms)")
fig.tight_layout()
nb.save(fig, OUT, "health_during_batch")
plt.show()

# %% [markdown]
# Each dot is one `/health` request, drawn at the time it was sent; the shaded spans are the
# pipeline calls from the server's trace. A server whose model runs on the event loop answers
# nothing while a call runs. Nor, necessarily, between calls: `await queue.get()` on a queue
# that holds items returns at once without letting the loop run, so a worker with a backlog
# keeps the loop to itself from one call to the next unless it yields on purpose
# (`await asyncio.sleep(0)`). The next figure puts every burst on one chart: the slowest
# `/health` and the time to the 400 against the pipeline time of the whole burst.

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
nb.plot_blocking(ax, summary)
ax.set_title(f"What waits while the model computes a burst, on {MEASURED_ON}")
nb.save(fig, OUT, "blocked_vs_compute")
plt.show()

for r in summary:
    print(f"{r['variant']:16} burst {r['burst']:3d}: {r['batches']:2d} calls, "
          f"longest {r['longest_call_ms']:5.0f} ms, total {r['compute_total_ms']:5.0f} ms; "
          f"slowest /health {r['health_max_ms']:5.0f} ms, 400 after {r['bad_request_ms']:5.0f} ms, "
          f"longest loop stall <= {r['loop_lag_longest_ms_up_to']:5.0f} ms")

# %% [markdown]
# What the numbers say, computed from the largest burst:

# %%
by = {r["variant"]: r for r in summary if r["burst"] == burst}
blocked, offloaded = by["capped_batch"], by["thread_offloaded"]
print(f"While a {blocked['longest_call_ms']:.0f} ms batch ran on the event loop (capped_batch), the empty "
      f"request got its 400 after {blocked['bad_request_ms']:.0f} ms and /health took up to "
      f"{blocked['health_max_ms']:.0f} ms.")
print(f"With the batch in a thread (thread_offloaded), the 400 came after "
      f"{offloaded['bad_request_ms']:.0f} ms and /health took at most {offloaded['health_max_ms']:.0f} ms.")
naive = by["naive"]
turns = "did not get a turn" if naive["health_max_ms"] > 2 * naive["longest_call_ms"] else "got a turn"
print(f"naive calls the model once per request ({naive['batches']} calls of at most "
      f"{naive['longest_call_ms']:.0f} ms): the loop {turns} between calls, and /health waited up to "
      f"{naive['health_max_ms']:.0f} ms.")
ratio = offloaded["burst_done_ms"] / blocked["burst_done_ms"]
cost = ("slower: the loop thread and the compute thread share one core and the GIL" if ratio > 1.05
        else "about as fast")
print(f"The whole burst was answered in {offloaded['burst_done_ms']:.0f} ms with the thread vs "
      f"{blocked['burst_done_ms']:.0f} ms on the loop ({ratio:.2f}x): {cost}.")

# %% [markdown]
# Why it matters beyond `/health`: a load balancer that probes a blocked server sees it as dead;
# new requests cannot be queued, so the circuit breaker of the next notebook cannot refuse
# them, and queue timeouts cannot fire, until the call ends. Running the pipeline in a thread is
# enough because torch releases the GIL while it computes; for work that holds the GIL (heavy
# pre- or post-processing in Python) a separate process is the next step.
