"""What every mock service does before its own protocol: connection limit, rate limit, stats.

A service subclass implements `handle` (its routes, calling `self.model.serve(items)` for each
unit of work) and shapes its own rejection and error bodies the way the real service does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from aiohttp import web

from lab.mocks.load import LoadModel
from lab.mocks.spec import ServiceSpec

ControlHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A compact JSON response, built with one shared encoder (this is on the hot path)."""
    return web.Response(
        body=_encode(data).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def retry_after_header(wait_s: float) -> dict[str, str]:
    """RFC 9110 delay-seconds are whole seconds: round up, so a client never comes back early."""
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


class Busy(Exception):
    """A fresh-state reset while a trial's requests are still in the service."""

    def __init__(self, left: dict[str, int]) -> None:
        super().__init__(", ".join(f"{k} {v}" for k, v in sorted(left.items())))
        self.left = left


class MockService:
    """A mock's protocol on top of the shared load model."""

    kind: ClassVar[str]

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.model = LoadModel(spec)
        self._limit_connections = spec.connection_limit is not None
        self._send_retry_after = spec.rate_limit is None or spec.rate_limit.retry_after

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Entry point for every non-`/_lab/` request."""
        model = self.model
        if self._limit_connections:
            reason = await model.connections.admit(request.protocol)
            if reason is not None:
                model.stats.rejections[reason] += 1
                response = self.refused(reason)
                response.force_close()
                return response
        model.stats.requests += 1
        if model.bucket is not None:
            wait_s = model.take_token()
            if wait_s:
                return self.rate_limited(wait_s)
        return await self.handle(request)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raise NotImplementedError

    def rate_limited(self, wait_s: float) -> web.Response:
        """429 with Retry-After, as an API gateway answers when the bucket is empty."""
        body = {
            "error": {
                "type": "rate_limited",
                "message": "Too many requests: rate limit exceeded",
                "retry_after_s": round(wait_s, 3),
            }
        }
        return json_response(body, status=429, headers=self.retry_after(wait_s))

    def retry_after(self, wait_s: float) -> dict[str, str] | None:
        """The rate-limited 429's Retry-After header, unless the spec turns it off."""
        return retry_after_header(wait_s) if self._send_retry_after else None

    def refused(self, reason: str) -> web.Response:
        """503 for a connection past `connection_limit`; the connection is then closed."""
        body = {"error": {"type": reason, "message": "too many connections"}}
        return json_response(body, status=503)

    def stats_json(self) -> dict[str, Any]:
        """`GET /_lab/stats`: the load model's statistics plus the service's own keys."""
        return self.model.to_json()

    #: `POST /_lab/reset` options this service takes besides `seed`.
    reset_options: ClassVar[frozenset[str]] = frozenset()

    def reset(self, options: dict[str, Any]) -> dict[str, Any]:
        """`POST /_lab/reset`: zero the statistics; returns what was done.

        With `{"seed": N}` the service becomes indistinguishable from one just started with
        seed N (a reused mock across trials): random streams, token bucket and the service's
        own state too. That refuses (`Busy`) while a trial's requests are still in flight.
        """
        unknown = set(options) - {"seed"} - self.reset_options
        if unknown:
            allowed = ", ".join(sorted({"seed"} | self.reset_options))
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; allowed: {allowed}")
        seed = options.get("seed")
        if seed is None:
            self.model.reset()
            return {"reset": True}
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        left = self.model.busy()
        if left:
            raise Busy(left)
        self.model.reseed(seed)
        self.spec = self.model.spec
        self.reseed(seed)
        return {"reset": True, "seed": seed}

    def reseed(self, seed: int) -> None:
        """The service's own state as when just started with `seed` (override when it has any)."""

    def state(self) -> dict[str, Any]:
        """What a restart carries over (`--state-file`): the statistics since the last reset."""
        return {"stats": self.model.stats.state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a previous process's `state()`."""
        self.model.stats.restore(state["stats"])

    def controls(self) -> dict[str, ControlHandler]:
        """Extra `/_lab/<name>` routes of this service (e.g. opensearch `seed`)."""
        return {}
