"""What a result's manifest records about the code and the machine, and how processes are pinned.
(Package versions: servelab.versions.)"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from servelab.paths import REPO


def git_state(repo=REPO) -> dict:
    """Commit and dirty flag of the working tree; commit None outside git or before a commit.

    SERVELAB_GIT_COMMIT, when set, names the commit instead: scripts/gpu_reference.sh sets it
    from what --prepare recorded, because the copy of the tree sent to a lent GPU machine may
    carry no .git, or a stale one (the first H200 run's manifests read the session's first
    commit, with the later files as untracked)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    named = os.environ.get("SERVELAB_GIT_COMMIT")
    if named:
        return {"commit": named, "short": named[:8], "dirty": None, "untracked": [],
                "from": "SERVELAB_GIT_COMMIT"}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    lines = [] if status is None else status.splitlines()
    # Untracked code changes results as much as edits do; results themselves do not.
    untracked = [line[3:] for line in lines if line.startswith("??") and not line[3:].startswith("results/")]
    return {
        "commit": commit,
        "short": commit[:8] if commit else "nogit",
        "dirty": None if status is None else any(not line.startswith("??") for line in lines),
        "untracked": untracked[:50],
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """GPU names from nvidia-smi (no torch import: this runs in notebooks too)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def machine() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "platform": platform.platform(),
        "gpus": gpus(),
        "executable": sys.executable,
    }


def available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cores_arg(cores: list[int] | None) -> str:
    """The command-line form of a core list, as parse_cores reads it back: [0, 1] -> "0,1"."""
    return ",".join(map(str, cores)) if cores else "none"


def parse_cores(spec: str | list[int] | None, role: str) -> list[int] | None:
    """Cores for one process: "auto", "none", "0", "0,1", "2-3" or a list; None = not pinned.

    auto: the server gets the first available core and the load generator the second, so
    that they do not compete; with one core, nothing is pinned.
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, list):
        return sorted(spec)
    if spec == "auto":
        cores = available_cores()
        if len(cores) < 2 or not hasattr(os, "sched_setaffinity"):
            return None
        return [cores[0]] if role == "server" else [cores[1]]
    cores: set[int] = set()
    for part in str(spec).split(","):
        if "-" in part:
            a, b = part.split("-")
            cores.update(range(int(a), int(b) + 1))
        elif part.strip():
            cores.add(int(part))
    return sorted(cores)
