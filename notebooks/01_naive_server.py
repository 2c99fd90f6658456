# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The naive server: one model, one queue, one worker
#
# The transformers guide *Using pipelines for a webserver* makes one point above all: the web
# server does the light work (receive, answer) and **one** worker owns the model, loaded
# **once**, fed by an `asyncio.Queue`. `server_variants/naive.py` is that server, made correct
# for today's Starlette. This notebook starts it, queries it as the guide does, measures what
# "load the model once" saves in memory, and shows what one bad request did to the guide's loop.
#
# Every server here runs as a subprocess inside a `with` block, so it is stopped even when a
# cell fails. Results (CSV behind each figure, PNGs) go under `RESULTS`.

# %%
from servelab import notebook as nb

nb.banner();

# %% tags=["parameters"]
import os
from pathlib import Path

QUICK = os.environ.get("SERVELAB_QUICK", "1") == "1"  # quick: a smoke run of a few seconds per step
DEVICE = os.environ.get("SERVELAB_DEVICE", "auto")  # cpu, cuda, or emulated:h200-bert-base (an emulated accelerator, see servelab/emulated.py)
RESULTS = Path(os.environ.get("SERVELAB_RESULTS", "../results/notebooks"))

# %%
import asyncio

import httpx
import matplotlib.pyplot as plt

from servelab.process import ServerProcess

N_COPIES = 3  # separate processes, each with its own model copy
N_CLIENTS = 16 if QUICK else 64  # concurrent requests the one-copy server answers meanwhile
OUT = nb.setup(RESULTS, "01_naive_server")
print(f"quick={QUICK}, device={DEVICE}; results in {OUT}")

# %% [markdown]
# ## Start it and query it as the guide does
#
# The guide serves `google-bert/bert-base-uncased` for fill-mask and queries it with
# `curl -X POST -d "test [MASK]" http://127.0.0.1:8000/`. Offline, we serve a tiny random-weight
# BERT with the real bert-base-uncased tokenizer instead: same task, same answer format, but
# its guesses are random words (the packaged MiniLM, our default model, has no masked-LM head).

# %%
tiny = nb.tiny_fill_mask_model(RESULTS / "models" / "tiny-bert")

with ServerProcess("naive", {"model": tiny, "task": "fill-mask", "device": DEVICE},
                   log=OUT / "naive_fill_mask.log") as server:
    # curl -X POST -d "test [MASK]" http://127.0.0.1:PORT/
    answer = httpx.post(server.url + "/", content=b"test [MASK]")
    print(f"POST 'test [MASK]' -> {answer.status_code}")
    for guess in answer.json()[:3]:
        print(f"   {guess['token_str']!r:14} score {guess['score']:.5f}   {guess['sequence']!r}")
    bad = httpx.post(server.url + "/", content=b"test")  # the guide's loop died on this one
    print(f"POST 'test'        -> {bad.status_code} {bad.json()['error']!r}")
    again = httpx.post(server.url + "/", content=b"test [MASK]")
    print(f"POST 'test [MASK]' -> {again.status_code}; /health: {httpx.get(server.url + '/health').json()}")
    fill_mask_statuses = [answer.status_code, bad.status_code, again.status_code]

# %% [markdown]
# ## What one bad request did to the guide's loop
#
# The guide's worker is one task: take `(string, response_queue)`, call the pipeline, put the
# answer. A fill-mask pipeline raises on an input without `[MASK]`. Nothing catches it, so the
# task ends, silently (the exception sits in a task object nobody awaits), and every client
# after it waits for an answer that never comes. Here is that loop, with a stand-in pipeline
# that raises as the real one does, and clients that give up after 1 s instead of forever.

# %%
def pipe(text):  # stands in for pipeline("fill-mask"): raises on an input without [MASK]
    if "[MASK]" not in text:
        raise ValueError(f"No mask_token ([MASK]) found on the input: {text!r}")
    return [{"token_str": "ok", "sequence": text.replace("[MASK]", "ok")}]


async def server_loop(q):  # the guide's server_loop, as written
    while True:
        (string, response_q) = await q.get()
        out = pipe(string)
        await response_q.put(out)


async def client(q, text):
    response_q = asyncio.Queue()
    await q.put((text, response_q))
    try:
        return await asyncio.wait_for(response_q.get(), timeout=1.0)
    except TimeoutError:
        return "no answer after 1 s (the guide's client would wait forever)"


