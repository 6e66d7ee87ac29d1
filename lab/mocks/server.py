"""Running a mock: the aiohttp server, the `/_lab/` control routes, readiness and signals.

Control routes bypass the load model (no rate limit, no capacity, no connection limit), and
need the mock's control token in the `X-Lab-Token` header (401 without it; `lab.mocks.control`):
  GET  /_lab/stats   the statistics document (see `lab.mocks.stats`), sorted keys
  POST /_lab/reset   zero statistics, time series and write ledgers, restart the epoch that
                     brown-outs are timed from; documents are KEPT (seeded ids survive) unless
                     the body is `{"clear_docs": true}` (opensearch). `{"seed": N}`: as if just
                     started with seed N (random streams, token bucket, documents), so one
                     process serves trial after trial; 409 while requests are still inside
  GET  /_lab/health  `{"ok": true, "kind": ...}`
  opensearch only: POST /_lab/seed `{"index": "x", "ids": [...]}`, GET /_lab/docs?index=x

With a state file (`--state-file`), a stopped mock writes its statistics and documents there and
a mock started on it continues from them: a restart inside one trial keeps the trial's figures
and the id ledger whole, as a real node keeps its data on disk.

The server is aiohttp's low-level `web.Server` (no router, no middlewares): the mocks route by
hand, which keeps per-request overhead close to a bare aiohttp app, and the server's
connection hooks feed the connection limit. Request bodies are limited to 1 MiB, and to
100 MiB (OpenSearch's own `http.max_content_length`) on `_bulk` and `/_lab/seed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from lab.bounds import BODY_BYTES_MAX, BULK_BODY_BYTES_MAX
from lab.errors import ConfigError
from lab.infra.aio import run_main, write_ready_file
from lab.infra.sockets import LISTEN_BACKLOG
from lab.mocks.base import Busy, MockService, json_response
from lab.mocks.control import TOKEN_ENV, TOKEN_HEADER, new_token, token_ok
from lab.mocks.database import DatabaseMock
from lab.mocks.http_api import HttpApiMock
from lab.mocks.load import ConnectionTracker
from lab.mocks.opensearch import OpenSearchMock
from lab.mocks.spec import ServiceSpec

log = logging.getLogger(__name__)

SERVICES: dict[str, type[MockService]] = {
    "opensearch": OpenSearchMock,
    "http_api": HttpApiMock,
    "database": DatabaseMock,
}

SHUTDOWN_GRACE_S = 1.0
"""How long in-flight requests may finish on stop; mocks hold nothing worth waiting for."""


def make_service(spec: ServiceSpec) -> MockService:
    return SERVICES[spec.kind](spec)


def check_loopback(host: str, *, allow_network: bool = False) -> str:
    """The address to bind: loopback only, so a mock is never reachable from the network, unless
    `allow_network` (a cluster node's own address, for workers on other hosts)."""
    if allow_network:
        return host
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ConfigError(f"--host {host!r}: mocks bind a loopback address only (127.0.0.1 or ::1)")
    return host


class _TrackingServer(web.Server):
    """aiohttp's low-level server, telling the connection tracker about each connection."""

    def __init__(self, handler: Any, *, tracker: ConnectionTracker, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._tracker = tracker

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._tracker.opened(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._tracker.closed(handler)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: Any,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request, with the body limit of its route (bulk-shaped routes: larger)."""
        path = message.path.partition("?")[0]
        bulk = path.endswith("/_bulk") or path == "/_lab/seed"
        limit = BULK_BODY_BYTES_MAX if bulk else BODY_BYTES_MAX
        return web.BaseRequest(
            message, payload, protocol, writer, task, self._loop, client_max_size=limit
        )


def _dispatcher(service: MockService, token: str) -> Callable[[web.BaseRequest], Any]:
    controls = {"stats": _stats, "reset": _reset, "health": _health}
    extra = service.controls()
    refused = {"error": f"/_lab/ routes need this mock's control token in {TOKEN_HEADER}"}

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if not request.raw_path.startswith("/_lab/"):
            return await service(request)
        if not token_ok(request.headers.get(TOKEN_HEADER), token):
            return json_response(refused, status=401)
        path = request.path
        name = path[len("/_lab/") :]
        if name in extra:
            return await extra[name](request)
        control = controls.get(name)
        if control is None:
            known = sorted([*controls, *extra])
            return json_response({"error": f"unknown control {path}; known: {known}"}, status=404)
        return await control(service, request)

    return dispatch


async def _stats(service: MockService, request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(
        text=json.dumps(service.stats_json(), sort_keys=True), content_type="application/json"
    )


async def _reset(service: MockService, request: web.BaseRequest) -> web.StreamResponse:
    if request.method != "POST":
        return json_response({"error": "use POST /_lab/reset"}, status=405)
    try:
        options = await request.json() if request.body_exists else {}
        if not isinstance(options, dict):
            raise ValueError("the reset body must be a JSON object")
        return json_response(service.reset(options))
    except ValueError as exc:
        return json_response({"error": str(exc)}, status=400)
    except Busy as exc:
        return json_response({"error": f"busy: {exc}", "busy": exc.left}, status=409)


async def _health(service: MockService, request: web.BaseRequest) -> web.StreamResponse:
    return json_response({"ok": True, "kind": service.kind})


async def _sample_forever(service: MockService) -> None:
    """The time series: one point every `stats_interval_ms`, on a fixed grid (no drift)."""
    loop = asyncio.get_running_loop()
    interval_s = service.spec.stats_interval_ms / 1000
    next_at = loop.time()
    while True:
        service.model.sample()
        next_at += interval_s
        await asyncio.sleep(max(0.0, next_at - loop.time()))


def _read_state(path: Path | None) -> dict[str, Any] | None:
    """A previous process's state, when there is one (read before serving: a few ms)."""
    if path is None or not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


@contextlib.asynccontextmanager
async def run_mock(
    spec: ServiceSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    sock: socket.socket | None = None,
    allow_network: bool = False,
    token: str | None = None,
    state_file: Path | None = None,
) -> AsyncIterator[str]:
    """Serve `spec` in this event loop; yields the base URL (`http://127.0.0.1:PORT`).

    `sock`, a listening socket handed over by a parent, replaces host and port: the parent
    knows the URL before this process starts, and no port can be taken in between.
    `token` guards the `/_lab/` routes (None: a random one nobody knows, so none answer).
    On exit, requests still in flight get `shutdown_grace_s` to finish, then are cancelled;
    then the state goes to `state_file` (read back at start when it exists).
    """
    bind = check_loopback(
        sock.getsockname()[0] if sock is not None else host, allow_network=allow_network
    )
    service = make_service(spec)
    if (state := _read_state(state_file)) is not None:
        service.restore(state)
    server = _TrackingServer(
        _dispatcher(service, token or new_token()),
        tracker=service.model.connections,
        access_log=None,
    )
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_grace_s)
    await runner.setup()
    sampler: asyncio.Task[None] | None = None
    try:
        site: web.BaseSite = (
            web.SockSite(runner, sock, backlog=LISTEN_BACKLOG)
            if sock is not None
            else web.TCPSite(runner, bind, port, backlog=LISTEN_BACKLOG)
        )
        await site.start()
        bound_port = runner.addresses[0][1]
        sampler = asyncio.create_task(_sample_forever(service))
        url_host = f"[{bind}]" if ":" in bind else bind
        yield f"http://{url_host}:{bound_port}"
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await runner.cleanup()
        if state_file is not None:  # after the in-flight requests: their writes are in it
            write_ready_file(state_file, service.state())


async def serve(
    spec: ServiceSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
    allow_network: bool = False,
    state_file: Path | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly; announce readiness once listening.

    The control token is `$LAB_MOCK_TOKEN`, else a new one, written to the ready file (0600).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    token = os.environ.get(TOKEN_ENV) or new_token()
    try:
        async with run_mock(
            spec,
            host=host,
            port=port,
            sock=sock,
            allow_network=allow_network,
            token=token,
            state_file=state_file,
        ) as url:
            if ready_file is not None:
                info = {"url": url, "pid": os.getpid(), "kind": spec.kind, "token": token}
                write_ready_file(ready_file, info)
            if on_ready is not None:
                on_ready(url)
            log.info("%s mock listening on %s", spec.kind, url)
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run(
    spec: ServiceSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
    allow_network: bool = False,
    state_file: Path | None = None,
) -> None:
    """Own an event loop (uvloop when installed) and `serve` on it until a stop signal."""
    check_loopback(sock.getsockname()[0] if sock is not None else host, allow_network=allow_network)
    run_main(
        serve(
            spec, host=host, port=port, ready_file=ready_file, on_ready=on_ready, sock=sock,
            allow_network=allow_network, state_file=state_file,
        )
    )  # fmt: skip
