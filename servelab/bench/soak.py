"""A soak: many requests at a steady open-loop rate, good and bad mixed, and every answer counted.

    python -m servelab soak --requests 100000 --load 0.7       # 0.7 x the ceiling: ~40 min on 2 cores
    python -m servelab soak --requests 10000 --rate 400 --device emulated:h200-bert-base   # ~30 s
    python -m servelab soak --requests 3000 --rate 50 --sigterm-after 0.5   # SIGTERM half-way

Every input is distinct (a corpus prompt and a serial number). 5% of requests are bad (empty,
not UTF-8, malformed JSON, a lone surrogate, over the body limit) and 1% of clients leave before
their answer. Every answer is checked:
- its status is one the README documents for its kind: 200 for a good input (503 or 504 where
  the breaker may refuse it: counted as refused, not lost), 400 or 413 for a bad one;
- lost: a client that stayed and got no answer (after a SIGTERM, one whose request was all sent
  before it); duplicated: two requests with the same answer
  (inputs are distinct, so are their answers); crossed: an answer that is not its own input's,
  checked exactly for a sample, against the same model run in this process after the load;
- the server's RSS and open file descriptors, sampled every few seconds: RSS growth after the
  warm-up (the first tenth of the requests), and descriptors left open once every client is gone.
The run folder gets a manifest (as a bench run's), summary.json and resources.csv.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from servelab.bench import corpus
from servelab.bench.run import Bench, new_run_dir
from servelab.bench.setup import Setup

BAD_SHARE = 0.05
LEAVER_SHARE = 0.01
SAMPLE_CHECKED = 200  # good answers compared exactly with a local computation
RESOURCE_PERIOD_S = 2.0
# RSS growth: the highest RSS after the second tenth of the requests against the highest in the
# second tenth (the first tenth is warm-up). RSS swings by a batch's working memory as batches come
# and go, so a peak is compared with a peak: against one sample, a swing would read as growth.
WARMED_UP_SHARE = 0.1
GOALS = {"lost": 0, "duplicated": 0, "crossed": 0, "unexpected": 0, "max_rss_growth": 0.05}

# Bad requests: (kind, body, content type, statuses the README documents for it)
BAD_KINDS = (
    ("empty", b"", None, {400}),
    ("not_utf8", b"\xff\xfe not utf-8", None, {400}),
    ("malformed_json", b'{"inputs": ', "application/json", {400}),
    ("lone_surrogate", b'{"inputs": "abc \\ud800 def"}', "application/json", {400}),
    ("oversize", None, None, {413}),  # body: --max-body-bytes + 1
)


@dataclass
class Request:
    seq: int
    kind: str  # "good", "leaver", or a bad kind
    body: bytes
    content_type: str | None
    expected: set[int]
    checked: bool = False  # its answer is kept, to be compared exactly with a local computation
    status: int | None = None  # None: no answer (lost, for a client that stayed)
    answer_hash: str | None = None
    answer: bytes | None = None
    latency_ms: float | None = None
    error: str | None = None  # why no answer came
    sent_at: float | None = None  # when its body was all written (time.perf_counter)


@dataclass
class ResourceSamples:
    rows: list[dict] = field(default_factory=list)

    def sample(self, pid: int, sent: int) -> None:
        import psutil

        try:
            process = psutil.Process(pid)
            memory = process.memory_info()
            # File-backed pages (libraries' code paged in on first use) count in RSS too, but are
            # not a leak: the kernel can drop them. psutil's `shared` is they, on Linux.
            file_mb = getattr(memory, "shared", 0) / 2**20
            self.rows.append({"t": time.time(), "sent": sent, "rss_mb": memory.rss / 2**20,
                              "rss_file_mb": file_mb, "fds": process.num_fds()})
        except psutil.Error:  # the server has exited (a SIGTERM soak): nothing more to sample
            pass


def make_requests(count: int, seed: int, max_body_bytes: int) -> list[Request]:
    rng = random.Random(f"{seed}:soak")
    prompts = corpus.load_prompts()
    out = []
    for seq in range(count):
        roll = rng.random()
        if roll < BAD_SHARE:
            kind, body, content_type, expected = rng.choice(BAD_KINDS)
            body = b"x" * (max_body_bytes + 1) if body is None else body
            out.append(Request(seq, kind, body, content_type, expected))
        else:
            text = f"{rng.choice(prompts)} (request {seq})"  # distinct inputs, distinct answers
            kind = "leaver" if roll < BAD_SHARE + LEAVER_SHARE else "good"
            out.append(Request(seq, kind, text.encode(), None, {200}))
    # Chosen before sending, so that only these answers are kept (all of them would be ~8 KB each).
    good = [r for r in out if r.kind == "good"]
    for r in rng.sample(good, min(SAMPLE_CHECKED, len(good))):
        r.checked = True
    return out


async def send_all(url: str, requests: list[Request], rate: float, seed: int, refusable: bool,
                   samples: ResourceSamples, pid: int, progress, after_last=None) -> None:
    """Send `requests` as Poisson arrivals at `rate`, call after_last() once the last is sent,
    and wait for every outcome."""
    import httpx

    rng = random.Random(f"{seed}:soak-arrivals")
    # Before a SIGTERM, no keep-alive: each request on its own connection, so that one the server
    # never read (refused at connect) is told apart from one it dropped. On a kept-alive idle
    # connection the two look alike: at a SIGTERM the server closes its idle connections, one may
    # close as a request arrives on it, and HTTP/1.1 has no way to say so (measured: 1 reset in
    # 2,000 requests). Without a SIGTERM the server never closes an idle connection first: its
    # keep-alive (--keep-alive-s, 75 s) outlasts httpx's pool expiry (5 s).
    keepalive = 0 if after_last else 200
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=keepalive)
    host, port = url.removeprefix("http://").split(":")
    if refusable:
        for r in requests:
            if r.kind in ("good", "leaver"):
                r.expected = r.expected | {503, 504}
    samples.sample(pid, 0)  # before the first connection: the descriptors' baseline
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        due = 0.0
        tasks = []
        last_sample = 0.0
        for i, r in enumerate(requests):
            due += rng.expovariate(rate)
            # Always yield, even when behind schedule: the requests already started must run.
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
            if r.kind == "leaver":
                tasks.append(asyncio.create_task(leave_early(host, int(port), r)))
            else:
                tasks.append(asyncio.create_task(send_one(client, url, r)))
            now = time.perf_counter()
            if now - last_sample >= RESOURCE_PERIOD_S:
                samples.sample(pid, i)
                last_sample = now
                progress(i, len(requests))
        if after_last:
            after_last()
        await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # every connection closed, and the server's side of it too
    samples.sample(pid, len(requests))


async def send_one(client, url: str, r: Request) -> None:
    headers = {"content-type": r.content_type} if r.content_type else {}
    started = time.perf_counter()

    async def trace(event: str, _info: dict) -> None:  # httpcore's hook, at each step of the exchange
        if event == "http11.send_request_body.complete":
            r.sent_at = time.perf_counter()

    try:
        reply = await client.post(url + "/", content=r.body, headers=headers, extensions={"trace": trace})
    except Exception as exc:  # no answer: lost, unless the server never took the request
        r.error = type(exc).__name__
        return
    r.latency_ms = (time.perf_counter() - started) * 1000
    r.status = reply.status_code
    if reply.status_code == 200:
        r.answer_hash = hashlib.sha1(reply.content).hexdigest()
        if r.checked:
            r.answer = reply.content


async def leave_early(host: str, port: int, r: Request) -> None:
    """Send the whole request, then close without reading the answer."""
    try:
        _, writer = await asyncio.open_connection(host, port)
        head = f"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(r.body)}\r\n\r\n".encode()
        writer.write(head + r.body)
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.close()
    except OSError:
        pass
    r.status = 499  # by definition: nobody read an answer


def check_sample(requests: list[Request], device: str, progress) -> dict:
    """Compare a sample of good answers exactly with the same model run here, after the load."""
    import numpy as np

    from servelab.models import load_model

    sample = [r for r in requests if r.checked and r.status == 200]
    progress(f"checking {len(sample)} answers against a local computation ...")
    model = load_model(device=device)
    crossed = []
    for i in range(0, len(sample), 16):
        chunk = sample[i : i + 16]
        expected = model.predict([r.body.decode() for r in chunk])
        for r, want in zip(chunk, expected, strict=True):
            got = np.asarray(json.loads(r.answer), dtype=float)
            if got.shape != np.shape(want) or not np.allclose(got, want, atol=1e-3):
                crossed.append(r.seq)
    return {"checked": len(sample), "crossed": crossed}


def summarize(requests: list[Request], samples: ResourceSamples, sample_check: dict,
              duration_s: float, sigterm_at: float | None = None) -> dict:
    by_status: dict[str, int] = {}
    for r in requests:
        by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
    stayed = [r for r in requests if r.kind != "leaver"]
    # In flight at a SIGTERM: a request whose body was all sent before it. One sent after it may be
    # refused at connect, or reset: a connection the kernel took into the listen backlog after the
    # server's last accept is reset when the listener closes, whatever the server does (TCP has no
    # way to refuse it more kindly). Without a SIGTERM a request that got no answer is lost.
    not_accepted = {r.seq for r in stayed if r.status is None and sigterm_at is not None
                    and (r.sent_at is None or r.sent_at > sigterm_at)}
    lost = [r.seq for r in stayed if r.status is None and r.seq not in not_accepted]
    lost_set = set(lost)
    unexpected = [(r.seq, r.kind, r.status) for r in stayed
                  if r.status is not None and r.status not in r.expected]
    hashes: dict[str, list[int]] = {}
    for r in requests:
        if r.answer_hash:
            hashes.setdefault(r.answer_hash, []).append(r.seq)
    duplicated = [seqs for seqs in hashes.values() if len(seqs) > 1]
    warm = next((s for s in samples.rows if s["sent"] >= WARMED_UP_SHARE * len(requests)), samples.rows[0])
    second_tenth_ends = 2 * WARMED_UP_SHARE * len(requests)
    in_second_tenth = [s for s in samples.rows if s["t"] >= warm["t"] and s["sent"] < second_tenth_ends]
    reference = _peak(in_second_tenth) or warm
    after = [s for s in samples.rows if s["t"] > reference["t"] and s["sent"] >= second_tenth_ends]
    peak = _peak(after) or reference
    rss_growth = peak["rss_mb"] / reference["rss_mb"] - 1
    good = [r for r in requests if r.kind == "good" and r.status == 200]
    summary = {
        "requests": len(requests),
        "duration_s": duration_s,
        "by_kind": {k: sum(1 for r in requests if r.kind == k) for k in sorted({r.kind for r in requests})},
        "by_status": dict(sorted(by_status.items())),
        "refused_good": sum(1 for r in stayed if r.kind == "good" and r.status in (503, 504)),
        "lost": len(lost),
        "not_accepted_after_sigterm": len(not_accepted),
        "lost_by_error": dict(Counter(r.error for r in stayed if r.seq in lost_set)),
        "duplicated": len(duplicated),
        "crossed": len(sample_check["crossed"]),
        "unexpected": len(unexpected),
        "sample_checked": sample_check["checked"],
        "rss_mb": {"start": samples.rows[0]["rss_mb"], "peak_second_tenth": reference["rss_mb"],
                   "peak_after": peak["rss_mb"], "end": samples.rows[-1]["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples.rows)},
        "rss_growth_after_warm_up": rss_growth,
        # Where that growth is: anonymous memory (the heaps), or file-backed pages.
        "rss_growth_mb": {"anonymous": _anonymous_mb(peak) - _anonymous_mb(reference),
                          "file_backed": peak.get("rss_file_mb", 0) - reference.get("rss_file_mb", 0)},
        "fds": {"start": samples.rows[0]["fds"], "after_warm_up": warm["fds"], "end": samples.rows[-1]["fds"],
                "max": max(s["fds"] for s in samples.rows)},
        "good_p50_ms": _median([r.latency_ms for r in good]),
        "examples": {"lost": lost[:10], "unexpected": unexpected[:10], "duplicated": duplicated[:5],
                     "crossed": sample_check["crossed"][:10]},
    }
    summary["goals_met"] = {
        "lost": summary["lost"] == 0, "duplicated": summary["duplicated"] == 0,
        "crossed": summary["crossed"] == 0, "unexpected": summary["unexpected"] == 0,
        "rss_growth": rss_growth < GOALS["max_rss_growth"],
        "fds": summary["fds"]["end"] <= summary["fds"]["start"],
    }
    return summary


def soak(variant: str = "thread_offloaded", server_args: dict | list | None = None, *,
         requests: int = 100_000,
         rate: float | None = None, load: float = 0.7, setup: Setup | None = None,
         sigterm_after: float | None = None, progress=print) -> tuple[Path, dict]:
    """Run a soak; return its folder and summary. rate: arrivals per second (default: `load` x
    the ceiling). sigterm_after: a share of the requests after which the server gets SIGTERM;
    then every request in flight must get a status, and the server must exit within 5 s."""
    setup = setup or Setup(bracket=False)
    progress = progress or (lambda *_: None)
    run_dir = new_run_dir(setup.results_dir, f"soak_{Path(variant).stem}")  # a variant given by its path too
    progress(f"run folder: {run_dir}")
    with Bench(variant, server_args, setup, log_dir=run_dir, progress=progress) as bench:
        if rate is None:
            if not bench.ceiling:
                raise RuntimeError("no ceiling known to take --load from: pass --rate, or measure one "
                                   "with `python -m servelab ceiling`")
            rate = load * bench.ceiling.value
        settings = bench.server.info["settings"]
        batch = make_requests(requests, setup.seed, settings["max_body_bytes"])
        refusable = bool(settings.get("max_queue") or settings.get("queue_timeout_ms"))
        samples = ResourceSamples()
        sigterm = {}
        if sigterm_after is not None:  # send only that share; SIGTERM right after the last one
            batch = batch[: int(sigterm_after * requests)]

        def stop_server():
            sigterm["at"] = time.perf_counter()
            os.kill(bench.server.pid, signal.SIGTERM)

        def show(i: int, total: int) -> None:
            progress(f"{i}/{total} sent")

        progress(f"soak: {len(batch)} requests at {rate:.1f}/s to {variant} ...")
        started = time.perf_counter()
        with _pinned(bench.locust_cores):  # the client is the load generator: its core, not the server's
            asyncio.run(send_all(bench.server.url, batch, rate, setup.seed, refusable or bool(sigterm_after),
                                 samples, bench.server.pid, show,
                                 after_last=stop_server if sigterm_after is not None else None))
        duration_s = time.perf_counter() - started
        exit_s = _exit_seconds(bench.server.process, sigterm["at"]) if sigterm else None
        manifest = bench.base_manifest() | {"soak": {"requests": requests, "rate": rate, "seed": setup.seed,
                                                     "sigterm_after": sigterm_after}}
    sample_check = check_sample(batch, settings["device"], progress)
    summary = summarize(batch, samples, sample_check, duration_s, sigterm.get("at")) | {
        "variant": variant, "rate": rate, "settings": settings}
    if sigterm:
        summary["sigterm"] = {"after_requests": len(batch), "exit_s": exit_s,
                              "exited_within_5_s": exit_s is not None and exit_s <= 5.0}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (run_dir / "resources.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["t", "sent", "rss_mb", "rss_file_mb", "fds"])
        writer.writeheader()
        writer.writerows(samples.rows)
    return run_dir, summary


@contextlib.contextmanager
def _pinned(cores: list[int] | None):
    """This process on `cores` for the block, then back where it was."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _exit_seconds(process, since: float) -> float | None:
    try:
        process.wait(timeout=30)
    except Exception:
        return None
    return time.perf_counter() - since


