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
# # 6. The physics of dynamic batching
#
# Notebooks 2 to 5 measured what batching does on this CPU, where it does little: one sequence
# already keeps a core busy. On a GPU the same policies behave very differently, and most
# learners have no GPU at hand. This notebook shows both, from one small model of the costs:
#
# - **The cost model.** A pipeline call on a batch of `b` inputs padded to `L` tokens takes
#   `t(b, L) = a + k·b·L` of this CPU's time (a fixed cost `a`, a cost `k` per padded token),
#   plus, on an accelerator, the device's own time for the forward pass, during which the CPU
#   and the GIL are free. `python -m servelab ceiling` fits `a` and `k`.
# - **The HTTP path**: what each request costs the server's one core outside the model (parse,
#   queue, answer, JSON), measured from a run at batch 1.
# - **An emulated accelerator** (`--device emulated:h200-bert-base`, `servelab/emulated.py`): the
#   real pipeline and servers on this CPU, with only the forward pass replaced by a wait as long
#   as an H200 takes for that batch's shape.
# - **A simulator** (`servelab/sim/`): the variants' batching policies and circuit breaker,
#   replayed request by request with those costs. It predicts a run in milliseconds; here it
#   is checked against the measured runs, point by point.

# %%
from servelab import notebook as nb

nb.banner();

# %% tags=["parameters"]
import os
from pathlib import Path

QUICK = os.environ.get("SERVELAB_QUICK", "1") == "1"  # quick: a smoke run of a few seconds per step
DEVICE = os.environ.get("SERVELAB_DEVICE", "auto")  # the accelerator beside this CPU: cuda, emulated:NAME; auto = cuda if there is one, else the emulated H200
RESULTS = Path(os.environ.get("SERVELAB_RESULTS", "../results/notebooks"))
REUSE_SWEEPS = False  # True: keep the points already measured in this results folder

# %%
import matplotlib.pyplot as plt

from servelab.bench import Setup, sweep
from servelab.notebook import simulation as sim

OUT = nb.setup(RESULTS, "06_physics_of_batching")
HOST = "cpu"  # this machine, the reference every earlier notebook measured
ACCELERATOR = sim.accelerator(DEVICE)
VARIANTS = ["capped_batch", "thread_offloaded"]  # with their own defaults (cap 16; breaker on in the second)
LOADS = [0.5, 2.0] if QUICK else [0.25, 0.5, 1.0, 2.0]  # offered rates, x the device's ceiling
DURATION_S = 2 if QUICK else 10
# thread_offloaded over max-wait x cap on the accelerator: a cap of 1 is the no-batching baseline.
GRID = ({"max_wait_ms": [2], "max_batch_size": [1, 64]} if QUICK
        else {"max_wait_ms": [1, 5], "max_batch_size": [1, 16, 64]})
print(f"quick={QUICK}; this CPU beside {ACCELERATOR}; results in {OUT}")

# %% [markdown]
# ## 1. The cost model, and what `a` and `k` say about when batching pays
#
# Each device is calibrated once per results folder (about two minutes,
# `servelab/sim/calibration.py`). The offline ceiling, with the mean padded length of its
# batches, gives `a` and `k`. Five short runs give the server's own work outside the pipeline:
# three saturated runs of `capped_batch` (caps 1 and 16, a small and a large overload) split the
# part of their span the pipeline did not use into work per batch, per answer and per 503;
# a saturated `thread_offloaded` run gives what handing a batch to a thread and back costs; and
# a light-load run gives what a request's latency holds beyond all that (the client's own time,
# and an idle core that computes slower than a hot loop).

# %%
cal = {HOST: sim.calibration(RESULTS, QUICK, HOST), ACCELERATOR: sim.calibration(RESULTS, QUICK, ACCELERATOR)}
for c in cal.values():
    print(sim.describe(c))

fig, ax = plt.subplots(figsize=(7, 4))
for (device, c), color in zip(cal.items(), ["tab:blue", "tab:red"], strict=True):
    sim.plot_cost_fit(ax, c, color, device)
ax.set_title("Time per pipeline call: the ceiling's batches against the fit")
nb.save(fig, OUT, "cost_model")
plt.show()

per_sequence = sim.per_sequence_ms(cal)
nb.write_csv(OUT / "per_sequence_cost.csv", per_sequence)
for row in per_sequence:
    print(f"{row['device']:>26}: {row['batch_1_ms']:6.2f} ms per sequence alone, "
          f"{row['batch_64_ms']:6.2f} ms each in a batch of 64: batching can give at most "
          f"{row['gain']:.1f}x")

