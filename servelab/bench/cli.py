"""The `python -m servelab` command line: bench, ceiling, profile, sweep, simulate, gpu-reference.

    python -m servelab bench --variant deadline --max-wait-ms 2 --rate 20 --duration 10
    python -m servelab bench --variant deadline --users 8 --duration 10          # closed loop
    python -m servelab bench --variant deadline --find-max-rate --slo-ms 100     # MLPerf-style search
    python -m servelab bench --variant capped_batch --scenario spike --capacity-rate 60 --spike-factor 3
    python -m servelab ceiling                                                   # offline seq/s by batch size
    python -m servelab sweep --variants naive,deadline --max-wait-ms 1,5 --rates 0.5x,1x,2x
    python -m servelab simulate --variant capped_batch --rates 0.5x,2x               # see servelab/sim

Server flags not listed here go after `--`: `python -m servelab bench --variant deadline -- --trace t.jsonl`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from servelab.bench.ceiling import DEFAULT_BATCH_SIZES, DEFAULT_LOADGEN_DUTY
from servelab.bench.loadgen import LOAD_OPTIONS
from servelab.bench.profile import DEFAULT_LENGTHS as PROFILE_LENGTHS
from servelab.bench.setup import Setup
from servelab.gpu_reference.cli import add_parser as add_gpu_reference_parser
from servelab.paths import RESULTS
from servelab.sim.cli import add_parser as add_simulate_parser

# Options passed on to the load tests as they are: name, type, default and help come from their
# table (loadtests/_options.py), so Locust and this command line cannot disagree.
PASSED_ON = (
    "arrivals",
    "late_ms",
    "drain_s",
    "request_timeout_s",
    "spike_baseline",
    "spike_before_s",
    "spike_s",
    "spike_after_s",
)

SERVER_FLAGS = {  # flag: (type, help); None = the server's own default, not passed
    "model": (str, "model folder or cached hub id (default: the packaged all-MiniLM-L6-v2)"),
    "task": (str, "pipeline task (default: inferred from the model)"),
    "device": (str, "cpu, cuda, auto"),
    "max_wait_ms": (float, "batching deadline"),
    "max_batch_size": (int, "batch size cap"),
    "max_queue": (int, "queue length limit (503 past it)"),
    "queue_timeout_ms": (float, "queue wait limit (504 past it)"),
    "log_level": (str, "server log level"),
}


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each default, except None and False: their help says what happens then."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _csv_list(kind):
    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part.strip()]

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where and how")
    group.add_argument("--torch-threads", type=int, default=1, help="passed to the server as --torch-threads")
    group.add_argument(
        "--server-cores",
        default="auto",
        help="cores for the server: auto (the first core), none, or a list like 0 or 0-1",
    )
    group.add_argument(
        "--locust-cores", default="auto", help="cores for Locust: auto (the second core), none, or a list"
    )
    group.add_argument(
        "--slo-ms", type=float, default=100.0, help="latency objective for goodput and --find-max-rate"
    )
    group.add_argument("--seed", type=int, default=0, help="seeds inputs and arrivals")
    group.add_argument(
        "--ceiling",
        default="auto",
        help="auto (a matching file from `ceiling`, if any), measure, none, a number, or a file",
    )
    group.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where results/runs and results/ceiling go"
    )
    group.add_argument(
        "--no-bracket",
        action="store_true",
        help="skip the quick ceilings timed just before and after each load (saves ~5 s a load)",
    )
    group.add_argument(
        "--bracket-seconds",
        type=float,
        default=Setup.bracket_seconds,
        help="timed seconds of each quick ceiling",
    )


def setup_from(args) -> Setup:
    """The Setup that the shared options describe."""
    return Setup(
        slo_ms=args.slo_ms,
        seed=args.seed,
        torch_threads=args.torch_threads,
        server_cores=args.server_cores,
        locust_cores=args.locust_cores,
        ceiling=_ceiling_arg(args.ceiling),
        bracket=not args.no_bracket,
        bracket_seconds=args.bracket_seconds,
        warmup=not getattr(args, "no_warmup", False),
        results_dir=args.results_dir,
    )


def add_offline_model_options(parser: argparse.ArgumentParser, device_help: str) -> None:
    """The model, and where it runs, for the commands that time it in this process (ceiling,
    profile): as a server would load it, pinned to the server's core."""
    parser.add_argument("--model", default=None, help="as the server's --model (default: packaged MiniLM)")
    parser.add_argument("--task", default=None, help="as the server's --task")
    parser.add_argument("--device", default="auto", help=device_help)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--cores", default="auto", help="cores to pin to: auto (the server's core), none, or a list"
    )


