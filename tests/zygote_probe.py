"""A module the fork-server test runs in a forked child: `main(argv)` runs argv[0] as code."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    exec(argv[0])  # test-only: the test passes a line of its own
    return 0
