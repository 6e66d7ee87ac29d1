"""The docs stay true to the code: every trials.csv column and every shipped scenario is listed."""

from __future__ import annotations

from pathlib import Path

from lab.results import TRIAL_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_trial_column() -> None:
    missing = [c for c in TRIAL_COLUMNS if f"| `{c}` |" not in README]
    assert missing == []


def test_readme_lists_every_shipped_scenario() -> None:
    missing = [p.name for p in (ROOT / "scenarios").glob("*.yaml") if f"`{p.name}`" not in README]
    assert missing == []


def test_readme_first_screen_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    test_command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev,ray]' && .venv/bin/python -m pytest"
    assert "python -m lab.sweep scenarios/quickstart.yaml" in first_screen
    assert test_command in first_screen
    assert test_command in (ROOT / ".ci" / "run").read_text()
