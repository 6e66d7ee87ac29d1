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

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.errors import ServiceError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_pending_stop: int | None = None  # the stop signal received, until it has been raised
_defer_stop = 0  # > 0 while a child is being spawned: the signal is only recorded


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """What the child runs before exec: ask for SIGTERM when the parent process dies (and exit
    at once if it died already, between the fork and this call)."""
    libc_name = ctypes.util.find_library("c")

    def setup() -> None:
        if libc_name is not None:  # every glibc/musl Linux has one
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


@dataclass
class Child:
    """A running child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote, to put in an error message."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

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
) -> Iterator[Child]:
    """Start `argv` as a child the lab owns; it is stopped and reaped when the block exits."""
    out: IO[Any] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    global _defer_stop
    _defer_stop += 1  # a stop signal now would orphan the child: hold it until it is ours
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
        )
    except BaseException:
        _defer_stop -= 1
        raise
    finally:
        if not isinstance(out, int):
            out.close()  # the child holds its own copy of the descriptor
    child = Child(name=name, popen=popen, log_path=log_path)
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    try:
        _defer_stop -= 1
        check_stop()  # a stop signal that came during the spawn lands here, with the child owned
        yield child
    finally:
        child.stop(grace_s=grace_s)


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
                    f"{child.name} exited with code {child.popen.returncode} while waiting for "
                    f"{what}; its last output:\n{child.log_tail()}"
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
