"""One prepared, unattended run on a GPU machine: `python -m servelab gpu-reference`.

A GPU machine is lent for minutes, not hours, so the whole measurement is one plan of steps,
rehearsed here on the CPU first and then run once there:

    python -m servelab gpu-reference --plan                          # the steps, their files, no run
    python -m servelab gpu-reference --device cpu --scale rehearsal  # the whole plan here, in minutes
    python -m servelab gpu-reference --device cuda                   # on the GPU machine
    bash scripts/gpu_reference.sh                                    # ditto, from a bare machine

plan.py     the steps: environment, models, profiles, ceiling, served runs on the real device,
            the same runs on the device emulated from the profile just measured, and the
            highest rate under the objective for the best two settings
runner.py   runs them in order within a time budget; one failed step does not stop the rest
summary.py  the one-screen table: served runs, and the emulated device against the real one
"""
