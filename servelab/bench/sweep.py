"""Sweeps: variants x server settings x offered load, one CSV row per point, resumable.

    python -m servelab sweep --variants naive,deadline --max-wait-ms 1,5 --rates 10,20,40 --duration 10

Each server setting is started once and warmed up; then each load point runs against it and
writes its own run folder (next to the CSV) and one row of the CSV. Rerunning the same command
skips the points already in the CSV, so an interrupted sweep resumes where it stopped.
A rate written as "2x" means 2 x the offline ceiling (python -m servelab ceiling).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

from servelab.bench import stats
from servelab.bench.loadgen import Load, LoadError
from servelab.bench.run import Bench
from servelab.bench.setup import Setup
from servelab.paths import RESULTS
from servelab.process import ServerError, accepted_flags, server_argv


class SweepError(RuntimeError):
    pass


@dataclass(frozen=True)
class Point:
    """One point of a sweep: a variant, its varied server flags ("-" where the variant lacks the
    flag, as naive lacks --max-wait-ms), and one load: ("rate", "2x") or ("spike_factor", 3)."""

    variant: str
    config: tuple[tuple[str, object], ...]
    load: tuple[str, object]

    def flags(self) -> dict:
        return {k: v for k, v in self.config if v != "-"}

    def folder_name(self) -> str:
        return _slug(f"{self.variant}_{'_'.join(f'{k}-{v}' for k, v in self.config)}")


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


def point_key(row: dict) -> str:
    return "|".join(f"{k}={row[k]}" for k in sorted(row))


def plan(variants: list[str], grid: dict[str, list], loads: list[tuple[str, object]]) -> list[Point]:
    """Every point, grouped by server setting (each setting's points are adjacent)."""
    names = list(grid)
    points = []
    for variant in variants:
        accepted = accepted_flags(variant)
        seen = []
        for values in itertools.product(*(grid[n] for n in names)):
            config = tuple(
                (name, value if "--" + name.replace("_", "-") in accepted else "-")
                for name, value in zip(names, values, strict=True)
            )
            if config not in seen:
                seen.append(config)
                points += [Point(variant, config, load) for load in loads]
    return points


def sweep(
    variants: list[str],
    grid: dict[str, list] | None = None,
    rates: list | None = None,
    setup: Setup | None = None,
    *,
    scenario: str = "open",
    spike_factors: list[float] | None = None,
    capacity_rate: float | None = None,
    duration_s: float = 10.0,
    out: Path = RESULTS / "sweeps" / "sweep.csv",
    server_args: dict | None = None,
    server_extra: list[str] | None = None,
    load_options: dict | None = None,
    progress_bar: bool = True,
    progress=print,
) -> Path:
    """Run every point not yet in `out`; return the CSV's path.

    grid: server flags to vary, e.g. {"max_wait_ms": [1, 5], "max_batch_size": [16, 64]}.
    rates (open scenario): offered rates; "2x" = 2 x the ceiling.
    spike_factors (spike scenario): peak rates as multiples of capacity_rate (default: the ceiling).
    server_args, server_extra: fixed server flags (a dict, then raw arguments).
    """
    from tqdm import tqdm

    setup = setup or Setup()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if scenario == "spike":
        loads = [("spike_factor", f) for f in (spike_factors or [2, 3, 4])]
    elif scenario == "open":
        loads = [("rate", r) for r in (rates or [10])]
    else:
        raise SweepError(f"sweeps run open-loop loads (scenario open or spike), not {scenario!r}")
    points = plan(variants, grid or {}, loads)

    # The fixed server flags are part of a point's identity: a point measured on another device
    # or model must not be taken for this one when a sweep resumes.
    fixed = " ".join(server_argv(server_args) + list(server_extra or []))

    def identity(point: Point) -> dict:  # the CSV columns that say which point a row is
        return {"variant": point.variant, **dict(point.config), "scenario": scenario,
                point.load[0]: point.load[1],
                "duration_s": duration_s, "seed": setup.seed, "slo_ms": setup.slo_ms,
                "torch_threads": setup.torch_threads, "server_flags": fixed}

    rows = read_points(out)
    done = {row["key"] for row in rows}
    todo = [p for p in points if point_key(identity(p)) not in done]
    bar = tqdm(total=len(points), initial=len(points) - len(todo), disable=not progress_bar, desc="sweep",
               unit="point")
    points_done = len(points) - len(todo)  # tqdm counts nothing when disabled: count here
    quick = None  # the first setting's quick-ceiling helper, kept for the later ones
    helpers = contextlib.ExitStack()
    try:
        for (variant, config), grouped in itertools.groupby(todo, key=lambda p: (p.variant, p.config)):
            group = list(grouped)
            args = server_argv({**(server_args or {}), **group[0].flags()}) + list(server_extra or [])
            bar.set_postfix_str(f"starting {variant} {dict(config)}")
            with Bench(variant, args, setup, log_dir=out.with_suffix("") / group[0].folder_name(),
                       quick=quick, progress=None) as bench:
                if bench.ceiling:  # found or measured once: the same for every later setting
                    setup = replace(setup, ceiling=bench.ceiling)
                if bench.quick and quick is None:  # same model for every setting: one helper
                    quick, bench.owns_quick = bench.quick, False
                    helpers.callback(quick.__exit__)
                for point in group:
                    bar.set_postfix_str(f"{variant} {dict(config)} {point.load[0]}={point.load[1]}")
                    load = make_load(scenario, point.load, duration_s, capacity_rate, bench.ceiling,
                                     load_options or {})
                    row = measure_point(bench, load, out.with_suffix("") / point.folder_name()
                                        / _slug(f"{point.load[0]}-{point.load[1]}"))
                    rows.append({"key": point_key(identity(point)), **identity(point)}
                                | {k: v for k, v in row.items() if k not in identity(point)})
                    write_points(out, rows)
                    bar.update(1)
                    points_done += 1
    finally:
        helpers.close()
        bar.close()
    if progress:
        progress(f"sweep: {points_done} of {len(points)} points in {out}")
    return out


def measure_point(bench: Bench, load: Load, point_dir: Path) -> dict:
    """One point's CSV columns: its summary, flattened; a server that dies under load is a result."""
    try:
        summary = bench.measure(load, point_dir)
    except (LoadError, ServerError) as exc:
        summary = {"failed": str(exc).splitlines()[0]}
    return stats.flatten({k: v for k, v in summary.items() if k != "settings"}) | {"run_dir": str(point_dir)}


def make_load(scenario: str, load_point: tuple, duration_s: float, capacity_rate: float | None, ceiling,
              options: dict) -> Load:
    kind, value = load_point
    ceiling_rate = ceiling.value if ceiling else None
    if kind == "rate":
        return Load.open(rate=parse_rate(value, ceiling_rate), duration_s=duration_s, **options)
    capacity_rate = capacity_rate or ceiling_rate
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
