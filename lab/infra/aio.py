"""Small pieces every lab process that serves shares: its event loop and its readiness file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from lab.infra.files import atomic_write


def run_main(main: Coroutine[Any, Any, None], *, use_uvloop: bool = True) -> None:
    """Run `main` to the end on a fresh event loop: uvloop's when asked for and installed."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Announce readiness atomically (a polling parent never reads half a file), readable by
    this user only (it may carry a mock's control token), never through a planted link."""
    atomic_write(path, json.dumps(info, sort_keys=True) + "\n", mode=0o600)
