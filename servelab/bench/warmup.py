"""The warm-up before a measurement: a CPU kernel's first call at each new input shape is slow,
and a batching server forms shapes by length and by batch size, so both are covered."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from servelab.bench import corpus
from servelab.process import ServerProcess, http


def warm_up(server: ServerProcess, prompts: list[str], max_batch_size: int = 64, lengths: int = 16,
            seed: int = 0) -> dict:
    """Send inputs of every length alone, then in concurrent bursts of growing size.

    Bursts let a batching server form batches of several sizes and paddings. Returns counts for
    the manifest; errors are counted, not raised.
    """
    mask_token = (server.info or {}).get("model", {}).get("mask_token")
    spread = corpus.prepare(corpus.spread_by_length(prompts, lengths), mask_token, seed)
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    started = time.perf_counter()

    def send(text: str) -> None:
        try:
            code = http("POST", f"{server.url}/", text.encode("utf-8"), timeout=120)[0]
        except OSError:
            code = 0
        with lock:
            statuses[str(code)] = statuses.get(str(code), 0) + 1

    for text in spread:
        send(text)
    burst = 2
    while burst <= max(2, max_batch_size):
        texts = [spread[(i * 7) % len(spread)] for i in range(burst)]
        with ThreadPoolExecutor(burst) as pool:
            list(pool.map(send, texts))
        burst *= 2
    server.check_alive()
    return {
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "seconds": round(time.perf_counter() - started, 3),
    }
