"""Which malloc a server runs on: jemalloc where one is installed, else the C library's (glibc).

Why it matters: every batch of a new shape (batch size x padded length) allocates activations of
new sizes. glibc's malloc keeps what such batches free inside its heaps, split up by the small
blocks allocated in between, and rarely gives it back: the model alone, 8,000 corpus inputs in
batches of 1-16, ended with 198 MB free inside glibc's heaps against 140 MB in use, and RSS grew
8-24% after the first tenth (three runs). Under jemalloc, which keeps blocks of each size class
apart, the same run grew 5% and then held, as fast.
PyTorch's CPU tuning guide recommends jemalloc or TCMalloc for the same reason:
https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html#switch-memory-allocator

A malloc is chosen when a process starts (the loader's LD_PRELOAD), so a server that should run
on jemalloc executes itself again under it, before it has loaded anything heavy: the same
process id, flags and pinned cores (PyTorch's own launcher, torch.backends.xeon.run_cpu, offers
--enable-jemalloc the same way).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

CHOICES = ("auto", "jemalloc", "glibc")
# jemalloc's settings, unless MALLOC_CONF says otherwise: never hand freed pages back to the system
# (its default returns them over 10 s, and each batch then faults them in again: 16% fewer answers
# per second under overload on the CPU, against none with this), and no separate arena that frees
# blocks over 8 MiB at once. PyTorch's launcher (torch.backends.xeon.run_cpu) sets the same.
# RSS then holds at the most the model's batches have needed at once.
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
_REEXECUTED = "SERVELAB_ALLOCATOR_REEXEC"  # set in the environment of the second start: no third


def jemalloc_candidates() -> list[Path]:
    """Where a libjemalloc.so is looked for, in order: this environment (conda's jemalloc, or the
    copy the ray wheel ships, which `make setup` installs), then the system's (Debian's and
    Ubuntu's libjemalloc2, Fedora's jemalloc)."""
    prefixes = [Path(p) for p in (os.environ.get("CONDA_PREFIX"), sys.prefix) if p]
    found = [prefix / "lib" / "libjemalloc.so" for prefix in prefixes]
    found += sorted(Path(sys.prefix, "lib").glob("python3*/site-packages/ray/core/libjemalloc.so"))
    found += [Path(p) for p in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                                "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                                "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so")]
    return found


def find_jemalloc() -> Path | None:
    return next((path for path in jemalloc_candidates() if path.is_file()), None)


def in_use() -> str:
    """'jemalloc' if this process runs on it, else 'glibc' (or the platform's own malloc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "glibc"


def run_under(choice: str) -> None:
    """Execute this process again under jemalloc if `choice` asks for it and it is not in use.

    auto: jemalloc if one is found, else glibc, said in the log. jemalloc: exits with what to do if
    none is found. glibc: the C library's malloc, as Python starts by default."""
    if choice == "glibc" or sys.platform != "linux" or in_use() == "jemalloc":
        return
    path = find_jemalloc()
    if path is None or os.environ.get(_REEXECUTED):
        if choice == "jemalloc":
            sys.exit("error: --allocator jemalloc: no libjemalloc.so could be loaded (looked in "
                     f"{', '.join(map(str, jemalloc_candidates()))}); install one (apt install "
                     "libjemalloc2, or conda install jemalloc), or pass --allocator glibc")
        return
    preload = " ".join(filter(None, [str(path), os.environ.get("LD_PRELOAD")]))
    env = os.environ | {"LD_PRELOAD": preload, "MALLOC_CONF": os.environ.get("MALLOC_CONF", JEMALLOC_CONF),
                        _REEXECUTED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def fix_mmap_threshold(size: int) -> bool:
    """Blocks of `size` bytes or more get their own pages from glibc's malloc, unmapped when freed.

    glibc starts at 128 KiB but raises the threshold to the size of each large block freed, up to
    32 MiB: after one large batch, every activation buffer below that comes from the heap, which
    fragments and rarely shrinks, so RSS grows with the largest batches seen. Setting it fixes it
    (mallopt(3), M_MMAP_THRESHOLD). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, size))
