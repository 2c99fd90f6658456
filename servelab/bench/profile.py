"""A device profile: the model's forward pass alone (no tokenizing, no post-processing), timed
by batch size at a few padded lengths, on the real device; what --device emulated:PROFILE replays.

    python -m servelab profile                       # the default model on this CPU
    python -m servelab profile --device cuda         # with a synchronize after every call

The file has the same manifest fields as a run (code, versions, machine) and the cost model
t(b, L) = a + k*b*L fitted to its points, with each point's error.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from datetime import UTC, datetime

from servelab.bench import corpus
from servelab.bench.ceiling import DEFAULT_BATCH_SIZES  # the same sizes as the ceiling
from servelab.bench.machine import git_state, machine
from servelab.costmodel import fit
from servelab.versions import versions

DEFAULT_LENGTHS = (16, 32, 64)


def measure(model: str | None = None, task: str | None = None, device: str = "auto", *,
            batch_sizes=DEFAULT_BATCH_SIZES, lengths=DEFAULT_LENGTHS, min_seconds: float = 0.3,
            torch_threads: int = 1, cores: list[int] | None = None, dtype: str = "float32",
            progress=print) -> dict:
    """Median seconds per forward pass for each (batch size, padded length), with the model's
    weights in `dtype` (float16 and bfloat16 are for GPUs: a CPU has no fast path for them)."""
    if cores:
        os.sched_setaffinity(0, cores)
    import torch

    from servelab.emulated import is_emulated
    from servelab.models import load_model

    if is_emulated(device):
        raise ValueError("a profile is measured on a real device (cpu, cuda), not an emulated one")
    torch.set_num_threads(torch_threads)
    loaded = load_model(model=model, task=task, device=device)
    net, tokenizer = loaded.pipe.model, loaded.pipe.tokenizer
    net.to(getattr(torch, dtype))
    on_cuda = loaded.device.startswith("cuda")
    texts = corpus.prepare(corpus.load_prompts(), loaded.mask_token)
    points = []
    for length in lengths:
        encoded = tokenizer(texts[: max(batch_sizes)], padding="max_length", truncation=True,
                            max_length=length, return_tensors="pt").to(net.device)
        for size in batch_sizes:
            inputs = {name: tensor[:size] for name, tensor in encoded.items()}
            times, cpu_times, launch_cpu_times = [], [], []
            with torch.inference_mode():
                for _ in range(2):  # warm-up: the first call at a shape is slow
                    net(**inputs)
                while sum(times) < min_seconds or len(times) < 3:
                    start, cpu_start = time.perf_counter(), time.thread_time()
                    net(**inputs)
                    launch_cpu_times.append(time.thread_time() - cpu_start)
                    if on_cuda:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.thread_time() - cpu_start)
            seconds = statistics.median(times)
            point = {"batch_size": size, "tokens": length, "seconds": round(seconds, 7),
                     "cpu_seconds": round(statistics.median(cpu_times), 7),
                     "seq_per_s": round(size / seconds, 2), "calls": len(times), "measured": True}
            if on_cuda:
                # The calling thread's CPU time until the call returns, its kernels queued: on a
                # launch-bound GPU, much of the forward pass is this thread issuing kernels. The
                # emulated device spends it busy (servelab/emulated.py). How much of it holds the
                # GIL is not measured: on the H200, much of it was spent in torch's dispatch and
                # the driver, with the GIL released. cpu_seconds also counts the synchronize's
                # spin-wait.
                point["launch_cpu_seconds"] = round(statistics.median(launch_cpu_times), 7)
            points.append(point)
            progress(f"batch {size:4d} x {length:3d} tokens: {seconds * 1000:8.2f} ms")
    model_fit, errors = fit(points)
    where = {k: v for k, v in machine().items() if k != "executable"}  # no path of this machine
    name_device = (where["gpus"][0].split(",")[0] if on_cuda and where["gpus"] else where["cpu_model"])
    precision = "" if dtype == "float32" else f"-{dtype}"
    return {
        "name": re.sub(r"[^a-z0-9]+", "-", f"{loaded.device}-{loaded.name}{precision}".lower()).strip("-"),
        "device": f"{name_device} ({loaded.device}, {torch_threads} torch thread(s))",
        "model": loaded.name,
        "task": loaded.task,
        "dtype": loaded.dtype,
        "source": "python -m servelab profile: the model's forward pass alone, median of timed calls",
        "measured_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "sequence_tokens": lengths[0],
        "points": points,
        "cost_model": model_fit.to_dict() | {"points": [
            {k: p[k] for k in ("batch_size", "tokens", "seconds", "predicted_s", "relative_error")}
            for p in errors]},
        "cores": cores,
        "git": git_state(),
        "packages": versions(),
        "machine": where,
    }
