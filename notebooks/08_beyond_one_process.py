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
# # 8. Beyond one process
#
# Every server so far is one Python process: HTTP parsing, JSON, the tokenizer and the model's
# driver take turns on one interpreter. On the CPU the model is the limit, so that costs little.
# With the model on a fast accelerator, that one process becomes the limit: notebook 6 showed
# the emulated H200's model idle while the server's core was full.
#
# There are two ways past it, and this notebook measures both on the same harness:
#
# - **More front ends, one model copy.** `server_variants/multi_process.py` runs N front-end
#   processes that accept HTTP, check inputs and tokenize, and one model process that batches,
#   as thread_offloaded does. Token ids go over ZeroMQ, answers come back the same way.
# - **An existing engine that replicates the model.** Ray Serve
#   (`server_variants/frameworks/ray_serve_app.py`, `@serve.batch` with the same cap and wait)
#   and LitServe (`server_variants/frameworks/litserve_app.py`), the peer users ask about.
#
# Each setting runs at a light load (0.1x the offline ceiling) and under overload (2x), on this
# CPU and on the emulated H200. Read together:
# - achieved over the ceiling under overload;
# - the p50 at light load;
# - the answers by status under overload;
# - the memory of all the server's processes;
# - the server's CPU per answer.

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

OUT = nb.setup(RESULTS, "08_beyond_one_process")
HOST = "cpu"  # this machine
ACCELERATOR = sim.accelerator(DEVICE)
# Quick mode measures the accelerator only, where the front end is the limit; full mode both.
DEVICES = [ACCELERATOR] if QUICK else [HOST, ACCELERATOR]
LOADS = [0.1, 2.0]  # offered rates, x the ceiling: light load, and overload
DURATION_S = 2 if QUICK else 10
SETTINGS = {  # name: (server, its flags); every other flag is that server's default
    "thread_offloaded": ("thread_offloaded", {}),
    "multi_process, 1 front end": ("multi_process", {"front_ends": 1}),
    "multi_process, 2 front ends": ("multi_process", {"front_ends": 2}),
    "LitServe": ("frameworks/litserve_app", {}),
    "Ray Serve, 1 replica": ("frameworks/ray_serve_app", {"replicas": 1}),
    # Two replicas on this machine's one server core: Ray reserves half a CPU for each.
    "Ray Serve, 2 replicas": ("frameworks/ray_serve_app", {"replicas": 2, "replica_cpus": 0.5}),
}
if QUICK:
    del SETTINGS["Ray Serve, 2 replicas"]  # Ray's start-up is the slowest step; one replica shows the path
print(f"quick={QUICK}; devices {DEVICES}; {len(SETTINGS)} settings; results in {OUT}")

# %% [markdown]
# ## The runs
#
# One sweep per setting and device. The bench pins the server, all its processes, to the first
# core and Locust to the second, and records the server's CPU time (its child processes
# included) and, after each load, the resident memory of its processes.

# %%
ceilings, rows_by_device = {}, {}
for device in DEVICES:
    ceiling = nb.ceiling(RESULTS, QUICK, device=device)
    ceilings[device] = ceiling["ceiling_seq_per_s"]
    setup = Setup(ceiling=nb.reference(ceiling), results_dir=RESULTS, bracket_seconds=0.5 if QUICK else 2.0)
    points = {}
    for name, (server, flags) in SETTINGS.items():
        slug = name.replace(", ", "-").replace(" ", "_")
        path = nb.fresh(OUT / f"{device.replace(':', '_')}__{slug}.csv", REUSE_SWEEPS)
        sweep([server], {}, [f"{x}x" for x in LOADS], setup, duration_s=DURATION_S, out=path,
              server_args={"device": device, **flags}, progress_bar=False, progress=None)
        points[name] = nb.read_csv(path)
    rows_by_device[device] = nb.side_by_side(points, ceilings[device], LOADS[0], LOADS[1])
    failed = [r for r in rows_by_device[device] if r["failed"]]
    assert not failed, failed

# %% [markdown]
# ## Side by side
#
# The ratio is to the offline ceiling measured once with nothing else running. The quick
# ceilings that the bench times before and after each load are kept in the runs' summaries, but
# not used here: beside LitServe and Ray, whose idle processes poll, those read 20-25% low.

# %%
fig, axes = plt.subplots(len(DEVICES), 5, figsize=(19, 4.6 * len(DEVICES)), squeeze=False)
for row_axes, device in zip(axes, DEVICES, strict=True):
    nb.plot_side_by_side(row_axes, rows_by_device[device], device)
fig.suptitle(f"One process against many, {DURATION_S} s per load")
fig.tight_layout()
nb.save(fig, OUT, "side_by_side")
plt.show()

# %%
def cell(value, fmt, width):
    return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"


table = []
for device in DEVICES:
    print(f"\n{device}: ceiling {ceilings[device]:.0f} seq/s")
    print(f"{'setting':30}{'x ceiling':>10}{'p50 ms':>8}{'CPU ms':>8}{'PSS MB':>8}"
          f"{'procs':>6}{'200':>7}{'503':>7}{'504':>5}{'none':>7}")
    for r in rows_by_device[device]:
        table.append({"device": device} | r)
        print(f"{r['setting']:30}{r['achieved_over_ceiling']:10.2f}{cell(r['p50_ms_light'], '.1f', 8)}"
              f"{cell(r['cpu_ms_per_answer'], '.2f', 8)}{cell(r['pss_mb'], '.0f', 8)}"
              f"{cell(r['processes'], '.0f', 6)}{r['answered_200']:7}{r['refused_503']:7}"
              f"{r['late_504']:5}{r['no_answer']:7}")
nb.write_csv(OUT / "side_by_side.csv", table)

# %% [markdown]
# ## What it says
#
# - **Memory.** multi_process holds one model copy whatever its number of front ends; each front
#   end adds its own interpreter, web stack and tokenizer. Ray Serve's second replica is a second
#   model copy. The memory here is the sum of PSS, which splits each shared page between the
#   processes that map it: N separate servers would hold about N times thread_offloaded's.
# - **The HTTP path's CPU per answer.** On the emulated H200 the model costs the server almost no
#   CPU, so what remains is the path itself: parsing, JSON, tokenizing and, for multi_process,
#   the hop to the model process and back. More processes pay for that hop.
# - **Status codes.** thread_offloaded and multi_process refuse the excess with 503 at the
#   queue limit. LitServe and Ray Serve have no queue limit by default: under overload they hold
#   requests until the load stops, and those end with no answer.
#
# ## What one core cannot show
#
# The bench gives the server one core, and the load generator the other. On one core, more
# front ends cannot run in parallel: they take turns, and each pays the extra hop. Past one
# process the gain needs cores. The GPU measurement (`python -m servelab gpu-reference`, run by
# `scripts/gpu_reference.sh` on a GPU machine with 16 cores) gives multi_process eight front ends
# on their own cores: on an H200 it answered all the 5,300 requests/s Locust could send, where
# thread_offloaded answered 270 under 2x (`results/reference/nvidia-h200/README.md`). Ray
# Serve's replicas spread across machines; `README.md` ("Past one process") lists the steps for
# a cluster.
