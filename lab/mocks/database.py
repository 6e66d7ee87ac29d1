"""A database (think Postgres) behind a thin JSON facade: a hard connection limit, query latency.

Route: `POST /query` (alias `POST /`) with an optional JSON body, e.g. `{"sql": "...",
"items": [...]}`; an `items` list makes it a batch of that many rows (`per_item_ms` each).
Set `connection_limit` for the "more workers than connections" cases: each TCP connection holds
a slot from accept to close, like a Postgres backend. Responses:
  200 `{"command": "OK", "rowcount": N}`
  503 `{"error": {"severity": "FATAL", "code": "53300", "message": "sorry, too many clients
      already"}}` for a connection past the limit (refuse mode), then the connection closes;
  503 code `08P01` `query_wait_timeout` when a waiting connection gives up (wait mode, as
      PgBouncer answers);
  429 code `53000` when every slot is busy and the waiting room is full;
  5xx code `XX000` for an injected error; 400 for a body that is not JSON; 404 other paths.
"""

from __future__ import annotations

from aiohttp import web

from lab.mocks.base import MockService, json_response
from lab.mocks.http_api import count_items
from lab.mocks.load import Outcome

_PATHS = frozenset({"/query", "/"})


def pg_error(code: str, message: str, *, severity: str = "ERROR") -> dict[str, object]:
    """The fields a Postgres ErrorResponse carries that a client looks at."""
    return {"error": {"severity": severity, "code": code, "message": message}}


class DatabaseMock(MockService):
    """Per-query latency behind a connection limit and a bounded executor."""

    kind = "database"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path not in _PATHS or request.method != "POST":
            return json_response(pg_error("42601", "use POST /query"), status=404)
        items = count_items(await request.read() if request.body_exists else b"")
        if items is None:
            return json_response(pg_error("22P02", "body is not valid JSON"), status=400)
        self.model.stats.items += items
        outcome = await self.model.serve(items)
        if outcome is Outcome.SERVED:
            return json_response({"command": "OK", "rowcount": items})
        if outcome is Outcome.REJECTED:
            body = pg_error("53000", "insufficient_resources: all backends busy, queue full")
            return json_response(body, status=429)
        body = pg_error("XX000", "internal_error: injected failure")
        return json_response(body, status=self.spec.error_status)

    def refused(self, reason: str) -> web.Response:
        if reason == "connection_wait_timeout":
            return json_response(pg_error("08P01", "query_wait_timeout"), status=503)
        body = pg_error("53300", "sorry, too many clients already", severity="FATAL")
        return json_response(body, status=503)
