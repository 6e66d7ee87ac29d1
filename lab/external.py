"""A real service the lab may call: its URL, the protocol it speaks, and its owner's caps.

`services.<name>: {kind: external, url, protocol, max_in_flight, max_requests_per_s}` in a
scenario. The caps are required: a real service must never be hit harder than its owner
allowed, so the sweep clips a configuration that would exceed `max_in_flight` and paces every
instance (`lab.sweep.external`). A fitted mock records the external service it was fitted to
(`ServiceSpec.calibrated_from`), which `python -m lab.sweep --verify` calls back.
No `/_lab/` route is ever sent to an external URL: those exist only on the lab's mocks.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from lab import limits as L
from lab.errors import ConfigError
from lab.strict import Strict, why

Protocol = Literal["opensearch", "http_api", "database"]
PROTOCOLS: tuple[Protocol, ...] = ("opensearch", "http_api", "database")
LAB_ROUTE = "/_lab/"


def check_url(url: str, *, where: str = "url") -> str:
    """An http(s) base URL with a host and no lab route, trailing slash dropped; else ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} {url!r}: expected an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"{where} {url!r}: {exc}") from None
    if LAB_ROUTE in parts.path + "/":
        raise ConfigError(f"{where} {url!r}: {LAB_ROUTE} routes belong to the lab's own mocks")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where} {url!r}: give the base URL, without a query or fragment")
    return url.rstrip("/")


class ExternalService(Strict):
    """A live service (not a mock): jobs call `url` as they would a mock of `protocol`."""

    kind: Literal["external"] = Field(description="A real service, called within its caps.")
    url: Annotated[str, Field(max_length=L.URL_CHARS_MAX)] = Field(
        description="Base URL, http:// or https://; jobs append their paths."
    )
    protocol: Protocol = Field(
        description="What it speaks, as the mock kinds: opensearch | http_api | database."
    )
    max_in_flight: Annotated[int, Field(ge=1, le=L.CONCURRENCY_MAX), why(L.CONCURRENCY_WHY)] = (
        Field(
            description="Most requests the lab may have in flight at once, over ALL instances of a "
            "trial; a configuration with more job slots is clipped and marked in trials.csv."
        )
    )
    max_requests_per_s: Annotated[float, Field(gt=0, le=L.RATE_LIMIT_MAX)] = Field(
        description="Most requests per second the lab may send, over all instances: each "
        "instance is paced at its share."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            return check_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("url ")) from None


def speaks(service: object) -> str:
    """The protocol a scenario's service speaks: an external service's `protocol`, a mock's
    `kind` (the two share their words: opensearch, http_api, database)."""
    if isinstance(service, ExternalService):
        return service.protocol
    return str(getattr(service, "kind"))  # noqa: B009 - a ServiceSpec, not imported here
