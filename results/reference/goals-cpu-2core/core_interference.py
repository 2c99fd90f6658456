"""Does the load generator's core slow the server's? Batch-1 inference on core 0, with core 1
idle, then busy-spinning, then idle again. Run from the repo root: .venv/bin/python THIS_FILE

On the 2-vCPU VM of the reference runs it printed (ms per input, 100 inputs):
    idle 15.77  core1 busy 19.67  idle 13.00
    idle 13.86  core1 busy 26.64  idle 13.51
so the offline ceiling (timed with core 1 idle) overstates what a server can reach while
Locust keeps core 1 busy.
"""

import os
import subprocess
import sys
import time

os.sched_setaffinity(0, {0})
import torch  # noqa: E402

from servelab.bench import corpus  # noqa: E402
from servelab.models import load_model  # noqa: E402

torch.set_num_threads(1)
model = load_model(device="cpu")
prompts = corpus.load_prompts()[:100]
for p in prompts[:30]:
    model.predict([p])


def ms_per_input() -> float:
    start = time.perf_counter()
    for p in prompts:
        model.predict([p])
    return (time.perf_counter() - start) * 1000 / len(prompts)


for _ in range(2):
    before = ms_per_input()
    spinner = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    busy = ms_per_input()
    spinner.kill()
    spinner.wait()
    print(f"idle {before:.2f}  core1 busy {busy:.2f}  idle {ms_per_input():.2f}")