def add_server_options(parser: argparse.ArgumentParser, as_lists: bool = False) -> None:
    group = parser.add_argument_group("server flags (default: the server's own)")
    for name, (kind, help_text) in SERVER_FLAGS.items():
        if as_lists and name in ("max_wait_ms", "max_batch_size", "max_queue", "queue_timeout_ms"):
            group.add_argument(
                "--" + name.replace("_", "-"),
                type=_csv_list(kind),
                default=None,
                help=help_text + "; a comma-separated list to sweep",
            )
        else:
            group.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)


def add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("load (see loadtests/README.md)")
    group.add_argument("--duration", type=float, default=10.0, help="seconds of load (open and steady)")
    for name in PASSED_ON:
        LOAD_OPTIONS.add_option(group, name)
    group.add_argument(
        "--load-processes",
        type=int,
        default=1,
        help="Locust processes sharing the load, one per load-generator core in turn: one process "
        "sends about a thousand requests a second at most (open, steady and spike loads)",
    )
    # Locust's default capacity is a placeholder; here the measured ceiling stands in for it.
    LOAD_OPTIONS.add_option(
        group,
        "capacity_rate",
        default=None,
        help="spike: the server's capacity in req/s (default: the ceiling)",
    )


def load_options(args) -> dict:
    return {name: getattr(args, name) for name in PASSED_ON} | {"processes": args.load_processes}


