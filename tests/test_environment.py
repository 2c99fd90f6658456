"""The conda and pip routes install the same packages, and torch stays pinned."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pip_requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def conda_pip_section() -> list[str]:
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.startswith("      - ")]


def test_environment_yml_and_requirements_txt_agree():
    assert [p for p in conda_pip_section() if p != "-e ."] == pip_requirements()


def test_torch_is_pinned_exactly():
    assert "torch==2.13.0" in pip_requirements()
    assert "python=3.11" in (REPO / "environment.yml").read_text()
