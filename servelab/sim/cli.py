"""`python -m servelab simulate`: the batching policies in simulation, measured runs replayed.

    python -m servelab simulate --calibrate --device cpu          # once per device: ~3 minutes
    python -m servelab simulate --variant capped_batch --rates 0.25x,0.5x,1x,2x
    python -m servelab simulate --variant thread_offloaded --rates 1000 --device emulated:h200-bert-base
    python -m servelab simulate --replay results/runs/RUN [RUN ...]   # simulated beside measured
    python -m servelab simulate --variant slo_aware --slo-ms 127 --find-max-rate [--server-work offload=0]
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

from servelab.paths import RESULTS

POLICY_FLAGS = (("max_wait_ms", float), ("max_batch_size", int), ("max_queue", int),
                ("queue_timeout_ms", float))
# --server-work: HttpCost's fields, without their _s
SERVER_WORK = ("per_request", "per_batch", "per_refusal", "offload", "idle_extra")
# --find-max-rate: the bench's criterion (servelab/bench/maxrate.py), p99 within the objective with
# errors counting as misses, checked on a grid of the ceiling instead of by bisection: a simulated
# step costs a second, and a grid shows the whole curve.
DURATION_S = 10.0  # arrivals per rate, by default
MAX_RATE_GRID = [round(0.1 + 0.025 * i, 3) for i in range(77)]  # 0.1x to 2x
MAX_MISSES = 0.01
MAX_RATE_DURATION_S = 300.0  # arrivals per step: 1% of them is a few hundred misses at a CPU's rates


def add_parser(commands, formatter) -> None:
    p = commands.add_parser("simulate", help="the variants' batching in simulation; replay measured runs",
                            description=__doc__, formatter_class=formatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--calibrate", action="store_true",
                      help="measure the ceiling's cost model and the server's own work on --device")
    mode.add_argument("--replay", nargs="+", type=Path, metavar="RUN",
                      help="bench run folders to simulate with their own arrivals and settings")
    p.add_argument("--variant", default="thread_offloaded", help="whose batching policy and breaker")
    p.add_argument("--rates", default="0.25x,0.5x,1x,2x",
                   help="offered Poisson rates, comma-separated; 2x = twice the calibration's ceiling")
    mode.add_argument("--find-max-rate", action="store_true",
                      help="the highest rate, on a grid of 0.025x the ceiling, whose p99 (errors counting as "
                           "misses) meets --slo-ms, as the bench's --find-max-rate judges a measured step")
    p.add_argument("--duration", type=float, default=None,
                   help=f"seconds of arrivals per rate (default: {DURATION_S:.0f}; "
                        f"{MAX_RATE_DURATION_S:.0f} with --find-max-rate)")
    p.add_argument("--requests", type=int, default=None, help="a number of arrivals instead of --duration")
    for name, kind in POLICY_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help="as the server's flag (default: the variant's own; 0 turns a limit off)")
    p.add_argument("--device", default="auto", help="whose calibration: cpu, cuda, emulated:NAME")
    p.add_argument("--calibration", type=Path, default=None, help="a calibration file (default: by --device)")
    p.add_argument("--server-work", default=None, metavar="NAME=MS,...",
                   help="replace the calibration's figures for the server's own work, in ms; names: "
                        f"{', '.join(SERVER_WORK)}. For example per_batch=0,offload=0: what the policy "
                        "would do with no work per batch besides the pipeline call")
    p.add_argument("--slo-ms", type=float, default=100.0,
                   help="latency objective: for goodput, --find-max-rate, and slo_aware's plan")
    p.add_argument("--seed", type=int, default=0, help="seeds arrivals and inputs")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where results/sim goes")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON lines")
    p.add_argument("--out", type=Path, default=None, help="--replay: also write the comparison as a CSV")


def main(args) -> int:
    from servelab.sim.calibration import Calibration, calibrate

    if args.calibrate:
        path = calibrate(args.device, results_dir=args.results_dir)
        cal = Calibration.load(path)
        print(_describe_calibration(cal))
        print(f"calibration written to {path}")
        return 0
    try:
        if args.calibration:
            cal = Calibration.load(args.calibration)
        elif args.replay:
            cal = None  # each run's own device
        else:
            cal = Calibration.find(args.device, args.results_dir)
        if args.server_work:
            if cal is None:
                raise ValueError("--server-work needs one calibration: give --device or --calibration")
            cal = with_server_work(cal, args.server_work)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.replay:
        return _replay(args, cal)
    return _simulate(args, cal)


def with_server_work(cal, spec: str):
    """`cal` with some of its server's-own-work figures replaced: spec is NAME=MS,... (SERVER_WORK)."""
    changes = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in SERVER_WORK:
            raise ValueError(f"--server-work: unknown {name!r}; known: {', '.join(SERVER_WORK)}")
        try:
            changes[f"{name}_s"] = float(value) / 1000
        except ValueError:
            raise ValueError(f"--server-work: {item!r} is not NAME=MS (milliseconds)") from None
    return dataclasses.replace(cal, http=dataclasses.replace(cal.http, **changes))


