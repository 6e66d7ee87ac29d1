"""A lean, pipelined Redis connection for the worker's hot path: the exchange script.

Why not redis-py here: on this project's 2-core machine a PING through `redis.asyncio` costs
about 200 µs of Python per round trip (pool, retry and connection layers), against a few tens
over a bare protocol. The exchange runs about once per finished job, so that overhead decided
how many IO jobs one instance could carry. This class keeps only what the hot path needs: RESP
encoding and parsing from `hiredis` (the C parser redis-py itself uses) on one connection.

Pipelined: `send` writes a command at once, even while earlier ones wait for their replies,
and each reply is handed to its callback, in order, straight from the protocol's
`data_received` (no task wakes up in between). So a slot that frees while an exchange is on
the wire asks for its job at once instead of waiting for that round trip to come back.
`call` and `evalsha` are the awaitable forms, for everything off the hot path.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis
from redis.asyncio.connection import parse_url

log = logging.getLogger(__name__)

#: A reply's callback: gets the reply, a redis.ResponseError for an error reply, or a
#: redis.ConnectionError when the connection was lost before the reply came.
Callback = Callable[[Any], None]


def _ignore(reply: Any) -> None:
    pass


class _Protocol(asyncio.Protocol):
    """One TCP or unix connection: its parser and the callbacks owed a reply, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = hiredis.Reader(encoding="utf-8", replyError=redis.ResponseError)
        self.waiting: collections.deque[Callback] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser, waiting = self.parser, self.waiting
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                waiting.popleft()(reply)
        except hiredis.ProtocolError as exc:  # the stream is out of step: drop it
            log.error("broker protocol error: %s", exc)
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self.waiting = self.waiting, collections.deque()
        error = redis.ConnectionError(f"broker connection lost: {exc or 'closed'}")
        for callback in waiting:
            callback(error)


class WireConnection:
    """One connection to the broker, commands pipelined, replies dispatched in order.

    `send` never raises: a command sent while disconnected gets a redis.ConnectionError reply
    (on the next loop iteration). `call` raises redis.ConnectionError or redis.ResponseError.
    """

    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._protocol: _Protocol | None = None
        self._scripts: dict[str, str] = {}  # sha1 -> source, to reload after NOSCRIPT
        self._connecting: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        p = self._protocol
        return p is not None and p.transport is not None and not p.transport.is_closing()

    @property
    def in_flight(self) -> int:
        """Commands sent whose replies have not come back yet."""
        return len(self._protocol.waiting) if self._protocol is not None else 0

    async def connect(self) -> None:
        """Connect (and AUTH/SELECT) unless connected; concurrent callers share one attempt."""
        if self.connected:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        opts, loop = self._options, asyncio.get_running_loop()
        try:
            if "path" in opts:
                _, protocol = await loop.create_unix_connection(_Protocol, opts["path"])
            else:  # asyncio and uvloop set TCP_NODELAY on TCP transports
                _, protocol = await loop.create_connection(
                    _Protocol, opts.get("host", "localhost"), opts.get("port", 6379)
                )
        except OSError as exc:
            raise redis.ConnectionError(f"cannot connect to the broker: {exc}") from exc
        if protocol.transport is None:
            raise redis.ConnectionError("the broker connection closed as it opened")
        self._protocol = protocol
        if opts.get("password"):
            auth = (
                [opts["username"], opts["password"]] if opts.get("username") else [opts["password"]]
            )
            await self.call("AUTH", *auth)
        if opts.get("db"):
            await self.call("SELECT", opts["db"])

    # -- the pipelined path ---------------------------------------------------------------------

    def send(self, args: tuple[Any, ...], callback: Callback) -> None:
        """Write one command now; `callback` gets its reply (see `Callback`)."""
        p = self._protocol
        transport = p.transport if p is not None else None
        if p is None or transport is None or transport.is_closing():
            error = redis.ConnectionError("not connected to the broker")
            asyncio.get_running_loop().call_soon(callback, error)
            return
        p.waiting.append(callback)
        transport.write(hiredis.pack_command(args))

    def send_script(
        self, sha: str, keys: Sequence[str], args: Sequence[Any], callback: Callback
    ) -> None:
        """EVALSHA a remembered script; after NOSCRIPT (a restarted broker), load it and resend."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)

        def on_reply(reply: Any) -> None:
            if isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT"):
                self.send(("SCRIPT", "LOAD", self._scripts[sha]), _ignore)
                self.send(command, callback)  # the same connection runs them in this order
            else:
                callback(reply)

        self.send(command, on_reply)

    # -- awaitable forms ------------------------------------------------------------------------

    async def call(self, *args: Any) -> Any:
        if not self.connected:
            await self.connect()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def on_reply(reply: Any) -> None:
            if (
                not done.done()
            ):  # a cancelled caller leaves its reply unread; the stream stays in step
                done.set_result(reply)

        self.send(args, on_reply)
        reply = await done
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

    def script(self, source: str) -> str:
        """Remember a Lua script; returns the SHA1 to pass to `evalsha` or `send_script`."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a remembered script, loading it first if the server does not know it (NOSCRIPT)."""
        if not self.connected:
            await self.connect()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_reply(reply: Any) -> None:
            if not done.done():
                done.set_result(reply)

        self.send_script(sha, keys, args, on_reply)
        reply = await done
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

    def close(self) -> None:
        """Close the connection; replies still owed get a redis.ConnectionError."""
        p, self._protocol = self._protocol, None
        if p is not None and p.transport is not None:
            p.transport.close()  # its connection_lost follows, on the loop
