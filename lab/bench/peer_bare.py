"""The reference peer of `python -m lab.bench peers`: the job bodies with no queue at all.

`LAB_PEERS_CONC` coroutines run `LAB_PEERS_N` job bodies (`LAB_PEERS_KIND`: noop or io, with
`LAB_PEERS_MS`) on one event loop, then idle until stopped. What a runtime adds to this is its
own cost: claiming, acknowledging, bookkeeping. `--loop` as the worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from lab.bench.peer_jobs import aio_get, anoop
from lab.infra.aio import run_main


async def _run(n: int, conc: int, kind: str, ms: float) -> None:
    remaining = iter(range(n))

    async def slot() -> None:
        for _ in remaining:
            if kind == "noop":
                await anoop()
            else:
                await aio_get(ms)

    await asyncio.gather(*(slot() for _ in range(conc)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m lab.bench.peer_bare", description=__doc__)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ns = p.parse_args()
    env = os.environ
    coro = _run(
        int(env["LAB_PEERS_N"]),
        int(env["LAB_PEERS_CONC"]),
        env["LAB_PEERS_KIND"],
        float(env.get("LAB_PEERS_MS", "50")),
    )
    run_main(coro, use_uvloop=ns.loop == "uvloop")


if __name__ == "__main__":
    main()
