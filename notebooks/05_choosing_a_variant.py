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
# usable.
#
# The offline ceiling is the bare pipeline's best throughput on the same core, with the load
# generator's core kept as busy as Locust keeps it during a run. `achieved / ceiling` says how
# close a server came on this very machine. A server adds HTTP, JSON and queueing to the same
# pipeline, so it should land below; but this machine's speed drifts by 10-20% within minutes,
# and a ceiling measured a few minutes earlier can be the wrong denominator. So every point is
# bracketed: a quick ceiling is timed just before and just after it, under the same conditions,
# and the ratio is to their mean. A point above the bracket's upper end by more than the
# bracket's own spread is flagged: then the denominator, not the server, is what to distrust.

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
REMEASURE_CEILING = not QUICK  # the ratios below compare with the ceiling: full mode measures it again now

# %%
import matplotlib.pyplot as plt

from servelab.bench import Setup, sweep
from servelab.paths import VARIANTS

OUT = nb.setup(RESULTS, "05_choosing_a_variant")
MODERATE, OVERLOAD = 0.5, 2.0  # offered rates as multiples of the ceiling
DURATION_S = 2 if QUICK else 10
SLO_MS = 1500  # goodput counts answers within this (as in notebook 4)
print(f"quick={QUICK}, device={DEVICE}; results in {OUT}")

# %%
ceiling = nb.ceiling(RESULTS, QUICK, remeasure=REMEASURE_CEILING, device=DEVICE)
CEILING = ceiling["ceiling_seq_per_s"]
MEASURED_ON = ceiling["model"]["device"]  # what DEVICE "auto" became, for the figures
SETUP = Setup(slo_ms=SLO_MS, ceiling=nb.reference(ceiling), results_dir=RESULTS,
              bracket_seconds=0.5 if QUICK else 2.0)

points_csv = nb.fresh(OUT / "variants.csv", REUSE_SWEEPS)
sweep(VARIANTS, {}, [f"{MODERATE}x", f"{OVERLOAD}x"], SETUP, duration_s=DURATION_S, out=points_csv,
      server_args={"device": DEVICE}, progress_bar=False, progress=None)
points = nb.read_csv(points_csv)
assert not [p for p in points if p.get("failed")], [p["failed"] for p in points if p.get("failed")]

fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
nb.plot_variants(axes, points, MODERATE * CEILING, OVERLOAD * CEILING, CEILING)
fig.suptitle(f"Five variants on {MEASURED_ON}, their own defaults, open-loop Poisson, "
             f"{DURATION_S} s per point")
fig.tight_layout()
nb.save(fig, OUT, "variants")
plt.show()

# %%
moderate_title = f"p50 / p99 at {MODERATE * CEILING:.0f}/s"
overload_title = f"achieved at {OVERLOAD * CEILING:.0f}/s"
print(f"{'variant':17}{'settings (defaults)':42}{moderate_title:>22}{overload_title:>20}{'of ceiling':>12}"
      f"{'bracket (seq/s)':>17}{'busy':>6}{'padding':>9}  errors at overload")
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
           "overload_errors": errors, "ceiling_before": over["ceiling.bracket.before"],
           "ceiling_after": over["ceiling.bracket.after"], "above_ceiling": over["above_ceiling"],
           "model_busy_fraction": over["model_busy_fraction"], "busy_seq_per_s": over["busy_seq_per_s"],
           "padding_share": over["padding_share"], "loadgen_cpu_share": over["loadgen_cpu_share"]}
    table.append(row)
    bracket = f"{row['ceiling_before']:.0f} -> {row['ceiling_after']:.0f}"
    print(f"{variant:17}{settings:42}{mod['latency_ms.p50']:9.0f} / {mod['latency_ms.p99']:6.0f} ms"
          f"{over['achieved_rate']:16.1f}/s{over['ceiling_ratio']:12.2f}{bracket:>17}"
          f"{row['model_busy_fraction']:6.0%}{row['padding_share']:9.0%}  {errors or 'none'}"
          f"{'  ** ' + nb.ABOVE_NOTE if row['above_ceiling'] else ''}")
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
flagged = [r["variant"] for r in table if r["above_ceiling"]]
print(f"above their ceiling bracket: {', '.join(flagged) or 'none'}")

# %% [markdown]
# ## Where each server's time went
#
# Under overload every server has work queued, so what it achieves is
# **model-busy fraction x throughput while busy**:
#
# - the *model-busy fraction* is the pipeline's compute time over the run's wall time (from the
#   server's `/metrics`): below 1 when the model waits for the event loop to form a batch or to
#   parse requests between batches (variants that run the model on the event loop);
# - *throughput while busy* is sequences per second of compute time. Below the ceiling when
#   batches are padded (the *padding share*: padded token positions over all positions the model
#   computed), or when HTTP work shares the model's core while it computes (thread_offloaded).
#
# The ceiling's bracket holds the same pipeline, timed with the same padding mix at its best
# batch sizes, so the gap between the two products is the HTTP path's.

# %%
for r in table:
    product = r["model_busy_fraction"] * r["busy_seq_per_s"]
    print(f"{r['variant']:17} busy {r['model_busy_fraction']:4.0%} x {r['busy_seq_per_s']:5.1f} seq/s while busy "
          f"= {product:5.1f}/s (achieved {r['overload_achieved_rate']:5.1f}/s); padding "
          f"{r['padding_share']:.0%}; load generator {r['loadgen_cpu_share']:.0%} of its core")

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
