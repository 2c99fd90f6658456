"""The install routes agree: requirements.txt, the servelab package's dependencies and extras
(pyproject.toml), environment.yml and the Makefile's Python check; torch stays pinned exactly,
and serving does not pull in the load generator, the notebooks or the test tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = ("bench", "notebooks", "test")


def requirement_lines(path: Path) -> list[str]:
    lines = (REPO / path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def name(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def dynamic_files(entry: dict) -> list[str]:
    return entry["file"]


def pip_requirements() -> list[str]:
    """requirements.txt, with its -r lines expanded."""
    out = []
    for line in requirement_lines(Path("requirements.txt")):
        if line.startswith("-r "):
            out += requirement_lines(Path(line[3:].strip()))
        else:
            out.append(line)
    return out


def conda_pip_section() -> list[str]:
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.startswith("      - ")]


def test_requirements_txt_is_the_runtime_list_then_each_extra():
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    files = dynamic_files(dynamic["dependencies"])
    files += [f for extra in EXTRAS for f in dynamic_files(dynamic["optional-dependencies"][extra])]
    assert requirement_lines(Path("requirements.txt")) == [f"-r {f}" for f in files]
    every_file = sorted(str(p.relative_to(REPO)) for p in (REPO / "requirements").glob("*.txt"))
    assert sorted(files) == every_file, "a file in requirements/ that no extra installs"


def test_the_all_extra_is_every_extra():
    optional = PYPROJECT["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert set(optional) == {*EXTRAS, "all"}
    assert dynamic_files(optional["all"]) == [f for extra in EXTRAS for f in dynamic_files(optional[extra])]


def test_environment_yml_and_requirements_txt_agree():
    assert [p for p in conda_pip_section() if p != "-e ."] == pip_requirements()
    assert conda_pip_section()[-1] == "-e ."


def test_every_requirement_is_pinned_once_and_torch_exactly():
    requirements = pip_requirements()
    assert all("==" in r for r in requirements), [r for r in requirements if "==" not in r]
    names = [name(r) for r in requirements]
    assert len(names) == len(set(names)), "a package listed twice"
    # An open range would pull a multi-GB CUDA build onto a CPU machine.
    assert "torch==2.13.0" in requirement_lines(Path("requirements/runtime.txt"))


def test_serving_does_not_depend_on_the_load_generator_notebooks_or_test_tools():
    runtime = {name(r) for r in requirement_lines(Path("requirements/runtime.txt"))}
    assert not runtime & {"locust", "jupyterlab", "matplotlib", "nbclient", "pytest", "ruff"}
    test = {name(r) for r in requirement_lines(Path("requirements/test.txt"))}
    assert {"pytest", "pytest-timeout", "ruff"} <= test


def test_one_python_version_everywhere():
    makefile = (REPO / "Makefile").read_text()
    assert "sys.version_info[:2] == (3, 11)" in makefile
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12"
    assert "  - python=3.11" in (REPO / "environment.yml").read_text().splitlines()
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"


def test_every_phony_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
    defined = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    assert set(phony) <= defined, set(phony) - defined