def server_args(args, extra: list[str]) -> list[str]:
    argv: list[str] = []
    for name in SERVER_FLAGS:
        value = getattr(args, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv + extra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m servelab", description=__doc__, formatter_class=Formatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser(
        "bench",
        help="one run of one variant under one load",
        formatter_class=Formatter,
        description="Start a variant, warm it up, load it with Locust, write "
        "results/runs/<utc>_<variant>_<commit>/.",
    )
    bench.add_argument(
        "--variant", required=True, help="server_variants/NAME.py, or a path to a server script"
    )
    what = bench.add_mutually_exclusive_group()
    what.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"open loop: Poisson arrivals per second (default {LOAD_OPTIONS.DEFAULTS['offered_rate']:g})",
    )
    what.add_argument("--users", type=int, default=None, help="closed loop: this many users")
    LOAD_OPTIONS.add_option(
        bench, "scenario", default=None, help="default: open with --rate, steady with --users"
    )
    for name in ("spike_factor", "ramp_start_users", "ramp_step_users", "ramp_step_s", "ramp_max_users"):
        LOAD_OPTIONS.add_option(bench, name)
    bench.add_argument(
        "--find-max-rate",
        action="store_true",
        help="search the highest open-loop rate whose p99 stays under --slo-ms (starts at --rate)",
    )
    bench.add_argument("--max-rate-steps", type=int, default=8, help="most load steps the search may run")
    bench.add_argument(
        "--max-rate-tolerance", type=float, default=0.05, help="search stops at this relative gap"
    )
    bench.add_argument("--no-warmup", action="store_true", help="skip the warm-up (first calls will be slow)")
    bench.add_argument("--tag", default=None, help="appended to the run folder's name")
    add_load_options(bench)
    add_server_options(bench)
    add_machine_options(bench)

    ceiling = commands.add_parser(
        "ceiling",
        help="offline seq/s of the pipeline by batch size",
        formatter_class=Formatter,
        description="Time the bare pipeline (no HTTP) by batch size on the server's "
        "core and threads; the best is the ceiling a server can approach.",
    )
    add_offline_model_options(ceiling, device_help="as the server's --device")
    ceiling.add_argument(
        "--loadgen-cores",
        default="auto",
        help="cores the load generator would use, kept busy by a stand-in while timing: auto (the "
        "second core), none, or a list",
    )
    ceiling.add_argument(
        "--loadgen-duty",
        type=float,
        default=DEFAULT_LOADGEN_DUTY,
        help="the stand-in's CPU share of those cores: what Locust uses during a run (0: idle)",
    )
    ceiling.add_argument(
        "--batch-sizes",
        type=_csv_list(int),
        default=list(DEFAULT_BATCH_SIZES),
        help="comma-separated batch sizes",
    )
    ceiling.add_argument(
        "--min-seconds", type=float, default=3.0,
        help="time at least this long per batch size, spread over 3 interleaved rounds"
    )
    ceiling.add_argument("--seed", type=int, default=0, help="order of the inputs")
    ceiling.add_argument(
        "--from-token-ids", action="store_true",
        help="time the model's work on inputs tokenized beforehand, as multi_process's model process "
        "does it (its front ends tokenize): that process's ceiling, not a whole server's",
    )
    ceiling.add_argument(
        "--length-sorted", action="store_true",
        help="batches of inputs of nearly one length: the least padding any batching could reach on "
        "the corpus, the denominator for a server that sorts its queue by length (slo_aware)",
    )
    ceiling.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="writes results/ceiling/<model>...json"
    )
    ceiling.add_argument("--out", type=Path, default=None, help="write here instead (JSON; a CSV beside it)")

    soak = commands.add_parser(
        "soak",
        help="many requests, good and bad mixed, every answer counted; memory and descriptors watched",
        formatter_class=Formatter,
        description="A benchmark of correctness and leaks, not speed (servelab/bench/soak.py): lost, "
        "duplicated and crossed answers, undocumented statuses, RSS and open-descriptor growth.",
    )
    soak.add_argument("--variant", default="thread_offloaded", help="server_variants/NAME.py, or a path")
    soak.add_argument("--requests", type=int, default=100_000, help="how many requests in all")
    what = soak.add_mutually_exclusive_group()
    what.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second")
    what.add_argument("--load", type=float, default=0.7,
                      help="arrivals per second as a multiple of the ceiling")
    soak.add_argument("--sigterm-after", type=float, default=None,
                      help="send SIGTERM once this share of the requests is sent; check every one in flight "
                      "gets a status and the server exits within 5 s")
    add_server_options(soak)
    add_machine_options(soak)

    profile = commands.add_parser(
        "profile",
        help="the model's forward pass alone, by batch size and length: a device profile",
        formatter_class=Formatter,
        description="Time the forward pass only (a CUDA synchronize after each call), fit "
        "t(b, L) = a + k*b*L, and write a profile that --device emulated:PATH replays.",
    )
    add_offline_model_options(profile, device_help="a real device: cpu, cuda, auto")
    profile.add_argument("--batch-sizes", type=_csv_list(int), default=list(DEFAULT_BATCH_SIZES),
                         help="comma-separated batch sizes")
    profile.add_argument("--lengths", type=_csv_list(int), default=list(PROFILE_LENGTHS),
                         help="comma-separated padded lengths (tokens)")
    profile.add_argument("--min-seconds", type=float, default=0.3, help="timed seconds per shape at least")
    profile.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                         help="the weights' precision while timed (half precision is for GPUs)")
    profile.add_argument("--out", type=Path, default=None,
                         help="the JSON to write (default: results/profiles/<device>-<model>.json)")

    sweep = commands.add_parser(
        "sweep",
        help="variants x settings x load, resumable CSV",
        formatter_class=Formatter,
        description="Every combination of the comma-separated lists; one CSV row per "
        "point; points already in the CSV are skipped.",
    )
    sweep.add_argument("--variants", type=_csv_list(str), required=True, help="comma-separated variant names")
    sweep.add_argument("--scenario", choices=("open", "spike"), default="open")
    sweep.add_argument(
        "--rates", type=_csv_list(str), default=["10"], help="open: offered rates; 2x = 2 x the ceiling"
    )
    sweep.add_argument(
        "--spike-factors",
        type=_csv_list(float),
        default=[2.0, 3.0, 4.0],
        help="spike: peak rates, x --capacity-rate",
    )
    sweep.add_argument("--out", type=Path, default=RESULTS / "sweeps" / "sweep.csv", help="the CSV of points")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_load_options(sweep)
    add_server_options(sweep, as_lists=True)
    add_machine_options(sweep)
    add_simulate_parser(commands, Formatter)
    add_gpu_reference_parser(commands, Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    # A plain `kill` should stop the servers too: turn SIGTERM into SystemExit, so finally-blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        commands = {"bench": cmd_bench, "ceiling": cmd_ceiling, "profile": cmd_profile, "sweep": cmd_sweep,
                    "simulate": cmd_simulate, "soak": cmd_soak, "gpu-reference": cmd_gpu_reference}
        return commands[args.command](args, extra)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # ServerError, LoadError, SweepError: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _ceiling_arg(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def cmd_bench(args, extra: list[str]) -> int:
    from servelab.bench.loadgen import Load
    from servelab.bench.run import run

    scenario = args.scenario or ("steady" if args.users else "open")
    options = load_options(args)
    if scenario == "open":
        load = Load.open(rate=args.rate or Load.rate, duration_s=args.duration, **options)
    elif scenario == "steady":
        load = Load.steady(users=args.users or 4, duration_s=args.duration, **options)
    elif scenario == "spike":
        load = Load(
            scenario="spike",
            rate=None,
            capacity_rate=args.capacity_rate,
            spike_factor=args.spike_factor,
            **options,
        )
    else:
        load = Load(
            scenario="ramp",
            rate=None,
            ramp_start_users=args.ramp_start_users,
            ramp_step_users=args.ramp_step_users,
            ramp_step_s=args.ramp_step_s,
            ramp_max_users=args.ramp_max_users,
            **options,
        )
    if scenario == "spike" and not load.capacity_rate:
        load.capacity_rate = _capacity_from_ceiling(args)
    result = run(
        args.variant,
        server_args(args, extra),
        load,
        setup_from(args),
        find_max_rate=args.find_max_rate,
        max_rate_steps=args.max_rate_steps,
        max_rate_tolerance=args.max_rate_tolerance,
        tag=args.tag,
    )
    print(f"written: {result.run_dir}")
    return 0


