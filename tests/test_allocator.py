"""servelab/allocator.py: the choice of malloc, without starting a server (tests/test_variants.py
starts them)."""

import sys

import pytest

from servelab import allocator

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc are Linux's")


def test_this_environment_has_a_jemalloc_and_pytest_runs_on_glibc():
    assert allocator.find_jemalloc() is not None, allocator.jemalloc_candidates()
    assert allocator.in_use() == "glibc"


def test_without_a_jemalloc_auto_stays_on_glibc_and_jemalloc_says_what_to_do(monkeypatch):
    monkeypatch.setattr(allocator, "jemalloc_candidates", list)
    allocator.run_under("auto")  # returns: no exec, no exit
    allocator.run_under("glibc")
    with pytest.raises(SystemExit) as exit_:
        allocator.run_under("jemalloc")
    assert "apt install libjemalloc2" in str(exit_.value)
    assert "--allocator glibc" in str(exit_.value)


def test_a_second_start_never_starts_a_third(monkeypatch):
    """If the loader could not preload the library, the process must serve on, not loop."""
    monkeypatch.setenv("SERVELAB_ALLOCATOR_REEXEC", "1")
    monkeypatch.setattr(allocator.os, "execve", lambda *args: pytest.fail("executed again"))
    allocator.run_under("auto")
