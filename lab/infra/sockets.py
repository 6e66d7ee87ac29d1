"""A listening socket bound by a parent and handed to the child that serves on it.

The URL is known before the child is up (so everything can start at once), and no port can be
taken in between. Mocks and the web app take it as `--listen-fd` and announce themselves in
their `--ready-file`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from lab.infra.procs import python_module_argv

#: The accept queue of every server the lab runs. asyncio (and so aiohttp's SockSite, which
#: listens again) would set 100-128: 400 slots connecting at once then overflow it, the kernel
#: drops their SYNs and each retries after TCP's 1-s initial timeout, a second the service
#: never took. Real servers queue more (nginx 511, Linux's somaxconn 4096).
LISTEN_BACKLOG = 1024


@contextlib.contextmanager
def listening_socket(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A socket bound to `host` on a free port, inheritable by a child."""
    with socket.create_server((host, 0), backlog=LISTEN_BACKLOG) as sock:
        sock.set_inheritable(True)
        yield sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def served_argv(module: str, args: list[str], sock: socket.socket, ready: Path) -> list[str]:
    """`python -m MODULE ARGS` serving on the inherited `sock`, announcing itself in `ready`."""
    return python_module_argv(
        module, *args, "--ready-file", str(ready), "--listen-fd", str(sock.fileno())
    )
