"""Job handlers: the built-ins the scenarios use, and user handlers named `package.module:function`.

A handler is `async def handler(ctx: JobContext, args: dict) -> dict | None`. It raises to fail
the attempt (the worker then retries with backoff, or dead-letters); it may return a small dict
of counters (for example `{"not_found": 2}`) that is stored with the job's event.

Job args the built-ins understand:
- `items`: the entities this job carries (ids, or dicts with an "id"); `batch_size` in the lab.
- `service`: the name of a service the worker was given (`--service name=url`), or `url`, which
  must then be one of those services' (a payload never sends a worker elsewhere).
- `index` (OpenSearch, default "lab"), `path` and `method` (http.call, default POST /).
- `cpu_ms_per_item`: CPU work added to ANY job, burnt before its IO (see `execute`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import inspect
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import yarl

from lab.errors import ConfigError
from lab.runtime.limits import OVERLOAD_STATUSES

Extra = Mapping[str, Any] | None
Handler = Callable[["JobContext", dict[str, Any]], Awaitable[Extra]]


@dataclass
class JobContext:
    """What a handler may use: the instance's shared HTTP session and the service URLs."""

    instance: str
    session: aiohttp.ClientSession
    services: Mapping[str, str] = field(default_factory=dict)

    def service_url(self, args: Mapping[str, Any]) -> str:
        """The base URL a job talks to: the URL of `args["service"]`, or `args["url"]` if it is
        one of this worker's services (same scheme, host and port): jobs come from Redis, and
        a payload must not turn a worker into a client of anything else on the network."""
        known = ", ".join(sorted(self.services)) or "none"
        if "url" in args:
            url = str(args["url"]).rstrip("/")
            if _origin(url) not in {_origin(u) for u in self.services.values()}:
                raise JobError(
                    f"job URL {url[:100]!r} is not one of this worker's services ({known})"
                )
            return url
        name = str(args.get("service"))
        if name not in self.services:
            raise JobError(f"job names service {name[:100]!r}, this worker knows: {known}")
        return self.services[name].rstrip("/")


def _origin(url: str) -> tuple[str, str | None, int | None]:
    try:
        u = yarl.URL(url)
    except (ValueError, TypeError):
        return ("", None, None)
    return (u.scheme, u.host, u.port)


class JobError(Exception):
    """An attempt failed. `retry_after_s` carries a server's Retry-After, honoured as a floor;
    `status` the HTTP status that failed it (an adaptive limit backs off on 429 and 503)."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


def item_count(args: Mapping[str, Any]) -> int:
    """How many entities a job carries (1 for a job without an `items` list)."""
    items = args.get("items")
    return len(items) if isinstance(items, list) else 1


def _items(args: Mapping[str, Any]) -> list[Any]:
    items = args.get("items")
    return items if isinstance(items, list) else [args.get("id", 0)]


def _doc_id(item: Any) -> str:
    return str(item["id"]) if isinstance(item, dict) else str(item)


def _doc(item: Any) -> dict[str, Any]:
    return item if isinstance(item, dict) else {"id": item, "title": f"entity {item}"}


_JSON = {"Content-Type": "application/json"}


def _json_body(item: Any) -> bytes:
    # Encoded here rather than with aiohttp's `json=`: its JsonPayload costs ~40% more CPU per
    # request, which at a few thousand requests/s would make the runtime the bottleneck.
    return json.dumps(_doc(item)).encode()


def burn_cpu(ms: float) -> None:
    """Hold the GIL and the event loop for `ms` milliseconds of this thread's CPU time.

    CPU time, not wall time: on a loaded machine the job still costs the CPU it claims to.
    """
    deadline = time.thread_time_ns() + int(ms * 1_000_000)
    while time.thread_time_ns() < deadline:
        pass


async def _check(resp: aiohttp.ClientResponse, *, allow: tuple[int, ...] = ()) -> bytes:
    """Read the body (to free the connection) and raise JobError on a status not 2xx/allowed."""
    body = await resp.read()
    if resp.status < 300 or resp.status in allow:
        return body
    retry_after = resp.headers.get("Retry-After")
    raise JobError(
        f"HTTP {resp.status} from {resp.method} {resp.url.path}",
        retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
        status=resp.status,
    )


async def noop(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """Does nothing: measures the runtime's own cost per job."""
    return None


