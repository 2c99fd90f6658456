"""Execute the walkthrough notebooks top to bottom, each in a fresh kernel of this interpreter.

    python notebooks/run_all.py                                            # quick mode, all six
    python notebooks/run_all.py --full --out results/reference/cpu-2core   # the reference figures
    python notebooks/run_all.py --only 02,04                               # some of them
    python notebooks/run_all.py --device emulated:h200-bert-base --out DIR # the GPU lessons on a CPU

Each notebook's data (CSVs, PNGs, run folders) goes under OUT, and its executed copy (with
outputs) is written to OUT/NAME.ipynb; the notebooks in notebooks/ stay without outputs.
Quick mode takes about 8 minutes; full mode (SERVELAB_QUICK=0) about 26 minutes on 2 cores.
Nothing else should run on the machine meanwhile: the numbers are timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from servelab import notebook as nb

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="full mode (SERVELAB_QUICK=0): the reference figures")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "notebooks",
                        help="results and executed copies (default: results/notebooks, where the "
                        "notebooks write when opened in JupyterLab)")
    parser.add_argument("--device", default="auto",
                        help="SERVELAB_DEVICE, every server's and ceiling's --device: auto, cpu, cuda, or "
                        "emulated:PROFILE (emulated:h200-bert-base: an H200's timing replayed on this CPU); "
                        "give each device its own --out, or its figures replace the others'")
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,03")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell at most")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    chosen = [p for p in nb.notebooks() if not wanted or p.name[:2] in wanted]
    if not chosen:
        parser.error(f"no notebook matches --only {args.only!r}")
    times = []
    for path in chosen:
        print(f"{path.name}: running ({'full' if args.full else 'quick'} mode, device {args.device}) ...",
              flush=True)
        started = time.perf_counter()
        try:
            nb.execute(path, out / path.name, quick=not args.full, results=out, device=args.device,
                       timeout_s=args.timeout)
        except Exception as exc:
            print(f"{path.name}: FAILED after {time.perf_counter() - started:.0f} s; the executed copy "
                  f"with the error is {out / path.name}\n{exc}", file=sys.stderr)
            return 1
        times.append((path.name, time.perf_counter() - started))
        print(f"{path.name}: done in {times[-1][1]:.0f} s", flush=True)
    print(f"all done in {sum(t for _, t in times):.0f} s; results and executed notebooks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
