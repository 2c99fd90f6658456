"""Results folders and files: a notebook's folder and figure defaults, saved figures, CSVs
written and read back, and the banner saying which code and machine made them."""

from __future__ import annotations

import csv
from pathlib import Path

from servelab.versions import versions


def banner() -> dict:
    """Print (and return) the versions and the machine that made this notebook's results."""
    from servelab.bench.machine import git_state, machine

    names = ("servelab", "torch", "transformers", "starlette", "uvicorn", "locust", "matplotlib", "numpy")
    packages = versions(names, missing="not installed")
    git = git_state()
    info = {"packages": packages, "git": git, "machine": machine()}
    m = info["machine"]
    print("  ".join(f"{k} {v}" for k, v in packages.items()))
    print(f"code {git['short']}{' (uncommitted changes)' if git['dirty'] else ''}")
    print(f"{m['cpu_model']}, {len(m['cores_available'])} of {m['cpu_count']} cores available, "
          f"{m['platform']}; GPUs: {', '.join(m['gpus']) or 'none'}; kernel: {m['executable']}")
    return info


def setup(results: Path, name: str) -> Path:
    """The notebook's own results folder (created), and matplotlib defaults for every figure."""
    import matplotlib.pyplot as plt

    folder = Path(results).resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.figsize": (10, 4), "axes.spines.top": False, "axes.spines.right": False})
    return folder


def save(fig, folder: Path, name: str) -> Path:
    """Save a figure as folder/name.png (the CSV behind it is written by the caller)."""
    path = Path(folder) / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as a CSV; the columns are every key of any row, in the order first seen."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows with numbers as floats, empty cells as None (sweep CSVs, and the ones written here)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    if text in ("", "None", None):
        return None
    if text in ("True", "False"):  # flags such as above_ceiling
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def fresh(path: Path, reuse: bool) -> Path:
    """A sweep CSV to fill: removed first unless reuse (then its finished points are kept)."""
    path = Path(path)
    if not reuse and path.exists():
        path.unlink()
    return path

