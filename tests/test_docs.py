"""The docs stay true to the code: every trials.csv column and every shipped scenario is listed."""

from __future__ import annotations

import re
import subprocess
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


#: Top-level folders of a machine, and folders beside the checkout, that a clone will not have
#: (named, not written as paths, so that this file passes its own check).
MACHINE_ROOTS = ("tmp", "work", "root", "home")
SIBLINGS = ("shared",)


def test_no_committed_file_points_outside_the_repository() -> None:
    """The repository stands alone: no machine's paths, no sibling folders."""
    roots, siblings = "|".join(MACHINE_ROOTS), "|".join(SIBLINGS)
    outside = re.compile(rf"(?<![\w.])/(?:{roots})/|\.\./(?:{siblings})\b")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    hits = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file() or path.suffix in {".parquet", ".png"}:
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name.decode()}: {m.group(0)}" for m in outside.finditer(text)]
    assert hits == []