async def cpu_burn(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """Only CPU: the `cpu_ms_per_item` that `execute` burns for every job is the whole job."""
    return None


async def http_call(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """One request per item to the service, in turn: the item as a JSON body (none for GET)."""
    base, path = ctx.service_url(args), str(args.get("path", "/"))
    url = base + path
    if not path.startswith("/") or _origin(url) != _origin(base):  # "@evil:80/" would move it
        raise JobError(f"path {path[:100]!r} must be a path on the service, starting with /")
    method = str(args.get("method", "POST")).upper()
    with_body = method not in ("GET", "HEAD", "DELETE")
    for item in _items(args):
        body = _json_body(item) if with_body else None
        async with ctx.session.request(
            method, url, data=body, headers=_JSON if with_body else None
        ) as resp:
            await _check(resp)
    return None


async def opensearch_index(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """One `PUT /{index}/_doc/{id}` per item, in turn (what a job without bulk does)."""
    base, index = ctx.service_url(args), args.get("index", "lab")
    for item in _items(args):
        url = f"{base}/{index}/_doc/{_doc_id(item)}"
        async with ctx.session.put(url, data=_json_body(item), headers=_JSON) as resp:
            await _check(resp)
    return None


async def opensearch_bulk(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """The whole batch in one `_bulk` request.

    A bulk that comes back with `errors: true` (some items rejected, typically 429 when the
    write queue is full) fails the attempt, and the retry re-sends the whole batch: indexing by
    id is idempotent, and the mock counts the duplicate writes.
    """
    base, index = ctx.service_url(args), args.get("index", "lab")
    lines = []
    for item in _items(args):
        lines.append(json.dumps({"index": {"_index": index, "_id": _doc_id(item)}}))
        lines.append(json.dumps(_doc(item)))
    body = ("\n".join(lines) + "\n").encode()
    headers = {"Content-Type": "application/x-ndjson"}
    async with ctx.session.post(f"{base}/_bulk", data=body, headers=headers) as resp:
        result = json.loads(await _check(resp))
    if result.get("errors"):
        failed = [
            it
            for it in result.get("items", [])
            if next(iter(it.values())).get("status", 200) >= 300
        ]
        statuses = sorted({next(iter(it.values())).get("status") for it in failed})
        raise JobError(
            f"bulk: {len(failed)} of {len(lines) // 2} items failed (status {statuses})",
            # an overload status if any item had one (the limiter backs off on it), else the worst
            status=next(
                (c for c in statuses if c in OVERLOAD_STATUSES), max(statuses, default=None)
            ),
        )
    return None


async def opensearch_delete(ctx: JobContext, args: dict[str, Any]) -> Extra:
    """One `DELETE /{index}/_doc/{id}` per item; a 404 (`not_found`) is counted, not an error."""
    base, index = ctx.service_url(args), args.get("index", "lab")
    not_found = 0
    for item in _items(args):
        async with ctx.session.delete(f"{base}/{index}/_doc/{_doc_id(item)}") as resp:
            await _check(resp, allow=(404,))
            not_found += resp.status == 404
    return {"not_found": not_found} if not_found else None


@dataclass(frozen=True)
class JobType:
    """What the lab knows of a job type besides its handler: the one entry every module reads.

    The sweep estimates a trial from `requests_per_job` and `items_per_request`, seeds the
    target before the clock when `seeds_ids`, and reads lost/duplicate items from the service's
    id ledger by `ledger`; the scenario checks `service_kind`. A user handler is unknown to the
    lab (`requests` is None): its estimate assumes one request per item, and says so.
    """

    handler: Handler | None  # None: a user handler, imported only when a worker runs it
    service_kind: str | None = None  # the service kind it must target (None: any)
    requests: Literal["none", "one", "per_item"] | None = None  # requests a job sends
    seeds_ids: bool = False  # the target must hold the job's ids first (deletes)
    ledger: Literal["writes", "deletes"] | None = None  # how the target's id ledger counts items

    @property
    def known(self) -> bool:
        return self.requests is not None

    def requests_per_job(self, batch_size: int) -> int:
        """Requests one job of `batch_size` items sends (one per item when unknown)."""
        return {"none": 0, "one": 1}.get(self.requests or "per_item", batch_size)

    def items_per_request(self, batch_size: int) -> int:
        """Items one request carries (a bulk request carries the whole batch)."""
        return batch_size if self.requests == "one" else 1


JOB_TYPES: dict[str, JobType] = {
    "cpu.burn": JobType(cpu_burn, requests="none"),
    "http.call": JobType(http_call, requests="per_item"),
    "noop": JobType(noop, requests="none"),
    "opensearch.bulk": JobType(opensearch_bulk, "opensearch", "one", ledger="writes"),
    "opensearch.delete": JobType(
        opensearch_delete, "opensearch", "per_item", seeds_ids=True, ledger="deletes"
    ),
    "opensearch.index": JobType(opensearch_index, "opensearch", "per_item", ledger="writes"),
}

#: The built-in handlers by job name.
BUILTINS: dict[str, Handler] = {
    name: t.handler for name, t in JOB_TYPES.items() if t.handler is not None
}

_USER = JobType(handler=None)


def job_type(name: str) -> JobType:
    """The registry entry of a job name; a `package.module:function` is a user handler (not
    imported here: see `resolve`)."""
    return JOB_TYPES.get(name, _USER)


def resolve(name: str) -> Handler:
    """The handler for a job name: a built-in, or `package.module:function`. ConfigError if unknown."""
    if name in BUILTINS:
        return BUILTINS[name]
    allowed = f"a built-in ({', '.join(sorted(BUILTINS))}) or 'package.module:function'"
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"unknown job {name!r}: expected {allowed}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"job {name!r}: cannot import module {module_name!r} ({exc})") from exc
    handler = getattr(module, attr, None)
    if handler is None:
        raise ConfigError(f"job {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(handler):
        raise ConfigError(
            f"job {name!r}: must be an async function (ctx, args), got {type(handler).__name__}"
        )
    return handler


def find_job_module(module: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of `module` if the import system can find it, without running any of its code.

    `importlib.util.find_spec("a.b")` imports the package `a` (its `__init__` runs); this asks
    the finders of `sys.meta_path` part by part instead, as the import system does before it
    executes anything, so checking a scenario never runs a user's module.
    """
    if module in sys.modules:  # imported already (by the lab, or as `os.path` is)
        return getattr(sys.modules[module], "__spec__", None) or importlib.machinery.ModuleSpec(
            module, None
        )
    spec: importlib.machinery.ModuleSpec | None = None
    path: Any = None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        if spec is None:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                try:
                    spec = find(name, path) if find is not None else None
                except (ImportError, ValueError):  # a name no finder can take
                    spec = None
                if spec is not None:
                    break
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if path is None and i < len(parts) - 1:
            return None  # `a.b` where `a` is a module, not a package
    return spec


def execute(handler: Handler, ctx: JobContext, args: dict[str, Any]) -> Awaitable[Extra]:
    """Start one attempt: burn the job's CPU (`cpu_ms_per_item` x items) now, and return the
    handler's awaitable. Not a coroutine itself: every await inside a job would otherwise pass
    through one more frame, which on the worker's hot path costs a few µs per job."""
    cpu_ms = args.get("cpu_ms_per_item")
    if cpu_ms:
        burn_cpu(float(cpu_ms) * item_count(args))
    return handler(ctx, args)
