"""The one-screen summary of a reference run: the ceiling, the served runs as ratios to it, the
emulated device against the real one, and the max-rate searches. Also summary.json and
summary.md in the run's folder. Each function takes the plan's Run (not imported here: the
plan ranks its settings by these rows)."""

from __future__ import annotations

import csv
import json

# Emulated against real, for each served run (the GPU issue's goals).
RATE_TOLERANCE = 0.15
P50_TOLERANCE = 0.30


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def served_rows(run) -> list[dict]:
    """One row per served run, real and emulated: the sweep CSVs' columns that matter here."""
    ceiling = _ceiling(run.ceiling_path)
    rows = []
    for emulated, folder in ((False, "served"), (True, "emulated")):
        for path in sorted((run.out / folder).glob("*.csv")):
            with path.open(newline="", encoding="utf-8") as f:
                for point in csv.DictReader(f):
                    achieved = _number(point.get("achieved_rate"))
                    rows.append({
                        "setting": path.stem, "emulated": emulated, "rate": point.get("rate"),
                        "offered_rate": _number(point.get("offered_rate")), "achieved_rate": achieved,
                        "ceiling_ratio": achieved / ceiling if achieved and ceiling else None,
                        "p50_ms": _number(point.get("latency_ms.p50")),
                        "p99_ms": _number(point.get("latency_ms.p99")),
                        "error_fraction": _number(point.get("error_fraction")),
                        "goodput_rate": _number(point.get("goodput_rate")),
                        "server_cpu_share": _number(point.get("server_cpu_share")),
                        "loadgen_cpu_share": _number(point.get("loadgen_cpu_share")),
                        "late_sends": _number(point.get("late_sends")),
                        "failed": point.get("failed") or None,
                    })
    return rows


def _ceiling(path) -> float | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())["ceiling_seq_per_s"]


def emulation_check(rows: list[dict]) -> list[dict]:
    """Each served run beside its emulated twin: the ratios of achieved rate and p50."""
    real = {(r["setting"], r["rate"]): r for r in rows if not r["emulated"]}
    checks = []
    for twin in (r for r in rows if r["emulated"]):
        base = real.get((twin["setting"], twin["rate"]))
        if not base:
            continue
        rate_ratio = _ratio(twin["achieved_rate"], base["achieved_rate"])
        p50_ratio = _ratio(twin["p50_ms"], base["p50_ms"])
        checks.append({
            "setting": twin["setting"], "rate": twin["rate"],
            "achieved_rate_ratio": rate_ratio, "p50_ratio": p50_ratio,
            "rate_within": rate_ratio is not None and abs(rate_ratio - 1) <= RATE_TOLERANCE,
            "p50_within": p50_ratio is not None and abs(p50_ratio - 1) <= P50_TOLERANCE,
        })
    return checks


def _ratio(a, b):
    return a / b if a is not None and b else None


def max_rate_rows(run) -> list[dict]:
    rows = []
    for path in sorted((run.out / "max_rate").glob("runs/*/summary.json")):
        summary = json.loads(path.read_text())
        rows.append({"run": path.parent.name, "variant": summary.get("variant"),
                     "max_sustainable_rate": summary.get("max_sustainable_rate"),
                     "lowest_failing_rate": summary.get("lowest_failing_rate"),
                     "p99_ms": (summary.get("latency_ms") or {}).get("p99")})
    return rows


def profile_rows(run) -> list[dict]:
    rows = []
    for path in sorted((run.out / "profiles").glob("*.json")):
        profile = json.loads(path.read_text())
        cost = profile["cost_model"]
        best = max(profile["points"], key=lambda p: p["seq_per_s"])
        rows.append({"profile": path.stem, "a_ms": cost["a_s"] * 1000, "k_us": cost["k_s_per_token"] * 1e6,
                     "worst_error": max(abs(p["relative_error"]) for p in cost["points"]),
                     "best_seq_per_s": best["seq_per_s"], "at": f"{best['batch_size']}x{best['tokens']}",
                     # How much of a forward pass is the calling thread's own work, in all (with
                     # the synchronize's spin) and until the call returns (what the emulated
                     # device spends busy); None in profiles from before each was recorded.
                     "cpu_share": _median_share(profile["points"], "cpu_seconds"),
                     "launch_share": _median_share(profile["points"], "launch_cpu_seconds")})
    return rows


