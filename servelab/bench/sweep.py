"""Sweeps: variants x server settings x offered load, one CSV row per point, resumable.

    python -m servelab sweep --variants naive,deadline --max-wait-ms 1,5 --rates 10,20,40 --duration 10

Each server setting is started once and warmed up; then each load point runs against it and
writes its own run folder (next to the CSV) and one row of the CSV. Rerunning the same command
skips the points already in the CSV, so an interrupted sweep resumes where it stopped.
A rate written as "2x" means 2 x the offered ceiling (python -m servelab ceiling).
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

from servelab.bench import stats
from servelab.bench.loadgen import Load, LoadError
from servelab.bench.run import DEFAULT_SLO_MS, RESULTS, Bench
from servelab.process import ServerError, accepted_flags, server_argv


class SweepError(RuntimeError):
    pass


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-")


def read_points(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_points(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole CSV: columns are the union over rows (errors by status vary by point)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    tmp = Path(path).with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def point_key(point: dict) -> str:
    return "|".join(f"{k}={point[k]}" for k in sorted(point))


def sweep(
    variants: list[str],
    grid: dict[str, list] | None = None,
    rates: list | None = None,
    *,
    scenario: str = "open",
    spike_factors: list[float] | None = None,
    capacity_rate: float | None = None,
    duration_s: float = 10.0,
    out: Path = RESULTS / "sweeps" / "sweep.csv",
    server_args: dict | None = None,
    server_extra: list[str] | None = None,
    slo_ms: float = DEFAULT_SLO_MS,
    seed: int = 0,
    torch_threads: int | None = 1,
    server_cores="auto",
    locust_cores="auto",
    ceiling="auto",
    load_options: dict | None = None,
    results_dir: Path = RESULTS,
    progress_bar: bool = True,
    progress=print,
) -> Path:
    """Run every point not yet in `out`; return the CSV's path.

    server_args, server_extra: fixed server flags (a dict, then raw arguments).
    grid: server flags to vary, e.g. {"max_wait_ms": [1, 5], "max_batch_size": [16, 64]}.
    rates (open scenario): offered rates; "2x" = 2 x the ceiling.
    spike_factors (spike scenario): peak rates as multiples of capacity_rate (default: the ceiling).
    """
    from tqdm import tqdm  # the text bar: tqdm.auto wants ipywidgets in a notebook

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.with_suffix("")
    grid = grid or {}
    names = list(grid)
    configs = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))
    ]
    if scenario == "spike":
        loads = [("spike_factor", f) for f in (spike_factors or [2, 3, 4])]
    elif scenario == "open":
        loads = [("rate", r) for r in (rates or [10])]
    else:
        raise SweepError(f"sweeps run open-loop loads (scenario open or spike), not {scenario!r}")
    points = []
    for variant in variants:
        # A flag the variant lacks (naive has no --max-wait-ms) is "-" in its points, not an error.
        accepted = accepted_flags(variant)
        seen = []
        for config in configs:
            config = {k: (v if "--" + k.replace("_", "-") in accepted else "-") for k, v in config.items()}
            if config not in seen:
                seen.append(config)
                points += [(variant, config, load) for load in loads]

    rows = read_points(out)
    done = {row["key"] for row in rows}

    def describe_point(variant: str, config: dict, load: tuple) -> dict:
        return {
            "variant": variant,
            **{k: config[k] for k in names},
            "scenario": scenario,
            load[0]: load[1],
            "duration_s": duration_s,
            "seed": seed,
            "slo_ms": slo_ms,
            "torch_threads": torch_threads,
        }

    bar = tqdm(
        total=len(points),
        initial=sum(point_key(describe_point(*p)) in done for p in points),
        disable=not progress_bar,
        desc="sweep",
        unit="point",
    )
    ceiling_spec = ceiling
    try:
        for (variant, config), group in itertools.groupby(points, key=lambda p: (p[0], p[1])):
            todo = [p for p in group if point_key(describe_point(*p)) not in done]
            if not todo:
                continue
            flags = {k: v for k, v in config.items() if v != "-"}
            args = server_argv({**(server_args or {}), **flags}) + list(server_extra or [])
            log_dir = folder / _slug(f"{variant}_{'_'.join(f'{k}-{v}' for k, v in config.items())}")
            bar.set_postfix_str(f"starting {variant} {config}")
            with Bench(
                variant,
                args,
                log_dir=log_dir,
                slo_ms=slo_ms,
                seed=seed,
                torch_threads=torch_threads,
                server_cores=server_cores,
                locust_cores=locust_cores,
                ceiling=ceiling_spec,
                results_dir=results_dir,
                progress=None,
            ) as bench:
                ceiling_rate = (bench.ceiling or {}).get("ceiling_seq_per_s")
                if ceiling_rate:
                    ceiling_spec = ceiling_rate  # measured or found once: the same for every point
                for _, _, load_point in todo:
                    point = describe_point(variant, config, load_point)
                    load = make_load(
                        scenario,
                        load_point,
                        duration_s,
                        capacity_rate or ceiling_rate,
                        ceiling_rate,
                        load_options or {},
                    )
                    bar.set_postfix_str(f"{variant} {config} {load_point[0]}={load_point[1]}")
                    point_dir = log_dir / _slug(f"{load_point[0]}-{load_point[1]}")
                    row = {"key": point_key(point), **point}
                    try:
                        summary = bench.measure(load, point_dir)
                    except (LoadError, ServerError) as exc:  # a server that dies under load is a result
                        summary = {"failed": str(exc).splitlines()[0]}
                    measured = stats.flatten({k: v for k, v in summary.items() if k != "settings"})
                    row |= {k: v for k, v in measured.items() if k not in row} | {"run_dir": str(point_dir)}
                    rows.append(row)
                    write_points(out, rows)
                    done.add(point_key(point))
                    bar.update(1)
    finally:
        bar.close()
    if progress:
        progress(f"sweep: {len(done)} of {len(points)} points in {out}")
    return out


def make_load(
    scenario: str,
    load_point: tuple,
    duration_s: float,
    capacity_rate: float | None,
    ceiling_rate: float | None,
    options: dict,
) -> Load:
    kind, value = load_point
    if kind == "rate":
        rate = parse_rate(value, ceiling_rate)
        return Load.open(rate=rate, duration_s=duration_s, **options)
    if not capacity_rate:
        raise SweepError("a spike sweep needs --capacity-rate or a ceiling (python -m servelab ceiling)")
    return Load.spike(capacity_rate=capacity_rate, factor=float(value), **options)


def parse_rate(spec, ceiling_rate: float | None) -> float:
    """10 -> 10.0; "2x" -> 2 x the ceiling (which must be known)."""
    text = str(spec).strip()
    if text.endswith("x"):
        if not ceiling_rate:
            raise SweepError(
                f"rate {text!r} is relative to the ceiling, and no ceiling is known: run "
                "`python -m servelab ceiling` first, or pass --ceiling measure"
            )
        return float(text[:-1]) * ceiling_rate
    return float(text)