def _capacity_from_ceiling(args) -> float:
    from servelab.bench.ceiling import measure_in_subprocess

    ceiling = _ceiling_arg(args.ceiling)
    if isinstance(ceiling, float):
        return ceiling
    print("spike without --capacity-rate: measuring the ceiling to use as capacity ...")
    result = measure_in_subprocess(
        model=args.model,
        task=args.task,
        device=args.device or "auto",
        torch_threads=args.torch_threads,
        cores=args.server_cores,
        loadgen_cores=args.locust_cores,
        results_dir=args.results_dir,
        quiet=True,
    )
    return result["ceiling_seq_per_s"]


def cmd_ceiling(args, extra: list[str]) -> int:
    from servelab.bench import ceiling
    from servelab.bench.machine import parse_cores
    from servelab.costmodel import describe_fit

    result = ceiling.measure(
        model=args.model,
        task=args.task,
        device=args.device,
        torch_threads=args.torch_threads,
        cores=parse_cores(args.cores, "server"),
        loadgen_cores=parse_cores(args.loadgen_cores, "locust"),
        loadgen_duty=args.loadgen_duty,
        batch_sizes=args.batch_sizes,
        min_seconds=args.min_seconds,
        seed=args.seed,
        from_token_ids=args.from_token_ids,
        length_sorted=args.length_sorted,
    )
    path = ceiling.write(result, args.results_dir, args.out)
    print(f"ceiling {result['ceiling_seq_per_s']:.1f} seq/s at batch size {result['best_batch_size']}")
    print(f"cost model {describe_fit(result['cost_model'])}")
    print(f"ceiling written to {path}")
    return 0


def cmd_profile(args, extra: list[str]) -> int:
    import json

    from servelab.bench import profile
    from servelab.bench.machine import parse_cores

    result = profile.measure(args.model, args.task, args.device, batch_sizes=args.batch_sizes,
                             lengths=args.lengths, min_seconds=args.min_seconds,
                             torch_threads=args.torch_threads, cores=parse_cores(args.cores, "server"),
                             dtype=args.dtype)
    out = args.out or RESULTS / "profiles" / f"{result['name']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cost = result["cost_model"]
    worst = max(abs(p["relative_error"]) for p in cost["points"])
    print(f"t(b, L) = {cost['a_s'] * 1000:.3f} ms + {cost['k_s_per_token'] * 1e6:.3f} us x b x L "
          f"(worst point off by {worst:.0%})")
    print(f"profile written to {out}; serve with --device emulated:{out}")
    return 0


def cmd_soak(args, extra: list[str]) -> int:
    from dataclasses import replace

    from servelab.bench.soak import describe, soak

    setup = replace(setup_from(args), bracket=False)  # a soak judges answers, not speed
    run_dir, summary = soak(args.variant, server_args(args, extra), requests=args.requests, rate=args.rate,
                            load=args.load, setup=setup, sigterm_after=args.sigterm_after)
    print(describe(summary))
    print(f"written: {run_dir}")
    return 0 if all(summary["goals_met"].values()) else 1


def cmd_simulate(args, extra: list[str]) -> int:
    from servelab.sim.cli import main as simulate

    return simulate(args)


def cmd_gpu_reference(args, extra: list[str]) -> int:
    from servelab.gpu_reference.cli import main as gpu_reference

    return gpu_reference(args)


def cmd_sweep(args, extra: list[str]) -> int:
    from servelab.bench.sweep import sweep

    grid = {
        name: getattr(args, name)
        for name in ("max_wait_ms", "max_batch_size", "max_queue", "queue_timeout_ms")
        if getattr(args, name) is not None
    }
    fixed = {
        name: getattr(args, name)
        for name in ("model", "task", "device", "log_level")
        if getattr(args, name) is not None
    }
    sweep(
        args.variants,
        grid,
        args.rates,
        setup_from(args),
        scenario=args.scenario,
        spike_factors=args.spike_factors,
        capacity_rate=args.capacity_rate,
        duration_s=args.duration,
        out=args.out,
        server_args=fixed or None,
        server_extra=extra,
        load_options=load_options(args),
        progress_bar=not args.no_progress,
    )
    return 0
