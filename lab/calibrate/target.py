"""What the calibrator calls: the service's URL and protocol, the owner's caps, the requests.

The requests are the ones the lab's built-in jobs send (`lab.runtime.jobs`), so what is fitted
is what a sweep will do: OpenSearch single-document index (`PUT /{index}/_doc/{id}`) and
`_bulk`; a JSON POST for `http_api` and `database`, with an `items` list for a batch. No
request ever goes to a `/_lab/` route: those exist only on the lab's own mocks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lab.errors import ConfigError
from lab.external import PROTOCOLS, Protocol, check_url


@dataclass(frozen=True)
class Caps:
    """The most the service's owner allows: requests in flight at once, and requests per second."""

    max_in_flight: int
    max_requests_per_s: float

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        r = self.max_requests_per_s
        if not (r > 0 and math.isfinite(r)):
            raise ConfigError(f"--max-requests-per-s must be a number > 0, got {r}")


@dataclass(frozen=True)
class Request:
    """One HTTP request of the probe, and how many items it carries."""

    method: str
    url: str
    body: bytes
    headers: dict[str, str]
    items: int
    bulk: bool = False  # an OpenSearch `_bulk`: HTTP 200 may still carry per-item rejections


_JSON = {"Content-Type": "application/json"}
_NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass(frozen=True)
class Target:
    """A live service: its base URL and protocol; builds the probe's requests."""

    url: str
    protocol: Protocol
    index: str = "lab-calibrate"  # OpenSearch: where the probe's documents go

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.protocol!r}: allowed: {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "url", check_url(self.url, where="URL"))

    def request(self, doc_id: str, items: int = 1) -> Request:
        """The request for one item (`items == 1`) or a batch of `items`, ids from `doc_id`."""
        if self.protocol == "opensearch":
            if items == 1:
                body = json.dumps({"id": doc_id, "title": f"entity {doc_id}"}).encode()
                return Request("PUT", f"{self.url}/{self.index}/_doc/{doc_id}", body, _JSON, 1)
            lines: list[str] = []
            for k in range(items):
                item = f"{doc_id}-{k}"
                lines.append(json.dumps({"index": {"_index": self.index, "_id": item}}))
                lines.append(json.dumps({"id": item, "title": f"entity {item}"}))
            body = ("\n".join(lines) + "\n").encode()
            return Request("POST", f"{self.url}/_bulk", body, _NDJSON, items, bulk=True)
        if items == 1:
            body = json.dumps({"id": doc_id, "title": f"entity {doc_id}"}).encode()
        else:
            body = json.dumps({"items": [{"id": f"{doc_id}-{k}"} for k in range(items)]}).encode()
        return Request("POST", f"{self.url}/", body, _JSON, items)


DEFAULT_NAMES = {"opensearch": "search", "http_api": "api", "database": "db"}


def parse_batch_sizes(text: str) -> list[int]:
    """'1,10,100' -> [1, 10, 100]; ConfigError for anything else."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise ConfigError(
            f"--batch-sizes {text!r}: expected integers >= 1 separated by commas, e.g. 1,10,100"
        )
    return sorted(set(sizes))


def check_input(
    url: str,
    protocol: str,
    *,
    max_in_flight: int,
    max_requests_per_s: float,
    batch_sizes: Sequence[int],
    budget_s: float,
    name: str | None,
) -> tuple[Target, Caps, str]:
    """Every input of a calibration checked before anything is sent; ConfigError names the bad one."""
    target = Target(url, protocol)  # type: ignore[arg-type]  # Target checks it
    caps = Caps(max_in_flight, max_requests_per_s)
    if not batch_sizes or any(n < 1 for n in batch_sizes):
        raise ConfigError(f"--batch-sizes: integers >= 1, got {list(batch_sizes)}")
    if not (budget_s > 0 and math.isfinite(budget_s)):
        raise ConfigError(f"--budget-s must be a number of seconds > 0, got {budget_s}")
    name = name or DEFAULT_NAMES[target.protocol]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"--name {name!r}: letters, digits, _ . - only (it is a scenario key)")
    return target, caps, name
