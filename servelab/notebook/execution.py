"""Running things from a notebook or a test: the notebooks themselves (tests/test_notebooks.py,
notebooks/run_all.py), several servers at once, and a tiny model built without loading torch."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from servelab.paths import NOTEBOOKS


def notebooks() -> list[Path]:
    """The walkthrough's notebooks, in reading order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def execute(notebook: Path, out: Path | None, *, quick: bool, results: Path, device: str = "auto",
            timeout_s: int = 900):
    """Run a notebook top to bottom in a fresh kernel of this very interpreter, with
    SERVELAB_QUICK, SERVELAB_RESULTS and SERVELAB_DEVICE set; write the executed copy to `out` if given.
    Raises nbclient's CellExecutionError on the first failing cell."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from traitlets import default

    class ThisInterpreter(AsyncKernelManager):
        # No kernel directories: only ipykernel's own spec, which runs sys.executable, so the
        # kernel is this interpreter whatever kernelspecs the machine has installed.
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[])

    nb = nbformat.read(notebook, as_version=4)
    env = dict(os.environ, SERVELAB_QUICK="1" if quick else "0", SERVELAB_DEVICE=device,
               SERVELAB_RESULTS=str(Path(results).resolve()), JUPYTER_PLATFORM_DIRS="1")
    client = NotebookClient(nb, kernel_name="python3", kernel_manager_class=ThisInterpreter,
                            timeout=timeout_s, resources={"metadata": {"path": str(notebook.parent)}})
    try:
        client.execute(env=env)
    finally:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
    return nb


@contextlib.contextmanager
def running(*servers):
    """Start several ServerProcess objects at once (their model loads overlap); always stop all."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.start(), servers))
        yield servers
    finally:
        for s in servers:
            s.stop()


def tiny_fill_mask_model(folder: Path) -> Path:
    """A small random-weight BERT masked-LM (servelab.random_models.build_fill_mask_model), built
    once in a subprocess so this kernel never loads torch."""
    import subprocess
    import sys

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        code = "import sys; from servelab.random_models import build_fill_mask_model as b; b(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True)
    return folder