# %% [markdown]
# Per sequence, a batch of `b` costs `a/b + k·L` (+ the device's time over `b`). Batching
# spreads `a` and the device's launch floor over the batch; it cannot touch `k·L`, and padding
# makes `L` grow with `b` (a batch pads to its longest input). On this CPU `k·L` is about as
# large as `a` already at batch 1: batching can at most halve the cost per sequence, and the
# padding of big batches eats part of that. On the H200 the forward pass costs about the same
# from 1 to 16 sequences (kernel launches, not arithmetic, set its time), so a batch of 64 is
# an order of magnitude cheaper per sequence. What is left is this CPU's own work per request:
# tokenizing, post-processing and HTTP, which no accelerator speeds up.
#
# ## 2. Simulated against measured, on this CPU
#
# Both variants, with their own defaults, under open-loop Poisson load at several multiples of
# the ceiling. Each run is then simulated with its own arrivals (the sends Locust actually
# made), its own inputs (by length) and its server's settings. The lines are the simulator's
# prediction over a fine grid of rates; the crosses are each measured run replayed.

# %%
def measure_and_replay(device: str, variants: list[str], grid: dict, name: str) -> list[dict]:
    """Sweep `variants` x `grid` at LOADS on `device`, then replay every point in simulation."""
    ceiling = cal[device].data["ceiling"]["ceiling_seq_per_s"]
    # No bracket here: these runs are compared with their own simulation, not with the ceiling.
    setup = Setup(ceiling=ceiling, bracket=False, results_dir=RESULTS)
    points_csv = nb.fresh(OUT / f"{name}.csv", REUSE_SWEEPS)
    sweep(variants, grid, [load * ceiling for load in LOADS], setup, duration_s=DURATION_S, out=points_csv,
          server_args={"device": device}, progress_bar=False, progress=None)
    points = nb.read_csv(points_csv)
    assert not [p for p in points if p.get("failed")], [p["failed"] for p in points if p.get("failed")]
    rows = sim.replay_points(points, cal[device])
    nb.write_csv(OUT / f"{name}_vs_simulated.csv", sim.errors_table(rows))
    return rows


def predicted_curves(device: str, settings_by_label: dict) -> dict:
    ceiling = cal[device].data["ceiling"]["ceiling_seq_per_s"]
    rates = [ceiling * x / 20 for x in range(1, 46)]  # 0.05x to 2.25x
    return {label: sim.predict(cal[device], variant, settings, rates)
            for label, (variant, settings) in settings_by_label.items()}


