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
# # 5. Choosing a variant
#
# All five servers, each with its own defaults, under the same open-loop loads: a moderate one
# (half the offline ceiling), where latency is what matters, and an overload (twice the
# ceiling), where what matters is how much the server still gets done and whether it stays
# usable. The offline ceiling is the bare pipeline's best throughput on the same core: no
# server can beat it, and `achieved / ceiling` says how close each came on this very machine.

# %%
from servelab import notebook as nb

nb.banner();

# %% tags=["parameters"]
import os
from pathlib import Path

QUICK = os.environ.get("SERVELAB_QUICK", "1") == "1"  # quick: a smoke run of a few seconds per step
RESULTS = Path(os.environ.get("SERVELAB_RESULTS", "../results/notebooks"))
REUSE_SWEEPS = False  # True: keep the points already measured in this results folder
REMEASURE_CEILING = not QUICK  # the ratios below compare with the ceiling: full mode measures it again now

# %%
import matplotlib.pyplot as plt

from servelab.bench import sweep
from servelab.process import VARIANTS

OUT = nb.setup(RESULTS, "05_choosing_a_variant")
MODERATE, OVERLOAD = 0.5, 2.0  # offered rates as multiples of the ceiling
DURATION_S = 2 if QUICK else 10
SLO_MS = 1500  # goodput counts answers within this (as in notebook 4)
print(f"quick={QUICK}; results in {OUT}")

# %%
ceiling = nb.ceiling(RESULTS, QUICK, remeasure=REMEASURE_CEILING)
CEILING = ceiling["ceiling_seq_per_s"]

points_csv = nb.fresh(OUT / "variants.csv", REUSE_SWEEPS)
sweep(VARIANTS, {}, [f"{MODERATE}x", f"{OVERLOAD}x"], duration_s=DURATION_S, out=points_csv, slo_ms=SLO_MS,
      ceiling=CEILING, results_dir=RESULTS, progress_bar=False, progress=None)
points = nb.read_csv(points_csv)
assert not [p for p in points if p.get("failed")], [p["failed"] for p in points if p.get("failed")]

fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
nb.plot_variants(axes, points, MODERATE * CEILING, OVERLOAD * CEILING, CEILING)
fig.suptitle(f"Five variants, their own defaults, open-loop Poisson, {DURATION_S} s per point")
fig.tight_layout()
nb.save(fig, OUT, "variants")
plt.show()

# %%
moderate_title = f"p50 / p99 at {MODERATE * CEILING:.0f}/s"
overload_title = f"achieved at {OVERLOAD * CEILING:.0f}/s"
print(f"{'variant':17}{'settings (defaults)':42}{moderate_title:>22}{overload_title:>20}{'of ceiling':>12}"
      "  errors at overload")
table = []
for variant in VARIANTS:
    mod = next(p for p in points if p["variant"] == variant and p["rate"] == f"{MODERATE}x")
    over = next(p for p in points if p["variant"] == variant and p["rate"] == f"{OVERLOAD}x")
    errors = {k.split(".")[1]: int(v) for k, v in over.items() if k.startswith("errors_by_status.") and v}
    settings = nb.server_settings(over["run_dir"])
    row = {"variant": variant, "settings": settings,
           "moderate_p50_ms": mod["latency_ms.p50"], "moderate_p99_ms": mod["latency_ms.p99"],
           "overload_achieved_rate": over["achieved_rate"], "overload_ceiling_ratio": over["ceiling_ratio"],
           "overload_p99_ms": over["latency_ms.p99"], "overload_goodput_rate": over["goodput_rate"],
           "overload_errors": errors}
    table.append(row)
    print(f"{variant:17}{settings:42}{mod['latency_ms.p50']:9.0f} / {mod['latency_ms.p99']:6.0f} ms"
          f"{over['achieved_rate']:16.1f}/s{over['ceiling_ratio']:12.2f}  {errors or 'none'}")
nb.write_csv(OUT / "variants_table.csv", table)

# %% [markdown]
# The numbers that decide, computed from the table:

# %%
fastest = min(table, key=lambda r: r["moderate_p99_ms"])
most = max(table, key=lambda r: r["overload_achieved_rate"])
best_goodput = max(table, key=lambda r: r["overload_goodput_rate"] or 0)
naive = next(r for r in table if r["variant"] == "naive")
print(f"lowest p99 at moderate load: {fastest['variant']} ({fastest['moderate_p99_ms']:.0f} ms)")
print(f"most answers under overload: {most['variant']} ({most['overload_achieved_rate']:.1f}/s, "
      f"{most['overload_ceiling_ratio']:.0%} of the ceiling; naive: {naive['overload_ceiling_ratio']:.0%})")
print(f"most answers within {SLO_MS} ms under overload: {best_goodput['variant']} "
      f"({best_goodput['overload_goodput_rate']:.1f}/s)")

# %% [markdown]
# ## What to choose
#
# Read the figures of this notebook and the three before it; on another machine (a GPU
# especially) rerun them, since the balance between per-call overhead and compute decides how
# much batching gives.
#
# | your workload | choose | why |
# |---|---|---|
# | Anything in production | `thread_offloaded` | bounded batches, a free event loop (health checks, fast errors), and a circuit breaker on by default |
# | Low, steady traffic, latency first | `thread_offloaded` with a small `--max-wait-ms` (or `--max-batch-size 1`) | a lone request should not wait for a batch that will not come (notebook 2) |
# | Throughput first (offline jobs, bursts) | `thread_offloaded` with a larger cap and wait, up to where the offline curve flattens | batching pays near and above the no-batching capacity (notebook 2) |
# | Long inputs or slow models (calls over ~1 s) | `thread_offloaded` | on the event loop a long call blocks everything, errors included (notebook 3) |
# | Spiky traffic | `thread_offloaded` with `--max-queue` and `--queue-timeout-ms` set from your latency objective | refuse early instead of answering late (notebook 4) |
# | Learning | `naive` -> `per_get_timeout` -> `deadline` -> `capped_batch` -> `thread_offloaded` | each file adds one idea; `diff` two neighbours |
#
# `per_get_timeout` is the guide's pseudo-code and shows its flaw; `deadline` and `capped_batch`
# are steps on the way. None of the five uses more than one model copy: to use more cores or
# GPUs, run one such server per device behind a load balancer, and keep the breaker on in each.
