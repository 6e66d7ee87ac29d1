"""Small pieces every lab process that serves shares: its event loop and its readiness file."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any


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
    """Announce readiness: write then rename, so a polling parent never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, sort_keys=True) + "\n")
    os.replace(tmp, path)
