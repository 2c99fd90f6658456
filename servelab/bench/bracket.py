"""Quick ceilings that bracket each measurement: the bare pipeline timed just before and just
after a run, under the same conditions as the run.

The reference VM's speed drifts by 10-20% within minutes, so a ceiling measured once, minutes
before a run, can sit on either side of what the run could reach. A pinned helper process holds
its own copy of the model, warmed up once, and times the best few batch sizes in about a second
whenever the runner asks, while the server sits idle between loads.

    with QuickCeiling(model=None, task=None, device="cpu", torch_threads=1, cores=[0],
                      loadgen_cores=[1], batch_sizes=(4, 8, 16)) as quick:
        before = quick.measure(loadgen_duty=0.1)
        ... the run ...
        after = quick.measure(loadgen_duty=measured_duty)

The helper is this module's main(), started by import (the bench package imports this module,
and `python -m` would run it a second time): it reads one JSON request per line on stdin and
answers one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from servelab.bench.machine import cores_arg, parse_cores
from servelab.bench.neighbour import BusyNeighbour
from servelab.paths import REPO
from servelab.process import ServerError, pinning, server_env

READY = "ready"


class QuickCeiling:
    """The helper process, started on enter and stopped on exit (also on errors)."""

    def __init__(self, *, model: str | None, task: str | None, device: str, torch_threads: int,
                 cores: list[int] | None, loadgen_cores: list[int] | None, batch_sizes,
                 seconds: float = 1.2, seed: int = 0):
        self.batch_sizes = tuple(batch_sizes)
        self.argv = [sys.executable, "-c", "from servelab.bench.bracket import main; main()",
                     "--device", device,
                     "--torch-threads", str(torch_threads), "--seconds", str(seconds), "--seed", str(seed),
                     "--batch-sizes", ",".join(map(str, self.batch_sizes)),
                     "--cores", cores_arg(cores), "--loadgen-cores", cores_arg(loadgen_cores)]
        self.argv += ["--model", model] if model else []
        self.argv += ["--task", task] if task else []
        self.cores = cores
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> QuickCeiling:
        self.log = tempfile.TemporaryFile("w+")  # its stderr: read back only if it fails
        self.process = subprocess.Popen(
            self.argv, cwd=REPO, env=server_env(), text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, preexec_fn=pinning(self.cores),
        )  # fmt: skip
        try:
            self._read_line(expect=READY)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.stdin.close()  # its end of input: it exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        self.log.close()

    def measure(self, loadgen_duty: float) -> dict:
        """{"seq_per_s": best rate, "by_batch_size": rows, "loadgen_duty": asked,
        "measured_duty": what the stand-in really used}."""
        self.process.stdin.write(json.dumps({"loadgen_duty": loadgen_duty}) + "\n")
        self.process.stdin.flush()
        return json.loads(self._read_line())

    def _read_line(self, expect: str | None = None) -> str:
        line = self.process.stdout.readline()
        if not line or (expect and line.strip() != expect):
            self.process.kill()
            self.process.wait()
            self.log.seek(0)
            raise ServerError(f"the quick-ceiling helper failed:\n{self.log.read()[-3000:]}")
        return line


def main() -> None:
    from servelab.bench.ceiling import load_for_timing, time_batches

    parser = argparse.ArgumentParser(prog="quick-ceiling helper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--task")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--cores", default="none")
    parser.add_argument("--loadgen-cores", default="none")
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--seconds", type=float, default=1.2, help="timed seconds per quick ceiling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cores = parse_cores(args.cores, "server")
    if cores:
        os.sched_setaffinity(0, cores)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    loaded, texts = load_for_timing(args.model, args.task, args.device, args.torch_threads, args.seed, sizes,
                                    progress=lambda text: print(text, file=sys.stderr))
    print(READY, flush=True)
    position = 0
    for line in sys.stdin:
        request = json.loads(line)
        duty = float(request.get("loadgen_duty", 0.0))
        with BusyNeighbour(parse_cores(args.loadgen_cores, "locust"), duty) as neighbour:
            rows = time_batches(loaded.predict, texts, sizes, min_seconds=args.seconds, rounds=1,
                                min_batches=2, position=position)
        position += sum(r["sequences"] for r in rows)  # fresh inputs each time
        best = max(rows, key=lambda r: r["seq_per_s"])
        answer = {"seq_per_s": best["seq_per_s"], "batch_size": best["batch_size"], "by_batch_size": rows,
                  "loadgen_duty": duty, "measured_duty": round(neighbour.measured_duty, 4)}
        print(json.dumps(answer), flush=True)

