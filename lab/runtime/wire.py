"""A lean Redis connection for the worker's hot path: the exchange script, one call at a time.

Why not redis-py here: on this project's 2-core machine a PING through `redis.asyncio` costs
about 200 µs of Python per round trip (pool, retry and connection layers), against about 60 µs
over a bare asyncio stream. The exchange runs once per batch of finished jobs, and with many
slots and short jobs it runs almost once per job, so that overhead decided how many IO jobs one
instance could carry. This class keeps only what the hot path needs: RESP encoding and parsing
from `hiredis` (the C parser redis-py itself uses), one connection, one command in flight.
Everything else in the worker (heartbeat, blocking wait, release) goes through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import hiredis
import redis
from redis.asyncio.connection import parse_url


class WireConnection:
    """One connection to the broker. `call` raises redis.ConnectionError or redis.ResponseError."""

    def __init__(self, url: str) -> None:
        self._options: dict[str, Any] = dict(parse_url(url))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(encoding="utf-8", replyError=redis.ResponseError)
        self._scripts: dict[str, str] = {}  # sha1 -> source, to reload after NOSCRIPT

    async def _connect(self) -> None:
        opts = self._options
        try:
            if "path" in opts:
                self._reader, self._writer = await asyncio.open_unix_connection(opts["path"])
            else:  # asyncio sets TCP_NODELAY on TCP streams
                self._reader, self._writer = await asyncio.open_connection(
                    opts.get("host", "localhost"), opts.get("port", 6379)
                )
        except OSError as exc:
            raise redis.ConnectionError(f"cannot connect to the broker: {exc}") from exc
        self._parser = hiredis.Reader(encoding="utf-8", replyError=redis.ResponseError)
        if opts.get("password"):
            auth = (
                [opts["username"], opts["password"]] if opts.get("username") else [opts["password"]]
            )
            await self.call("AUTH", *auth)
        if opts.get("db"):
            await self.call("SELECT", opts["db"])

    async def call(self, *args: Any) -> Any:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(hiredis.pack_command(args))
            while (reply := self._parser.gets()) is False:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionResetError("the broker closed the connection")
                self._parser.feed(data)
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise redis.ConnectionError(f"broker connection lost: {exc}") from exc
        except BaseException:  # cancelled mid-reply: the stream is out of step, drop it
            self.close()
            raise
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    def script(self, source: str) -> str:
        """Remember a Lua script; returns the SHA1 to pass to `evalsha`."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    async def evalsha(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """Run a remembered script, loading it first if the server does not know it (NOSCRIPT)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self.call("SCRIPT", "LOAD", self._scripts[sha])
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
