"""User job handlers for the runtime tests, loaded by workers as `tests.handlers:NAME`."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from lab.runtime.jobs import JobContext, burn_cpu

_calls: Counter[str] = Counter()


async def sleep(ctx: JobContext, args: dict[str, Any]) -> None:
    """An IO-like job: `args["s"]` seconds of waiting."""
    await asyncio.sleep(float(args["s"]))


async def sleep_then_burn(ctx: JobContext, args: dict[str, Any]) -> None:
    """`args["s"]` seconds of waiting, then `args["ms"]` ms of CPU: jobs started together end
    in one turn of the event loop, each after the one before has held it for `ms`."""
    await asyncio.sleep(float(args["s"]))
    burn_cpu(float(args["ms"]))


async def fail(ctx: JobContext, args: dict[str, Any]) -> None:
    """Always fails."""
    raise RuntimeError(f"boom {args.get('key')}")


async def fail_times(ctx: JobContext, args: dict[str, Any]) -> dict[str, int]:
    """Fails the first `args["fail"]` attempts of job `args["key"]` in this process, then succeeds."""
    _calls[args["key"]] += 1
    if _calls[args["key"]] <= int(args["fail"]):
        raise RuntimeError(f"attempt {_calls[args['key']]} fails on purpose")
    return {"calls": _calls[args["key"]]}


not_a_coroutine = print
