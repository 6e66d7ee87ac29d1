"""The curated public API: `lab.__all__` is sorted, complete and every name resolves."""

from __future__ import annotations

import subprocess
import sys

import lab


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert lab.__all__ == sorted(lab.__all__) == sorted(lab._EXPORTS)
    for name in lab.__all__:
        assert getattr(lab, name).__name__ == name


def test_importing_lab_loads_nothing_heavy() -> None:
    code = "import sys, lab; print(sorted(m for m in ('redis', 'aiohttp', 'pandas', 'pydantic') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
