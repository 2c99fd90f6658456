"""Client probes the notebooks run against a live server: timed requests on a schedule, a
background /health prober, long inputs, and memory of processes and model weights."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


def send_schedule(url: str, bodies: list[bytes | str], offsets_s: list[float], *, path: str = "/",
                  timeout_s: float = 120.0) -> list[dict]:
    """POST bodies[i] at offsets_s[i] seconds after a common start, each from its own thread and
    connection (opened before the start, so connecting costs nothing on the clock).

    Returns one dict per request: status, sent and answered (time.monotonic(), the same clock
    as the servers' --trace on Linux), latency_ms, and the answer's JSON (or text).
    """
    import httpx

    n = len(bodies)
    results: list[dict | None] = [None] * n
    ready = threading.Barrier(n + 1)  # every connection is open
    go = threading.Event()  # start[0] is set
    start = [0.0]

    def worker(i: int) -> None:
        body = bodies[i].encode() if isinstance(bodies[i], str) else bodies[i]
        with httpx.Client(timeout=timeout_s) as client:
            try:
                client.get(url + "/health")  # open the connection now
            finally:
                ready.wait()
            go.wait()
            delay = start[0] + offsets_s[i] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            try:
                answer = client.post(url + path, content=body)
                status, text = answer.status_code, answer.text
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            answered = time.monotonic()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        results[i] = {"i": i, "status": status, "sent": sent, "answered": answered,
                      "latency_ms": (answered - sent) * 1000, "answer": payload}

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    start[0] = time.monotonic() + 0.02
    go.set()
    for t in threads:
        t.join()
    return results


class Prober:
    """GET url+path every period_s in a background thread, timing each answer.

    with nb.Prober(server.url) as probe: ...   then probe.samples: [{sent, latency_ms, status}]
    """

    def __init__(self, url: str, path: str = "/health", period_s: float = 0.02, timeout_s: float = 60.0):
        self.url, self.path, self.period_s, self.timeout_s = url, path, period_s, timeout_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            client.get(self.url + self.path)
            next_at = time.monotonic()
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.get(self.url + self.path).status_code
                except httpx.HTTPError:
                    status = 0
                answered = time.monotonic()
                self.samples.append({"sent": sent, "latency_ms": (answered - sent) * 1000, "status": status})
                next_at = max(next_at + self.period_s, answered)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s)


def long_inputs(count: int, words: int, seed: int = 0) -> list[str]:
    """count inputs of about `words` words each, made by joining prompts from the load corpus."""
    import random

    from servelab.bench import corpus

    prompts = corpus.load_prompts()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text: list[str] = []
        while len(text) < words:
            text += rng.choice(prompts).split()
        out.append(" ".join(text[:words]))
    return out


def memory_mb(pid: int) -> dict:
    """Resident memory of one process in MB: rss (all its resident pages, shared ones included),
    pss (shared pages divided among the processes sharing them), uss (pages only it holds)."""
    import psutil

    m = psutil.Process(pid).memory_full_info()
    return {"rss_mb": m.rss / 1e6, "pss_mb": m.pss / 1e6, "uss_mb": m.uss / 1e6}


def model_weights_mb(folder: Path | None = None) -> float:
    """Size of the weight files of the default model (or of `folder`), in MB."""
    if folder is None:
        from servelab.models import default_model_dir

        folder = default_model_dir()
    files = [p for p in Path(folder).rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    sizes = {}
    for p in files:  # the same weights may come in two formats: count the largest one only
        sizes[p.suffix] = sizes.get(p.suffix, 0) + p.stat().st_size
    return max(sizes.values(), default=0) / 1e6
