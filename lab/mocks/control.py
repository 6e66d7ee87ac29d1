"""The mocks' `/_lab/` control routes from both sides: the token, the headers a lab client
sends, and a small blocking client for the sweep (and anything else that resets or reads a mock).

Every `/_lab/` route (stats, reset, health, and opensearch's seed and docs) needs the mock's
control token in the `X-Lab-Token` header: any local user can reach a loopback port, and a
stranger resetting a mock mid-trial would silently corrupt its figures. A mock process takes its
token from its environment (`LAB_MOCK_TOKEN`, never argv, which `ps` shows to everyone); one
started without it makes its own and writes it to its ready file (mode 0600).
"""

from __future__ import annotations

import hmac
import json
import secrets
import urllib.request
from collections.abc import Sequence
from typing import Any

from lab.limits import SEED_IDS_PER_REQUEST

TOKEN_HEADER = "X-Lab-Token"
TOKEN_ENV = "LAB_MOCK_TOKEN"


def new_token() -> str:
    """A fresh random control token (one per run of mocks)."""
    return secrets.token_urlsafe(24)


def control_headers(token: str) -> dict[str, str]:
    """The headers a lab client sends to a mock's `/_lab/` routes: use this, not a literal."""
    return {TOKEN_HEADER: token}


def token_ok(given: str | None, token: str) -> bool:
    """Whether a request's token is the mock's (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class MockControl:
    """A blocking client of one mock's control routes, e.g. `MockControl(url, token).stats()`."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def call(self, name: str, body: dict[str, Any] | None = None) -> Any:
        """GET `/_lab/<name>`, or POST it with a JSON body; returns the decoded answer."""
        data = json.dumps(body).encode() if body is not None else None
        headers = control_headers(self.token) | {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.url}/_lab/{name}", data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.call("stats"))

    def reset(self, **options: Any) -> dict[str, Any]:
        return dict(self.call("reset", options))

    def seed(self, index: str, ids: Sequence[str]) -> int:
        """Put `ids` in place in `index` (opensearch), SEED_IDS_PER_REQUEST per request so any
        number of ids fits the mock's body limit; returns how many were new."""
        added = 0
        for start in range(0, len(ids), SEED_IDS_PER_REQUEST):
            chunk = list(ids[start : start + SEED_IDS_PER_REQUEST])
            added += int(self.call("seed", {"index": index, "ids": chunk})["seeded"])
        return added
