"""Copy a finished run of the notebooks (or of measure.sh) into results/reference/, small and
with no path of the machine it was made on.

    python notebooks/run_all.py --full --out results/notebooks
    python results/reference/curate.py results/notebooks results/reference/cpu-2core

- Keeps what explains a figure: summaries, manifests, server logs, traces, CSVs, PNGs, the
  executed notebooks. Drops the bulky scratch: per-request CSVs, Locust logs, /metrics scrapes,
  and the tiny random BERT the fill-mask notebooks build.
- Cuts a server log longer than LOG_LINES to its first and last lines (Ray Serve's proxy logs a
  warning per request under overload: megabytes that say one thing), noting what was cut.
- Rewrites absolute paths in every text file: the source folder becomes DEST's path in the
  repository, the repository's own root becomes relative ("." and below), so that a reader's
  clone resolves them; the Python installation's own path becomes `<python>`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# models/: the tiny random-weight BERT the fill-mask notebooks build (rebuilt on every run).
DROP_NAMES = {"requests.csv", "locust.log", "metrics_before.txt", "metrics_after.txt", "models"}
DROP_SUFFIXES = {".safetensors", ".bin", ".pt", ".tmp"}
LOCUST_LOG = re.compile(r"locust(-\d+)?\.log")  # one Locust process's log, or each of several


def _dropped(name: str) -> bool:
    return name in DROP_NAMES or bool(LOCUST_LOG.fullmatch(name))


TEXT_SUFFIXES = {".json", ".jsonl", ".csv", ".ipynb", ".log", ".txt", ".md"}
LOG_LINES = 2000  # a longer .log keeps its first 1,500 and last 500 lines


def curate(source: Path, dest: Path) -> tuple[int, int]:
    """Copy source to dest (replacing dest); return (files kept, files rewritten)."""
    source, dest = source.resolve(), dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=lambda _, names: [n for n in names if _dropped(n)
                                                           or Path(n).suffix in DROP_SUFFIXES])
    relative_dest = dest.relative_to(REPO).as_posix()
    replacements = [(str(source), relative_dest), (str(REPO) + "/", ""), (str(REPO), "."),
                    (sys.base_prefix + "/", "<python>/")]  # the interpreter's own files, in tracebacks
    kept = rewritten = 0
    for path in sorted(dest.rglob("*")):
        if not path.is_file():
            continue
        kept += 1
        if path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = shorten_log(text) if path.suffix == ".log" else text
        for old, replacement in replacements:
            new = new.replace(old, replacement)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            rewritten += 1
    return kept, rewritten


def shorten_log(text: str) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= LOG_LINES:
        return text
    head, tail = lines[:1500], lines[-500:]
    cut = len(lines) - len(head) - len(tail)
    return "".join(head) + f"[... {cut} lines cut by results/reference/curate.py ...]\n" + "".join(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the folder a run wrote (e.g. run_all.py's --out)")
    parser.add_argument("dest", type=Path, help="where it goes, inside this repository")
    args = parser.parse_args()
    if not args.dest.resolve().is_relative_to(REPO):
        parser.error(f"{args.dest} is not inside the repository {REPO}")
    kept, rewritten = curate(args.source, args.dest)
    print(f"{kept} files in {args.dest} ({rewritten} with paths made relative)")


if __name__ == "__main__":
    main()