async def guide_demo():
    q = asyncio.Queue()
    worker = asyncio.create_task(server_loop(q))
    for text in ["test [MASK]", "test", "another [MASK]", "one more [MASK]"]:
        print(f"{text!r:18} -> {await client(q, text)}")
    print(f"worker task done: {worker.done()}; it died of: {worker.exception()!r}")


await guide_demo()

# %% [markdown]
# Our naive server catches what the model raises and answers that one request, so the loop
# lives on. It also checks a fill-mask input for exactly one mask before queueing it, so the
# client gets a one-line 400 at once instead of a 500 (see `LoadedModel.check_input`).

# %%
print(f"our naive.py, same three requests: {fill_mask_statuses}")
assert fill_mask_statuses == [200, 400, 200]

# %% [markdown]
# ## What "load the model once" saves
#
# The alternative to one model-owning worker is one model copy per process: `N` worker
# processes, the usual way to use `N` cores for a web app (`gunicorn -w N`, `uvicorn --workers N`).
# We start `N_COPIES` naive servers on the default model (all-MiniLM-L6-v2), then compare their
# memory with one server that has just answered `N_CLIENTS` concurrent requests.
#
# Three numbers per process (`psutil`): **RSS** counts every resident page, including the shared
# libraries (torch's alone are hundreds of MB) that the OS maps once for all processes, so a sum
# of RSS overstates; **PSS** splits each shared page among the processes sharing it, so PSS sums
# to the real total; **USS** is memory only that process holds: what one more copy costs.

# %%
one = ServerProcess("naive", {"device": DEVICE}, log=OUT / "naive_one.log", torch_threads=1)
copies = [ServerProcess("naive", {"device": DEVICE}, log=OUT / f"naive_copy{i}.log", torch_threads=1)
          for i in range(N_COPIES)]
memory_rows = []

with nb.running(one):
    answers = nb.send_schedule(one.url, nb.long_inputs(N_CLIENTS, 20), [0.0] * N_CLIENTS)
    assert all(a["status"] == 200 for a in answers), answers
    memory_rows.append({"setup": f"1 process, after {N_CLIENTS} concurrent requests", "processes": 1,
                        **nb.memory_mb(one.process.pid)})
    MEASURED_ON = one.info["model"]["device"]  # what DEVICE "auto" became, for the figure

with nb.running(*copies):
    per_copy = []
    for server in copies:
        assert httpx.post(server.url + "/", content=b"the weather is nice today").status_code == 200
        per_copy.append(nb.memory_mb(server.process.pid))  # measured with all copies running
    memory_rows.append({"setup": f"{N_COPIES} processes, one model copy each", "processes": N_COPIES,
                        **{k: sum(m[k] for m in per_copy) for k in per_copy[0]}})

weights_mb = nb.model_weights_mb()
nb.write_csv(OUT / "memory.csv", memory_rows)
for row in memory_rows:
    print(f"{row['setup']:45} RSS {row['rss_mb']:7.0f} MB   PSS {row['pss_mb']:7.0f} MB   "
          f"USS {row['uss_mb']:7.0f} MB")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
nb.plot_memory(ax, memory_rows, weights_mb)
ax.set_title(f"Memory of one model-owning process vs one model copy per process, on {MEASURED_ON}")
nb.save(fig, OUT, "memory")
plt.show()

single, many = memory_rows
print(f"{N_COPIES} copies hold {many['pss_mb'] / single['pss_mb']:.1f}x the memory (PSS) of one process "
      f"serving {N_CLIENTS} clients at once; each extra copy adds about "
      f"{(many['pss_mb'] - single['pss_mb']) / (N_COPIES - 1):.0f} MB "
      f"({weights_mb:.0f} MB of it is the weights' file size).")

# %% [markdown]
# One process holding the model answers many clients at once; each extra copy costs its own
# weights plus its own Python, torch and tokenizer state (the gap between the bars and the
# weight line). On a GPU the same holds for device memory, where a second copy often does not
# fit at all. What one process does *not* give you is more compute: a single worker runs one
# pipeline call at a time. The next notebook makes each call count by batching.
#
# Clean-up check: every server started here has been stopped.

# %%
assert one.process is None and all(c.process is None for c in copies)
