"""What a sweep keeps running across its trials on this host, so a trial's fixed cost is
milliseconds (`lab.sweep.placement.LocalPlacement` uses it; a cluster's trials do not).

- The mock services: one process per service for the whole sweep. Before each trial it is reset
  to exactly what a fresh process started with that trial's seed would be (`POST /_lab/reset
  {"seed": N}`: random streams, token bucket, documents, figures). A mock still serving the
  last trial's requests is waited for, and restarted if it does not empty: nothing leaks.
- A fork server (`lab.infra.zygote`) that imported the worker once: an instance starts in
  milliseconds instead of a fresh interpreter's ~0.7 s.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.infra.files import atomic_write
from lab.infra.procs import Child, spawn
from lab.infra.sockets import listening_socket, served_argv, url_of
from lab.infra.zygote import Zygote, start_zygote
from lab.mocks.control import TOKEN_ENV, MockControl, new_token
from lab.mocks.spec import ServiceSpec, spec_to_json
from lab.sweep.placement import mock_args

#: How long a mock may take to finish the last trial's requests before it is restarted.
QUIET_TIMEOUT_S = 5.0

#: Modules the fork server imports once (the worker and everything it loads).
PRELOAD = ("lab.runtime.worker",)


@dataclass
class _Mock:
    spec: ServiceSpec  # as started (its seed is replaced at every reset)
    url: str
    child: Child
    stack: contextlib.ExitStack


class ServicePool:
    """The scenario's mock services by name, started on first use, reset for every trial."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.token = new_token()  # the mocks' /_lab/ routes answer only to this pool
        self._mocks: dict[str, _Mock] = {}
        self.restarts = 0  # mocks restarted because they would not empty
        self.quiet_timeout_s = QUIET_TIMEOUT_S
        self.starting: list[Path] = []  # ready files of the mocks the last checkout started

    def checkout(self, specs: dict[str, ServiceSpec]) -> dict[str, str]:
        """URLs of `specs` (each with the seed the trial wants), every one as if just started.

        A mock started now is not waited for: the caller waits for `starting`, alongside its
        own children, so that everything starts at once."""
        self.starting = []
        for name, spec in specs.items():
            mock = self._mocks.get(name)
            if mock is not None and not self._same(mock, spec):
                self._stop(name)
                mock = None
            if mock is None or not self._fresh(mock, spec.seed):
                if mock is not None:
                    self.restarts += 1
                    self._stop(name)
                self._start(name, spec)
        for name in set(self._mocks) - set(specs):
            self._stop(name)
        return {name: self._mocks[name].url for name in specs}

    @property
    def children(self) -> dict[str, Child]:
        return {f"mock-{name}": m.child for name, m in self._mocks.items()}

    @staticmethod
    def _same(mock: _Mock, spec: ServiceSpec) -> bool:
        return mock.spec.model_copy(update={"seed": 0}) == spec.model_copy(update={"seed": 0})

    def _fresh(self, mock: _Mock, seed: int) -> bool:
        """Reset `mock` to a fresh state with `seed`; False if it would not empty in time."""
        deadline = time.monotonic() + self.quiet_timeout_s
        while mock.child.alive():
            try:
                MockControl(mock.url, self.token).reset(seed=seed)
                return True
            except urllib.error.HTTPError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    return False
            except OSError:
                return False
            time.sleep(0.01)
        return False

    def _start(self, name: str, spec: ServiceSpec) -> None:
        ready = self.logs / f"mock-{name}.ready.json"
        ready.unlink(missing_ok=True)
        spec_file = self.logs / f"mock-{name}.spec.json"  # a spec of any size; argv has a limit
        atomic_write(spec_file, spec_to_json(spec))
        # the stack stops the mock on any exit until the pool owns it (pop_all)
        with contextlib.ExitStack() as stack, listening_socket() as sock:
            argv = served_argv("lab.mocks", mock_args(spec.kind, spec_file), sock, ready)
            child = stack.enter_context(
                spawn(
                    argv,
                    name=f"mock-{name}",
                    log_path=self.logs / f"mock-{name}.log",
                    pass_fds=(sock.fileno(),),
                    env={**os.environ, TOKEN_ENV: self.token},  # argv is public; the env is not
                )
            )
            url = url_of(sock)
            owned = stack.pop_all()
        self._mocks[name] = _Mock(spec, url, child, owned)
        self.starting.append(ready)

    def _stop(self, name: str) -> None:
        self._mocks.pop(name).stack.close()

    def close(self) -> None:
        for name in list(self._mocks):
            self._stop(name)


@dataclass
class Harness:
    """The long-lived processes trials share: mock services and the workers' fork server."""

    services: ServicePool
    launcher: Zygote


@contextlib.contextmanager
def start_harness(logs: Path, env: Mapping[str, str] | None = None) -> Iterator[Harness]:
    """Start the fork server now (the mocks on first use); stop everything when the block ends.

    `env`: the fork server's environment, as a worker's would be (its forked children get
    theirs over its socket, but a process's environment as the OS shows it is the server's)."""
    logs.mkdir(parents=True, exist_ok=True)
    pool = ServicePool(logs)
    try:
        with start_zygote(PRELOAD, log_path=logs / "zygote.log", env=env) as zygote:
            yield Harness(pool, zygote)
    finally:
        pool.close()
