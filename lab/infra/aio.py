"""Small pieces every lab process that serves shares: its event loop and its readiness file."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from lab.infra.files import atomic_write

T = TypeVar("T")


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


def run_coroutine(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, also where this thread already runs a loop (a Jupyter kernel): then
    `main` runs on a loop of its own in a helper thread, and Ctrl-C cancels it there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main)
    loop = asyncio.new_event_loop()
    task = loop.create_task(main)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="lab-loop", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except BaseException:
        loop.call_soon_threadsafe(task.cancel)
        thread.join()
        raise
    finally:
        if not thread.is_alive():
            loop.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
