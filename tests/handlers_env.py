"""A user handler module that imports in the lab's process but not in a worker whose environment
lacks what it needs (as a native dependency or a setting missing on one host would)."""

from __future__ import annotations

import os
from typing import Any

from lab.runtime.jobs import JobContext

if os.environ.get("LAB_TEST_BREAK_HANDLER_IMPORT"):
    import lab_test_missing_dependency  # noqa: F401


async def ok(ctx: JobContext, args: dict[str, Any]) -> None:
    """Does nothing."""
