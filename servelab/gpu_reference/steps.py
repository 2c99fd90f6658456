"""The two steps that are functions rather than command lines: what the machine is, and the
models, made without the hub. Each takes the plan's Run (not imported here: plan.py builds its
steps from these)."""

from __future__ import annotations

import json
import math
import subprocess


def environment(run) -> None:
    """The versions, the machine, and what torch sees: the manifest of the whole folder."""
    import torch

    from servelab.bench.machine import git_state, machine
    from servelab.versions import versions

    cuda = torch.cuda.is_available()
    gpu = {}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
               "torch_cuda": torch.version.cuda}
    where = {k: v for k, v in machine().items() if k != "executable"}  # no path of this machine
    info = {"options": {k: str(v) for k, v in vars(run.options).items() if k != "work"},
            "torch_sees_cuda": cuda, "gpu": gpu, "nvidia_smi": _nvidia_smi(), "machine": where,
            "packages": versions(), "git": git_state()}
    if run.options.device.startswith("cuda") and not cuda:
        raise RuntimeError(f"--device {run.options.device}, but torch {torch.__version__} sees no GPU: "
                           "install torch's CUDA build for this machine")
    (run.out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def models(run) -> None:
    """MiniLM, as given or as a random-weight copy of its shapes, and a BERT-base-sized fill-mask
    model with random weights and the real vocabulary. Built once in the work folder."""
    from servelab.models import default_model_dir
    from servelab.random_models import WEIGHT_FILES, build_fill_mask_model, build_random_copy

    source = run.options.minilm or default_model_dir()
    has_weights = any((source / name).is_file() for name in WEIGHT_FILES)
    minilm = run.model_dir("minilm")
    random_minilm = run.options.random_weights or not has_weights
    if not (minilm / "config.json").is_file():
        minilm.parent.mkdir(parents=True, exist_ok=True)
        if random_minilm:
            build_random_copy(source, minilm)
        else:
            minilm.symlink_to(source.resolve(), target_is_directory=True)
    bert = run.model_dir("bert-base")
    if not (bert / "config.json").is_file():
        build_fill_mask_model(bert, size="base", vocab_folder=source)
    described = {
        "minilm": {"weights": "random, MiniLM's shapes" if random_minilm else "the real all-MiniLM-L6-v2",
                   "parameters": _parameters(minilm)},
        "bert-base": {"weights": "random, bert-base-uncased's shapes and vocabulary",
                      "parameters": _parameters(bert)},
    }
    (run.out / "models.json").write_text(json.dumps(described, indent=2) + "\n")


def _parameters(folder) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
