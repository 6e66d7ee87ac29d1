"""A third-party JSON API (payments, enrichment, ...): any method, any path outside `/_lab/`.

Request: an optional JSON body; when it is an object with an `items` list, the request carries
that many items (`per_item_ms` each), else one. Responses:
  200 `{"ok": true, "items": N}`
  429 `{"error": {"type": "rate_limited", ...}}` + `Retry-After` (token bucket empty)
  429 `{"error": {"type": "concurrency_limited", ...}}` (all slots busy and no waiting place,
      like Stripe's concurrency limiter; no Retry-After)
  5xx `{"error": {"type": "api_error", ...}}` (injected error or brown-out)
  503 `{"error": {"type": "connection_limit", ...}}` (past `connection_limit`, then closed)
  400 when the body is not JSON.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from lab.mocks.base import MockService, json_response
from lab.mocks.load import Outcome

_OK_BODIES = {n: json.dumps({"ok": True, "items": n}).encode() for n in range(1, 101)}
_BUSY = json.dumps(
    {"error": {"type": "concurrency_limited", "message": "Too many concurrent requests"}}
).encode()


def count_items(body: bytes) -> int | None:
    """Items in a JSON body: len(body["items"]) when it is a list, else 1; None if not JSON."""
    if not body:
        return 1
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        return len(data["items"])
    return 1


class HttpApiMock(MockService):
    """Rate limit and latency tail of a remote API; the answers carry no business data."""

    kind = "http_api"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        items = count_items(body)
        if items is None:
            err = {"error": {"type": "invalid_request", "message": "body is not valid JSON"}}
            return json_response(err, status=400)
        self.model.stats.items += items
        outcome = await self.model.serve(items)
        if outcome is Outcome.SERVED:
            ok_body = _OK_BODIES.get(items)  # precomputed: this is the hot path
            if ok_body is None:
                return json_response({"ok": True, "items": items})
            return web.Response(body=ok_body, content_type="application/json")
        if outcome is Outcome.REJECTED:
            return web.Response(body=_BUSY, status=429, content_type="application/json")
        err = {"error": {"type": "api_error", "message": "injected failure"}}
        return json_response(err, status=self.spec.error_status)
