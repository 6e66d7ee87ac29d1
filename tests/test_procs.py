"""`lab.infra.procs`: what the lab knows about the processes it owns."""

from __future__ import annotations

import asyncio
import os
import sys

from lab.infra.procs import spawn


def test_a_watch_wakes_when_its_child_exits_and_leaves_the_reaping_to_its_owner() -> None:
    argv = [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"]
    with spawn(argv, name="short") as child:
        asyncio.run(asyncio.wait_for(child.exited(), timeout=30))
        # exited, not reaped: the kernel still holds its status for `poll`
        status = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        assert status is not None and status.si_status == 3
        assert child.exit_description() == "exited with code 3"
        # an already reaped child: the watch returns at once
        asyncio.run(asyncio.wait_for(child.exited(), timeout=30))
