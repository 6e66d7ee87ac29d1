"""Child processes the lab owns (Redis, workers, mocks): none may outlive the lab.

Three layers make sure of it:
1. `spawn` is a context manager: on any exit from the block (normal end, exception, Ctrl-C) the
   child gets SIGTERM, a grace period, then SIGKILL, and is always reaped.
2. On Linux every child asks the kernel for SIGTERM when the lab dies (PR_SET_PDEATHSIG), which
   covers the exits no Python code sees, such as `kill -9` of the lab itself.
3. Children run in their own session, so a Ctrl-C in the terminal reaches only the lab, which
   then stops them in order instead of racing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from lab.errors import ServiceError
from lab.infra.files import UnsafePath

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 64 * 1024
_pending_stop: int | None = None  # the stop signal received, until it has been raised
_defer_stop = 0  # > 0 while a child is being spawned: the signal is only recorded


def die_with_parent(parent_pid: int, niceness: int | None = None) -> Callable[[], None]:
    """What a child runs right after the fork: ask for SIGTERM when the parent process dies (and
    exit at once if it died already, between the fork and this call), and take `niceness` when
    given and allowed (the caller checks which it got). Made in the parent, so that finding libc
    (which may run `ldconfig`) happens once, not in every child."""
    libc_name = ctypes.util.find_library("c")

    def setup() -> None:
        if libc_name is not None:  # every glibc/musl Linux has one
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)
        if niceness is not None:
            with contextlib.suppress(OSError):  # a higher priority needs the privilege
                os.setpriority(os.PRIO_PROCESS, 0, niceness)

    return setup


class Process(Protocol):
    """What `Child` needs of a process: `subprocess.Popen`, or a fork server's child."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, signum: int) -> None: ...


#: A line that names an error: a Python exception (`ModuleNotFoundError: ...`), or a lab CLI's
#: one-line message (`lab.runtime.worker: ...`).
_ERROR_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Exit|Interrupt)\b|lab(?:\.\w+)+: )")


def describe_returncode(code: int | None) -> str:
    """How a process ended, in words: 'exited with code 1', 'was killed by SIGKILL'."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Child:
    """A running child process and where its output goes."""

    name: str
    popen: Process
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    async def exited(self, poll_s: float = 0.1) -> None:
        """Wait until the child exits, without reaping it. On Linux a pidfd wakes the event
        loop: a hundred watches polling every 0.1 s cost a tenth of a core on the host they
        measure; elsewhere, poll every `poll_s`."""
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or already gone (and reaped)
            while self.alive():  # noqa: ASYNC110
                await asyncio.sleep(poll_s)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def readable() -> None:  # called on every turn while readable: once is enough
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote (of its last 64 KiB), to put in an error message."""
        if self.log_path is None:
            return ""
        try:
            fd = os.open(self.log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as f:
            f.seek(max(0, os.fstat(fd).st_size - _TAIL_BYTES))
            text = f.read(_TAIL_BYTES).decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def exit_description(self) -> str:
        """How the child ended ('exited with code 2', 'was killed by SIGKILL'), or 'is still running'."""
        return describe_returncode(self.popen.poll())

    def last_words(self, lines: int = 12) -> str:
        """Why it ended, for an error message: the error line it wrote (a Python exception, a
        lab CLI's message), then its last lines; or that it wrote nothing (a signal, say)."""
        tail = [line for line in self.log_tail(lines).splitlines() if line.strip()]
        where = f" ({self.log_path})" if self.log_path is not None else ""
        if not tail:
            return f"it wrote nothing{where}"
        error = next((line for line in reversed(tail) if _ERROR_LINE.match(line)), tail[-1])
        if tail == [error]:
            return f"{error}{where}"
        shown = "\n".join(f"  | {line}" for line in tail)
        return f"{error}\n  its last output{where}:\n{shown}"

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)

    def stop(self, *, grace_s: float = 5.0) -> int:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; always reaps. Returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %.1fs: killing", self.name, self.pid, grace_s
                )
                self.signal(signal.SIGKILL)
        return self.popen.wait()


@contextlib.contextmanager
def spawn(
    argv: Sequence[str],
    *,
    name: str,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 5.0,
    pass_fds: Sequence[int] = (),
    niceness: int | None = None,
) -> Iterator[Child]:
    """Start `argv` as a child the lab owns; it is stopped and reaped when the block exits.
    `niceness`: the child's, where allowed (else it inherits ours)."""
    out: IO[Any] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:  # never through a link planted where the log goes
            out = os.fdopen(os.open(log_path, flags, 0o644), "ab")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(
                    f"{log_path}: is a symbolic link; the lab never writes through one"
                ) from None
            raise ServiceError(
                f"{log_path}: cannot write the log of {name}: {exc.strerror}"
            ) from None
    try:
        with holding_stop():  # a stop signal now would orphan the child: hold it until it is ours
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                preexec_fn=die_with_parent(os.getpid(), niceness)
                if sys.platform.startswith("linux")
                else None,
            )
            child = Child(name=name, popen=popen, log_path=log_path)
    finally:
        if not isinstance(out, int):
            out.close()  # the child holds its own copy of the descriptor
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    try:
        check_stop()  # a stop signal that came during the spawn lands here, with the child owned
        yield child
    finally:
        child.stop(grace_s=grace_s)


@contextlib.contextmanager
def holding_stop() -> Iterator[None]:
    """Record a stop signal instead of raising it for the block (a child being started is not
    owned yet); `check_stop` raises it afterwards."""
    global _defer_stop
    _defer_stop += 1
    try:
        yield
    finally:
        _defer_stop -= 1


def terminate_all(children: Sequence[Child]) -> None:
    """SIGTERM every child at once, so their graceful stops overlap (`spawn` then reaps each)."""
    for child in children:
        if child.alive():
            child.signal(signal.SIGTERM)


def python_module_argv(module: str, *args: str) -> list[str]:
    """`python -m module args...` with the interpreter that runs the lab."""
    return [sys.executable, "-m", module, *args]


def wait_for(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    children: Sequence[Child] = (),
    interval_s: float = 0.01,
) -> None:
    """Poll `check` until it is true; fail fast, with the child's last output, if a child exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        check_stop()
        for child in children:
            if not child.alive():
                raise ServiceError(
                    f"{child.name} {child.exit_description()} while waiting for {what}: "
                    f"{child.last_words()}"
                )
        if check():
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def _stop_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def check_stop() -> None:
    """Raise the stop signal received earlier, if its first raise was swallowed.

    Python drops an exception raised by a signal handler in some places (an at-fork hook, a
    `__del__`), so a Ctrl-C that lands while a child is being spawned can vanish. Loops that
    wait call this, so such a signal still stops the lab within one poll.
    """
    if _pending_stop is not None:
        raise _stop_exception(_pending_stop)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt and SIGTERM -> SystemExit(143) for the block, remembered for
    `check_stop`, so `with` blocks unwind and stop every child whichever signal arrives."""
    global _pending_stop

    def _raise(signum: int, frame: object) -> None:
        global _pending_stop
        _pending_stop = signum
        if _defer_stop == 0:
            raise _stop_exception(signum)

    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending_stop = None


def env_with_pythonpath() -> dict[str, str]:
    """The current environment, with the lab's source root on PYTHONPATH for `-m` children."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # lab/infra/procs.py -> the source root
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