def _simulate(args, cal) -> int:
    from servelab.bench.corpus import load_prompts
    from servelab.bench.sweep import SweepError, parse_rate
    from servelab.sim.engine import simulate
    from servelab.sim.policy import Policy
    from servelab.sim.replay import corpus_token_lengths, length_of
    from servelab.sim.summary import summarize

    # slo_aware plans against the objective the results are judged by.
    settings = {name: getattr(args, name) for name, _ in POLICY_FLAGS} | {"slo_ms": args.slo_ms}
    try:
        policy = Policy.of_variant(args.variant, settings)
    except ValueError as exc:  # a variant the simulator has no policy for: say which it has
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ceiling = cal.data["ceiling"]["ceiling_seq_per_s"]
    if not args.json:
        print(_describe_calibration(cal))
        print(f"{args.variant}: {json.dumps(policy.describe())}")
    tokens = corpus_token_lengths()
    words = [len(t.split()) for t in load_prompts()]
    population = [length_of(w, tokens) for w in words]
    if args.find_max_rate:
        return _find_max_rate(args, cal, policy, population)
    for spec in args.rates.split(","):
        try:
            rate = parse_rate(spec, ceiling)
        except (SweepError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        arrivals, lengths = poisson_arrivals(rate, args.duration or DURATION_S, args.requests, args.seed,
                                             population)
        started = time.perf_counter()
        outcome = simulate(arrivals, lengths, policy, cal.cost, cal.http)
        simulated_s = time.perf_counter() - started
        summary = summarize(outcome, args.slo_ms) | {"offered_rate": rate, "simulated_in_s": simulated_s}
        if args.json:
            print(json.dumps(summary))
        else:
            print(_describe(spec, summary, ceiling))
    return 0


def find_max_rate(policy, cal, population: list[int], slo_s: float, *,
                  duration_s: float = MAX_RATE_DURATION_S, requests: int | None = None, seed: int = 0,
                  progress=None) -> dict:
    """The grid's steps from the bottom up to the first whose misses exceed 1%, and the highest
    step below it: the rate sustained with p99 within slo_s."""
    from servelab.sim.engine import simulate
    from servelab.sim.summary import summarize

    ceiling = cal.data["ceiling"]["ceiling_seq_per_s"]
    steps, best = [], None
    for x in MAX_RATE_GRID:
        arrivals, lengths = poisson_arrivals(x * ceiling, duration_s, requests, seed, population)
        summary = summarize(simulate(arrivals, lengths, policy, cal.cost, cal.http), slo_s * 1000)
        share = 1 - summary["goodput_fraction"]  # not answered 200 within the objective
        step = {"x_ceiling": x, "rate": x * ceiling, "requests": len(arrivals), "missed_share": share,
                "p99_ms": summary["latency_ms"]["p99"], "mean_batch_size": summary["mean_batch_size"]}
        steps.append(step)
        if progress:
            progress(step)
        if share > MAX_MISSES:
            break
        best = step
    return {"ceiling_seq_per_s": ceiling, "slo_ms": slo_s * 1000, "max_rate": best and best["rate"],
            "max_rate_x_ceiling": best and best["x_ceiling"], "steps": steps}


def _find_max_rate(args, cal, policy, population: list[int]) -> int:
    def show(step):
        if not args.json:
            print(f"  {step['x_ceiling']:5.3f}x ({step['rate']:7.1f}/s): {step['missed_share']:6.2%} missed, "
                  f"p99 {step['p99_ms'] or 0:7.1f} ms, mean batch {step['mean_batch_size'] or 0:4.2f}")

    found = find_max_rate(policy, cal, population, args.slo_ms / 1000,
                          duration_s=args.duration or MAX_RATE_DURATION_S, requests=args.requests,
                          seed=args.seed, progress=show)
    if args.json:
        print(json.dumps(found))
    elif found["max_rate"] is None:
        print(f"no step met the objective: {found['steps'][0]['missed_share']:.2%} missed at the lowest")
    else:
        print(f"max rate with p99 <= {args.slo_ms:g} ms (errors as misses): {found['max_rate']:.1f}/s "
              f"= {found['max_rate_x_ceiling']:.3f}x the ceiling ({found['ceiling_seq_per_s']:.1f} seq/s)")
    return 0


def _replay(args, cal) -> int:
    from servelab.sim.calibration import Calibration
    from servelab.sim.replay import MeasuredRun, compare, corpus_token_lengths, replay

    rows = []
    for run_dir in args.replay:
        run = MeasuredRun.load(run_dir)
        run_cal = cal or Calibration.find(run.device, args.results_dir)
        simulated = replay(run, run_cal.cost, run_cal.http, corpus_token_lengths())
        table = compare(run.summary, simulated)
        rows.append({"run": run_dir.name, "device": run.device, "variant": run.summary["variant"],
                     "offered_rate": run.summary.get("offered_rate"),
                     "sent_rate": run.summary.get("sent_rate"), "compared": table})
        if args.json:
            print(json.dumps(rows[-1]))
            continue
        cells = "  ".join(
            f"{label} {c['measured'] or 0:8.1f} vs {c['simulated'] or 0:8.1f} ({_signed(c['error'])})"
            for label, c in table.items())
        print(f"{run.summary['variant']:>16} @ {run.summary.get('offered_rate') or 0:7.1f}/s  {cells}")
    if args.out:
        _write_comparison(args.out, rows)
        print(f"comparison written to {args.out}")
    return 0


def _write_comparison(path: Path, rows: list[dict]) -> None:
    import csv

    from servelab.bench.stats import flatten

    flat = [flatten(row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)


def poisson_arrivals(rate: float, duration_s: float, count: int | None, seed: int,
                     population: list[int]) -> tuple[list[float], list[int]]:
    """Arrival times of a Poisson process at `rate` (for duration_s, or `count` of them), and
    for each a length drawn from `population`, as the open-loop load test draws its inputs."""
    rng = random.Random(f"{seed}:arrivals")
    arrivals, now = [], 0.0
    while True:
        now += rng.expovariate(rate)
        if (count is not None and len(arrivals) >= count) or (count is None and now > duration_s):
            break
        arrivals.append(now)
    return arrivals, rng.choices(population, k=len(arrivals))


def _describe_calibration(cal) -> str:
    return f"calibration ({cal.data['device']}): batch {cal.describe()}"


def _describe(spec: str, s: dict, ceiling: float) -> str:
    lat = s["latency_ms"]

    def ms(v):
        return "   -" if v is None else f"{v:7.1f}"

    achieved = s["achieved_rate"] or 0
    return (f"offered {spec:>6} ({s['offered_rate']:7.1f}/s): achieved {achieved:7.1f}/s "
            f"({achieved / ceiling:.2f}x ceiling), p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} ms, "
            f"mean batch {s['mean_batch_size'] or 0:5.1f}, errors {s['errors_by_status']}, "
            f"busy {s['model_busy_fraction'] or 0:.0%}  [{s['requests']} requests simulated in "
            f"{s['simulated_in_s']:.2f} s]")


def _signed(error: float | None) -> str:
    return "-" if error is None else f"{error:+.0%}"
