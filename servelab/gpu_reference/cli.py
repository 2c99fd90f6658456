"""`python -m servelab gpu-reference`: the plan, run once within a budget, then its summary."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from servelab.paths import RESULTS


def add_parser(commands, formatter) -> None:
    from servelab.gpu_reference import plan

    p = commands.add_parser(
        "gpu-reference", help="one prepared run for a GPU machine: profiles, ceiling, served, emulated",
        formatter_class=formatter,
        description="Profiles, the ceiling, served runs on the real device and on the device emulated from "
        "the profile just measured, and max-rate searches: one unattended run within --budget-s. "
        "Rehearse it on the CPU with --device cpu --scale rehearsal.")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a rehearsal")
    p.add_argument("--scale", choices=sorted(plan.SCALES), default="full",
                   help="full: the GPU machine's durations; rehearsal: every step short")
    p.add_argument("--out", type=Path, default=None,
                   help="the run's folder (default: results/gpu-reference/<utc>)")
    p.add_argument("--minilm", type=Path, default=None,
                   help="MiniLM's folder (default: the packaged model); one without weights gets random ones")
    p.add_argument("--random-weights", action="store_true",
                   help="serve a random-weight copy of MiniLM's shapes (speed depends on shapes, not values)")
    p.add_argument("--server-cores", default="auto",
                   help="cores for the servers (auto: the first half, at least one)")
    p.add_argument("--locust-cores", default="auto", help="cores for Locust (auto: the other half)")
    p.add_argument("--load-processes", type=int, default=None,
                   help="Locust processes (default: one per Locust core)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="no step starts that would end past this; a running one is stopped a minute after")
    p.add_argument("--work", type=Path, default=Path("/tmp/servelab-gpu-reference"),
                   help="where the models are built (too big to keep with the results)")
    p.add_argument("--only", default=None, help="comma-separated step names to run (the others are skipped)")
    p.add_argument("--plan", action="store_true", help="print the steps and their files; run nothing")
    p.add_argument("--summarize", type=Path, default=None, metavar="FOLDER",
                   help="summarize an earlier run's folder again (rewrites its summary.json and summary.md)")


def split_cores(cores: list[int]) -> tuple[list[int], list[int]]:
    """Servers on the first half of the cores, Locust on the rest (one core each on two)."""
    if len(cores) < 2:
        return cores, cores
    half = len(cores) // 2
    return cores[:half], cores[half:]


def main(args) -> int:
    from servelab.bench.machine import available_cores, parse_cores
    from servelab.gpu_reference import plan, runner, summary

    if args.summarize:
        print(summary.render(summary.summarize(plan.Run(args.summarize, plan.Options()))))
        return 0
    steps = plan.plan()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            print(f"error: no step {', '.join(sorted(unknown))}; --plan lists them", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in wanted]
    if args.plan:
        print(plan.describe(steps, plan.SCALES[args.scale]))
        return 0
    server_half, locust_half = split_cores(available_cores())
    server_cores = parse_cores(args.server_cores, "server") if args.server_cores != "auto" else server_half
    locust_cores = parse_cores(args.locust_cores, "locust") if args.locust_cores != "auto" else locust_half
    options = plan.Options(
        device=args.device, scale=args.scale, minilm=args.minilm, random_weights=args.random_weights,
        server_cores=server_cores or [], locust_cores=locust_cores or [],
        load_processes=args.load_processes or max(1, len(locust_cores or [])),
        budget_s=args.budget_s, work=args.work)
    out = args.out or RESULTS / "gpu-reference" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = plan.Run(out, options)
    print(f"gpu-reference: {len(steps)} steps into {out}, budget {args.budget_s:.0f} s; servers on cores "
          f"{server_cores}, Locust ({options.load_processes} processes) on {locust_cores}", flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runner.run_plan(run, steps, progress=lambda line: print(line, flush=True))
    print()
    print(summary.render(summary.summarize(run)))
    return 0
