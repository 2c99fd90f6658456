"""One CSV row per request, for analysis outside Locust (`--request-log PATH`).

Columns:
  seq             order of the request's intended send time within its user
  user            "open" for the open-loop scheduler, else the closed-loop user's number
  intended_send_s when the request was meant to go (Unix seconds); for closed-loop users, when
                  the user was ready to send it, which is also when it went
  actual_send_s   when the generator sent it
  lateness_ms     actual - intended: time the generator itself lost (a late open-loop send is
                  the generator's fault, not the server's)
  latency_ms      answer - intended: what a user whose request was due then would see
  service_ms      answer - actual send
  status          HTTP status; 0 = no answer (refused, reset, timed out); -1 = still waiting
                  when the test stopped
  input_words     words in the input
  error           the server's error message, or the transport error
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

COLUMNS = [
    "seq",
    "user",
    "intended_send_s",
    "actual_send_s",
    "lateness_ms",
    "latency_ms",
    "service_ms",
    "status",
    "input_words",
    "error",
]

log = logging.getLogger("loadtests")


class RequestLog:
    def __init__(self) -> None:
        self._file = None
        self._writer = None
        self.path: Path | None = None

    def open(self, path: str | None) -> None:
        """Start a new file (each test start overwrites); no path: log nothing."""
        self.close()
        if not path:
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def write(
        self,
        seq: int,
        user: str,
        intended: float,
        actual: float,
        answered: float | None,
        status: int,
        input_words: int,
        error: str = "",
    ) -> None:
        if self._writer is None:
            return
        latency = "" if answered is None else f"{(answered - intended) * 1000:.3f}"
        service = "" if answered is None else f"{(answered - actual) * 1000:.3f}"
        self._writer.writerow(
            [
                seq,
                user,
                f"{intended:.6f}",
                f"{actual:.6f}",
                f"{(actual - intended) * 1000:.3f}",
                latency,
                service,
                status,
                input_words,
                error,
            ]
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            log.info("per-request log written to %s", self.path)
        self._file = self._writer = None
