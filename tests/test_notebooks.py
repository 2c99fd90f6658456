"""The walkthrough notebooks: committed clean and in sync with their .py twins, and each one
runs top to bottom in quick mode (SERVELAB_QUICK=1) in a kernel of this interpreter.

The quick runs start real servers and Locust: about 25 minutes for all eight on 2 cores.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from servelab import notebook as nb

NOTEBOOKS = nb.notebooks()
NAMES = ["01_naive_server", "02_dynamic_batching", "03_blocking_the_event_loop", "04_circuit_breaking",
         "05_choosing_a_variant", "06_physics_of_batching", "07_planning_against_an_objective",
         "08_beyond_one_process"]


def test_the_notebooks_are_there_in_order():
    assert [p.stem for p in NOTEBOOKS] == NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean_and_matches_its_py_twin(path):
    import jupytext

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} has execution counts: strip them"
    twin = jupytext.read(path.with_suffix(".py"))
    cells = [(c.cell_type, c.source) for c in notebook.cells]
    assert cells == [(c.cell_type, c.source) for c in twin.cells], (
        f"{path.name} differs from its .py twin: run `jupytext --to ipynb {path.with_suffix('.py')}`"
    )
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "nb.banner()" in code[0].source, "the first code cell prints the versions and the machine"
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "one cell tagged 'parameters' (papermill style)"
    assert 'os.environ.get("SERVELAB_QUICK", "1") == "1"' in parameters[0].source
    assert "SERVELAB_RESULTS" in parameters[0].source
    assert 'os.environ.get("SERVELAB_DEVICE", "auto")' in parameters[0].source
    sources = "".join(c.source for c in code)
    assert "import locust" not in sources, "locust hangs a kernel: run it as a subprocess"


# What starts a server or measures a ceiling: each must be given DEVICE (or, in notebook 6, which
# sets the accelerator beside this CPU, HOST: the CPU on purpose, or a helper's `device`).
STARTERS = {"ServerProcess", "Bench", "run", "sweep", "ceiling", "measure_ceiling"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_server_and_ceiling_gets_the_notebooks_device(path):
    source = path.with_suffix(".py").read_text()
    tree = compile(source, path.name, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    def names(node):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    # Keyword arguments gathered in a dict first, as in sweep(..., **common).
    carry = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and "DEVICE" in names(node.value) for target in node.targets if isinstance(target, ast.Name)}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) in STARTERS]
    assert calls, f"{path.name} starts nothing?"
    for call in calls:
        spread = {k.value.id for k in call.keywords if k.arg is None and isinstance(k.value, ast.Name)}
        assert names(call) & {"DEVICE", "HOST", "device"} or spread & carry, (
            f"{path.name}:{call.lineno}: {ast.unparse(call.func)}(...) without DEVICE")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results folder for all six, as run_all.py does: the ceiling is measured once."""
    return tmp_path_factory.mktemp("notebook-results")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, results):
    out = results / "executed" / path.name
    executed = nb.execute(path, out, quick=True, results=results, timeout_s=540)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    folder = results / path.stem
    assert list(folder.glob("*.png")), f"{path.name} saved no figure under {folder}"
    assert list(folder.glob("*.csv")), f"{path.name} saved no CSV under {folder}"