def show(rows: list[dict], curves: dict, title: str, name: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    sim.plot_sim_vs_measured(axes, rows, curves, sim.curve_colors(curves))
    fig.suptitle(title)
    fig.tight_layout()
    nb.save(fig, OUT, name)
    plt.show()
    for line in sim.errors_table(rows):
        print(sim.describe_error(line))


cpu_rows = measure_and_replay(HOST, VARIANTS, {}, "cpu")
cpu_curves = predicted_curves(HOST, {v: (v, {}) for v in VARIANTS})
show(cpu_rows, cpu_curves, "On this CPU: measured (o), the same runs simulated (x), predicted (lines)",
     "cpu_sim_vs_measured")

# %% [markdown]
# Where they agree and where they do not:
#
# - **Throughput** under overload is what the cost model and the server's own work say: one core
#   does the batch, its HTTP work and the refusals, one after the other, whatever the policy, so
#   the simulator gets it within a few percent, except where this machine's speed drifted
#   between the calibration and the run (it does, by 10-20% within minutes: notebook 5's
#   bracket).
# - **Latency under overload** is mostly the queue. With the breaker (`thread_offloaded`), the
#   queue is capped, and the simulator's median follows the measured one. With no breaker
#   (`capped_batch`) it does not, and not for want of a better cost model: past its capacity
#   a blocking server stops serving in arrival order. Requests that need a new connection wait
#   in the kernel's accept queue while the model runs, some until TCP retransmits their
#   handshake (seconds later), and the rest are served quickly. The simulator's queue is
#   FIFO, so its median reads too high there (see the request log of that run: most answers
#   take 1-2 s, a few take 10 s).
# - **Light load**: what is left is the time of one small batch and the HTTP path. An idle core
#   computes slower than the ceiling's hot loop (caches, clocks), which the light-load calibration
#   run measures as a latency offset.
#
# ## 3. The same variants on the emulated H200
#
# Here the server's own work is most of the cost, and the overloads are where the simulator is
# weakest: thousands of open connections (no breaker) or thousands of refusals a second
# (breaker on) cost the one core more, or less, than the calibration's short runs measured.
# Below capacity it agrees; past it, read its curves as the shape, not the figure.
#
# The same servers, the same Locust scenarios and the same bench, with `--device
# emulated:h200-bert-base`: the pipeline runs here, only the forward pass waits as an H200
# would. First the two variants with their defaults, then `thread_offloaded` over max-wait x
# cap, each measured through HTTP with the simulator's prediction beside it.

# %%
accel_rows = measure_and_replay(ACCELERATOR, VARIANTS, {}, "accelerator")
accel_curves = predicted_curves(ACCELERATOR, {v: (v, {}) for v in VARIANTS})
show(accel_rows, accel_curves, f"On {ACCELERATOR}: measured (o), simulated (x), predicted (lines)",
     "accelerator_sim_vs_measured")

# %%
grid_rows = measure_and_replay(ACCELERATOR, ["thread_offloaded"], GRID, "accelerator_grid")
grid_curves = predicted_curves(ACCELERATOR, {
    sim.label({"variant": "thread_offloaded", "max_batch_size": cap, "max_wait_ms": wait}):
        ("thread_offloaded", {"max_batch_size": cap, "max_wait_ms": wait})
    for cap in GRID["max_batch_size"] for wait in GRID["max_wait_ms"]})
show(grid_rows, grid_curves, f"thread_offloaded on {ACCELERATOR}, by cap and max wait",
     "accelerator_grid")
print(sim.batching_gain(grid_rows))

# %% [markdown]
# ## 4. Where the limit moves: from the model to the Python process
#
# On this CPU the model is the bottleneck: under overload it computes nearly all the time. On
# the emulated H200 the forward pass is fast, and what saturates is the one Python process in
# front of it: tokenizing, post-processing, HTTP, JSON and the event loop all hold the GIL on
# one core. With batches of 64 under overload, the server process works most of the time while
# the accelerator is busy only about a quarter of it; its wait overlaps little with the
# server's own work (see `servelab/sim/engine.py`). A real H200 hits this wall at about 1,300
# requests per second with the best single-process server measured before this suite
# (`results/reference/anchors-gpu.md`); the cure is more processes, not more batching.

# %%
limits = sim.limit_rows({HOST: cpu_rows, ACCELERATOR: grid_rows}, cal)
nb.write_csv(OUT / "where_the_limit_is.csv", limits)
fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
sim.plot_limits(axes, limits, [HOST, ACCELERATOR])
fig.suptitle("Busy fractions against offered load: the model, the accelerator, and the server's own core")
fig.tight_layout()
nb.save(fig, OUT, "where_the_limit_is")
plt.show()
for row in limits:
    if row["offered_x"] == max(LOADS):
        print(sim.describe_limit(row))

# %% [markdown]
# ## 5. The best max-wait, by load, from the simulator
#
# A longer wait gathers bigger batches, which are cheaper per sequence, but every request in
# them waits. A grid of real load tests to find the best wait takes hours; the simulator sweeps
# it in seconds. `thread_offloaded`, its cap at the ceiling's best batch size, no breaker; for
# each load (as a share of that server's capacity, itself simulated), the wait with the lowest
# p99, and the p99 of a few waits:

# %%
best = sim.best_wait_by_load(cal, waits_ms=[0, 0.5, 1, 2, 5, 10, 20, 50],
                             loads=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
nb.write_csv(OUT / "best_wait_by_load.csv", best)
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
sim.plot_best_wait(axes, best)
nb.save(fig, OUT, "best_wait_by_load")
plt.show()

# %% [markdown]
# What the figures support:
#
# - **Read `a` and `k` first.** Batching pays in proportion to the fixed cost per call (and an
#   accelerator's launch floor) against the cost per padded token. The ceiling command prints
#   both; no load test is needed to know whether batching can matter.
# - **With one worker, the queue does the batching.** While a batch computes, the next one
#   gathers in the queue, and the worker takes all of it at once. A deliberate wait adds its
#   length to the latency and, at these loads, hardly ever buys a cheaper batch: on both devices
#   the simulator finds the lowest p99 with a wait of (nearly) zero at every load. Keep
#   `--max-wait-ms` to a millisecond or two; it is the cap, and the cost model behind it, that
#   decide the throughput.
# - **Past a certain speed the model is not the limit**; the Python process in front of it is.
#   Then the answer is several processes (issue 12), not a bigger batch.
# - **The simulator is a map, not the territory.** It agrees with measurement where its two
#   inputs (the cost model, the HTTP time) were measured under the run's conditions; it reads
#   nothing about memory, CUDA streams or a second process. Use it to choose what to measure.