def _peak(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda s: s["rss_mb"], default=None)


def _anonymous_mb(sample: dict) -> float:
    return sample["rss_mb"] - sample.get("rss_file_mb", 0)


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def describe(summary: dict) -> str:
    met = summary["goals_met"]
    lines = [
        f"{summary['requests']} requests in {summary['duration_s']:.0f} s at {summary['rate']:.1f}/s: "
        f"{summary['by_status']}",
        f"lost {summary['lost']}, duplicated {summary['duplicated']}, crossed {summary['crossed']} "
        f"(of {summary['sample_checked']} checked exactly), unexpected statuses {summary['unexpected']}",
        f"RSS peaks {summary['rss_mb']['peak_second_tenth']:.0f} MB in the second tenth -> "
        f"{summary['rss_mb']['peak_after']:.0f} MB after "
        f"({summary['rss_growth_after_warm_up']:+.1%}: anonymous "
        f"{summary['rss_growth_mb']['anonymous']:+.0f} MB, file-backed "
        f"{summary['rss_growth_mb']['file_backed']:+.0f} MB); open fds {summary['fds']['start']} before, "
        f"{summary['fds']['max']} at most, {summary['fds']['end']} after",
        "goals: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in met.items()),
    ]
    if "sigterm" in summary:
        lines.append(f"SIGTERM after {summary['sigterm']['after_requests']} requests: exited in "
                     f"{summary['sigterm']['exit_s']:.1f} s; {summary['not_accepted_after_sigterm']} sent "
                     "after it got no answer (refused, or reset from the listen backlog)")
    return "\n".join(lines)

