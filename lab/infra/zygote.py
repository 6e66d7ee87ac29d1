"""A fork server: a process that imported a module once and forks a ready child per request.

A worker instance's Python start-up (interpreter, aiohttp, redis, uvloop imports) costs ~0.7 s
on a 2-core box, every trial, for every instance, all competing for the same cores. The zygote
pays it once per sweep; a child forked from it runs the module's `main(argv)` within
milliseconds. It is safe to fork: the zygote runs no event loop and no thread.

Ownership is the same as `procs.spawn`'s: the zygote is a `spawn`ed child (stopped on any exit,
SIGTERM when the lab dies); each forked child runs in its own session, asks the kernel for
SIGTERM when the zygote dies, and is stopped when its `with` block exits. The zygote reaps its
children and writes each one's exit status next to its log (`<log>.exit`: the code, or minus the
signal that killed it, as `subprocess` says it).

Protocol over an inherited socket, one JSON line each way:
    -> {"module": "lab.runtime.worker", "argv": [...], "log": "/path/w0.log"}
    <- {"pid": 1234, "create_time": 1700000000.12}
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from lab.infra.procs import (
    Child,
    check_stop,
    die_with_parent,
    holding_stop,
    python_module_argv,
    spawn,
)

#: A child gone without an exit file this long after: its zygote died first (and the kernel's
#: parent-death SIGTERM ended it).
ORPHAN_GRACE_S = 1.0


def exit_file(log_path: Path | str) -> Path:
    """Where the zygote writes a child's exit status."""
    return Path(f"{log_path}.exit")


class ForkedProcess:
    """A zygote's child, with the part of `subprocess.Popen` that `procs.Child` uses."""

    def __init__(self, pid: int, create_time: float, log_path: Path) -> None:
        self.pid, self._create_time, self._exit = pid, create_time, exit_file(log_path)
        self.returncode: int | None = None
        self._gone_since: float | None = None

    def _running(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self._create_time
        except psutil.NoSuchProcess:
            return False

    def poll(self) -> int | None:
        """None while it runs (or is not reaped yet); then its exit status, as Popen's."""
        if self.returncode is not None:
            return self.returncode
        if self._exit.exists():
            self.returncode = int(self._exit.read_text())
        elif not self._running():
            now = time.monotonic()
            self._gone_since = self._gone_since or now
            if now - self._gone_since > ORPHAN_GRACE_S:
                self.returncode = -signal.SIGTERM
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.005)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


class Zygote:
    """The parent's end: `spawn` forks a child running `module.main(argv)`."""

    def __init__(self, sock: socket.socket, child: Child) -> None:
        self._sock, self._file = sock, sock.makefile("rwb")
        self.child = child
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def spawn(
        self, module: str, argv: Sequence[str], *, name: str, log_path: Path, grace_s: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[Child]:  # fmt: skip
        """Like `procs.spawn(python_module_argv(module, *argv), env=env)`, in milliseconds. The
        environment goes over the private socket (never on argv, which `ps` shows)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        request: dict[str, Any] = {"module": module, "argv": list(argv), "log": str(log_path)}
        if env is not None:
            request["env"] = dict(env)
        with holding_stop(), self._lock:  # a stop signal now would orphan the child
            self._file.write(json.dumps(request).encode() + b"\n")
            self._file.flush()
            line = self._file.readline()
            if not line:
                raise OSError(f"the fork server exited: {self.child.log_tail()}")
            reply = json.loads(line)
            child = Child(
                name, ForkedProcess(reply["pid"], reply["create_time"], log_path), log_path
            )
        try:
            check_stop()  # a stop signal that came during the request lands here, child owned
            yield child
        finally:
            child.stop(grace_s=grace_s)


@contextlib.contextmanager
def start_zygote(
    preload: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Zygote]:
    """A fork server that imported `preload`, with `env` (default: this process's); stopped
    (with any child left) when the block ends."""
    parent, theirs = socket.socketpair()
    with parent, theirs:
        argv = python_module_argv(
            "lab.infra.zygote", "--fd", str(theirs.fileno()), *(f"--preload={m}" for m in preload)
        )
        with spawn(
            argv, name="zygote", log_path=log_path, pass_fds=(theirs.fileno(),), env=env
        ) as child:
            theirs.close()
            yield Zygote(parent, child)


# -- the zygote's side ------------------------------------------------------------------------


def _run_child(request: dict[str, Any], die_with_zygote: Callable[[], None], fd: int) -> None:
    """In the forked child: a session of its own, output to its log, then `main(argv)`."""
    code = 1
    try:
        os.close(fd)  # the request socket is the zygote's, not the child's
        os.setsid()
        die_with_zygote()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "env" in request:
            os.environ.clear()
            os.environ.update(request["env"])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW  # never through a link
        log = os.open(request["log"], flags, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        sys.argv = [request["module"], *request["argv"]]
        try:
            code = int(importlib.import_module(request["module"]).main(request["argv"]) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(fd: int, preload: Sequence[str]) -> int:
    """Import `preload`, then fork a child per request until the parent closes the socket."""
    for module in preload:
        importlib.import_module(module)
    logs: dict[int, str] = {}  # running children's logs, by pid
    early: dict[int, int] = {}  # children reaped before their log was noted

    def write(log: str, code: int) -> None:
        tmp = f"{log}.exit.tmp"
        with open(tmp, "w") as f:
            f.write(str(code))
        os.replace(tmp, exit_file(log))

    def reap(signum: int, frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            log = logs.pop(pid, None)
            if log is None:
                early[pid] = code
            else:
                write(log, code)

    signal.signal(signal.SIGCHLD, reap)
    die_with_me = die_with_parent(os.getpid())
    with socket.socket(fileno=fd) as sock, sock.makefile("rwb") as stream:
        for line in stream:
            request = json.loads(line)
            exit_file(request["log"]).unlink(missing_ok=True)
            pid = os.fork()
            if pid == 0:
                _run_child(request, die_with_me, fd)
            logs[pid] = request["log"]
            if pid in early:
                write(logs.pop(pid), early.pop(pid))
            try:
                created = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:  # it exited already: the parent will see it gone
                created = 0.0
            stream.write(json.dumps({"pid": pid, "create_time": created}).encode() + b"\n")
            stream.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.infra.zygote", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the inherited request socket")
    parser.add_argument("--preload", action="append", default=[], help="a module to import")
    ns = parser.parse_args(argv)
    return serve(ns.fd, ns.preload)


if __name__ == "__main__":
    sys.exit(main())