def _median_share(points: list[dict], field: str) -> float | None:
    shares = sorted(p[field] / p["seconds"] for p in points if field in p)
    return shares[len(shares) // 2] if shares else None


def summarize(run) -> dict:
    rows = served_rows(run)
    steps_path = run.out / "steps.json"
    steps = json.loads(steps_path.read_text()) if steps_path.is_file() else []
    summary = {
        "ceiling_seq_per_s": _ceiling(run.ceiling_path),
        # multi_process's model process does not tokenize: its own ceiling is the model on token ids.
        "token_ids_ceiling_seq_per_s": _ceiling(run.token_ids_ceiling_path),
        "objective_ms": run.objective_ms() if run.ceiling_path.is_file() else None,
        "served": rows,
        "emulated_vs_real": emulation_check(rows),
        "max_rate": max_rate_rows(run),
        "profiles": profile_rows(run),
        "steps": [{k: s.get(k) for k in ("name", "status", "seconds", "why")} for s in steps],
        "seconds": round(sum(s.get("seconds") or 0 for s in steps), 1),
    }
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run.out / "summary.md").write_text(render(summary) + "\n")
    return summary


def _f(value, fmt=".0f", none="-"):
    return none if value is None else format(value, fmt)


def render(summary: dict) -> str:
    lines = [f"ceiling {_f(summary['ceiling_seq_per_s'], '.1f')} seq/s; objective "
             f"{_f(summary['objective_ms'], '.1f')} ms (10x the pipeline's batch-1 time)"]
    if summary.get("token_ids_ceiling_seq_per_s"):
        lines.append(f"the model on token ids (multi_process's model process): "
                     f"{summary['token_ids_ceiling_seq_per_s']:.1f} seq/s")
    lines.append("")
    lines += ["served runs (x: achieved / ceiling)",
              f"{'setting':28} {'device':8} {'load':>5} {'offered':>8} {'achieved':>8} {'x':>5} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"]
    above = [(r["ceiling_ratio"] or 0) > 1 for r in summary["served"]]
    for r, is_above in zip(summary["served"], above, strict=True):
        lines.append(f"{r['setting']:28} {'emulated' if r['emulated'] else 'real':8} {r['rate'] or '':>5} "
                     f"{_f(r['offered_rate'])!s:>8} {_f(r['achieved_rate'])!s:>8} "
                     f"{_f(r['ceiling_ratio'], '.2f')!s:>5} {_f(r['p50_ms'], '.1f')!s:>7} "
                     f"{_f(r['p99_ms'], '.1f')!s:>7} {_f(r['error_fraction'], '.0%')!s:>6}"
                     + ("  ABOVE" if is_above else "")
                     + (f"  FAILED {r['failed'][:40]}" if r["failed"] else ""))
    if any(above):
        lines.append("ABOVE: more than the ceiling, so the ceiling is not this setting's limit: a "
                     "denominator measured under other conditions (multi_process: the model on token ids "
                     "is its own)")
    if summary["emulated_vs_real"]:
        goal = f"rate within {RATE_TOLERANCE:.0%}, p50 within {P50_TOLERANCE:.0%}"
        lines += ["", f"emulated / real (goal: {goal})"]
        for c in summary["emulated_vs_real"]:
            lines.append(f"{c['setting']:28} {c['rate']:>5}  rate {_f(c['achieved_rate_ratio'], '.2f')} "
                         f"{'ok' if c['rate_within'] else 'MISS':4}  p50 {_f(c['p50_ratio'], '.2f')} "
                         f"{'ok' if c['p50_within'] else 'MISS'}")
    for r in summary["max_rate"]:
        lines.append(f"max rate, p99 within the objective: {r['run']}: "
                     f"{_f(r['max_sustainable_rate'], '.1f')} req/s "
                     f"(lowest failing {_f(r['lowest_failing_rate'], '.1f')})")
    if summary["profiles"]:
        lines += ["", "profiles: t(b, L) = a + k*b*L"]
        for p in summary["profiles"]:
            lines.append(f"{p['profile']:24} a {p['a_ms']:.3f} ms  k {p['k_us']:.4f} us  worst point off "
                         f"{p['worst_error']:.0%}  best {p['best_seq_per_s']:.0f} seq/s at {p['at']}  "
                         f"CPU {_f(p['cpu_share'], '.0%')} of a call, "
                         f"{_f(p['launch_share'], '.0%')} before it returns")
    not_ok = [s for s in summary["steps"] if s["status"] != "ok"]
    lines += ["", f"steps: {len(summary['steps']) - len(not_ok)} ok of {len(summary['steps'])}, "
              f"{summary['seconds']:.0f} s"]
    lines += [f"  {s['name']}: {s['status']} ({s['why']})" for s in not_ok]
    return "\n".join(lines)
