"""Run the plan's steps in order, within a time budget, each with its own log.

A step starts only if the steps it needs succeeded and its estimate fits in what is left of
the budget; a step that runs past the budget (plus a grace) is stopped. One failed step does not
stop the rest: a lent GPU machine is not there for a second try. steps.json records each step's
status, time and command line as it goes, so a cut-off run still says how far it got.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import traceback

from servelab.gpu_reference.plan import PlanError, Run, Step
from servelab.process import stop_group

GRACE_S = 60  # how far a running step may overrun the budget before it is stopped


def run_plan(run: Run, steps: list[Step], progress=print) -> list[dict]:
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    budget = run.options.budget_s
    records: list[dict] = []
    status: dict[str, str] = {}
    for step in steps:
        elapsed = time.monotonic() - started
        record = {"name": step.name, "what": step.what, "outputs": step.outputs,
                  "estimate_s": round(step.estimate_s(run.scale), 1), "started_at_s": round(elapsed, 1)}
        missing = [name for name in step.needs if status.get(name) != "ok"]
        if missing:
            record.update(status="skipped", why=f"needs {', '.join(missing)}")
        elif elapsed + record["estimate_s"] > budget:
            record.update(status="skipped", why=f"over the {budget:.0f} s budget at {elapsed:.0f} s")
        else:
            record.update(_execute(run, step, timeout_s=max(10.0, budget + GRACE_S - elapsed)))
        status[step.name] = record["status"]
        records.append(record)
        (run.out / "steps.json").write_text(json.dumps(records, indent=2) + "\n")
        took = f" in {record['seconds']:.0f} s" if "seconds" in record else ""
        why = f": {record['why']}" if record.get("why") else ""
        progress(f"[{elapsed:5.0f} s] {step.name:30} {record['status']}{took}{why}")
    return records


def _execute(run: Run, step: Step, timeout_s: float) -> dict:
    log_path = run.out / "logs" / f"{step.name}.log"
    start = time.monotonic()
    try:
        if step.call is not None:
            step.call(run)
            return {"status": "ok", "seconds": round(time.monotonic() - start, 1)}
        argv = step.argv(run)
    except (PlanError, OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        log_path.write_text(traceback.format_exc())
        return {"status": "failed", "seconds": round(time.monotonic() - start, 1), "why": _one_line(exc)}
    result = {"argv": argv[1:]}  # without the interpreter's path
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _interrupt(process)
            return result | {"status": "failed", "seconds": round(time.monotonic() - start, 1),
                             "why": f"stopped after {timeout_s:.0f} s (the budget)"}
        finally:
            if process.poll() is None:  # Ctrl-C here
                _interrupt(process)
    seconds = round(time.monotonic() - start, 1)
    if code != 0:
        why = f"exit {code}: {_last_line(log_path)}"
        return result | {"status": "failed", "seconds": seconds, "why": why}
    return result | {"status": "ok", "seconds": seconds}


def _interrupt(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Ctrl-C first: the bench stops its own server and Locust (they run in sessions of their
    own, out of reach of a signal to this group) on the way out. Then SIGTERM and SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    stop_group(process)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _last_line(path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
