"""`python -m servelab simulate`: the batching policies in simulation, measured runs replayed.

    python -m servelab simulate --calibrate --device cpu          # once per device: ~3 minutes
    python -m servelab simulate --variant capped_batch --rates 0.25x,0.5x,1x,2x
    python -m servelab simulate --variant thread_offloaded --rates 1000 --device emulated:h200-bert-base
    python -m servelab simulate --replay results/runs/RUN [RUN ...]   # simulated beside measured
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from servelab.paths import RESULTS

POLICY_FLAGS = (("max_wait_ms", float), ("max_batch_size", int), ("max_queue", int),
                ("queue_timeout_ms", float))


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
    p.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate")
    p.add_argument("--requests", type=int, default=None, help="a number of arrivals instead of --duration")
    for name, kind in POLICY_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help="as the server's flag (default: the variant's own; 0 turns a limit off)")
    p.add_argument("--device", default="auto", help="whose calibration: cpu, cuda, emulated:NAME")
    p.add_argument("--calibration", type=Path, default=None, help="a calibration file (default: by --device)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="latency objective for goodput")
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
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.replay:
        return _replay(args, cal)
    return _simulate(args, cal)


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
    for spec in args.rates.split(","):
        try:
            rate = parse_rate(spec, ceiling)
        except (SweepError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        arrivals, lengths = poisson_arrivals(rate, args.duration, args.requests, args.seed,
                                             [length_of(w, tokens) for w in words])
        started = time.perf_counter()
        outcome = simulate(arrivals, lengths, policy, cal.cost, cal.http)
        simulated_s = time.perf_counter() - started
        summary = summarize(outcome, args.slo_ms) | {"offered_rate": rate, "simulated_in_s": simulated_s}
        if args.json:
            print(json.dumps(summary))
        else:
            print(_describe(spec, summary, ceiling))
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
