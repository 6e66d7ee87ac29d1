"""An OpenSearch node, as far as the official `opensearch-py` client (sync and async) needs.

Document writes pass the load model (the node's `write` thread pool and its queue):
  PUT|POST /{index}/_doc/{id}   index (201 created / 200 updated)
  POST /{index}/_doc            index with an auto-generated id
  PUT|POST /{index}/_create/{id} create (409 version_conflict_engine_exception when held)
  DELETE /{index}/_doc/{id}     delete (200 deleted / 404 `"result": "not_found"`)
  POST|PUT /_bulk, /{index}/_bulk  NDJSON index/create/update/delete, per-item results
Metadata calls are answered at once: `GET|HEAD /` (cluster info, ping), `PUT|HEAD|DELETE
/{index}`, `GET|POST [/{index}]/_count`, `POST [/{index}]/_refresh`, `GET|HEAD /{index}/_doc/{id}`.

Overload, as a real node answers it (reference §1.1-1.2, and OpenSearch's code path):
- A single-document write that finds the write queue full gets HTTP 429
  `rejected_execution_exception`. OpenSearch names the type that way (its
  `OpenSearchRejectedExecutionException` loses the `OpenSearch` prefix); Elasticsearch says
  `es_rejected_execution_exception`. Clients should key on the 429 status.
- A bulk is split per target shard (`shards` per index, by a hash of `_id`); each part is one
  unit of work (one service-time draw + `per_item_ms` x its items) admitted or rejected alone. A
  rejected part fails its items with status 429: the response is HTTP 200 with `errors: true`,
  also when every part was rejected (the coordinating node accepted the request).
- Injected errors (`error_rate`, brown-outs): a failed shard part fails its items with
  `error_status`; when every part failed, the whole request gets `error_status`.
- Rate limit: HTTP 429 + Retry-After for the whole request.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import zlib
from json.encoder import encode_basestring_ascii as _quote
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from lab.mocks.base import ControlHandler, MockService, json_response
from lab.mocks.bulk import BulkError, BulkOp, parse_bulk
from lab.mocks.docstore import DocStore, WriteResult
from lab.mocks.load import Outcome
from lab.mocks.spec import ServiceSpec

_SHARDS_OK = {"total": 2, "successful": 1, "failed": 0}  # one replica, unassigned on one node
_STATUS = {"created": 201, "updated": 200, "deleted": 200, "not_found": 404}
_INFO = {
    "name": "lab-mock",
    "cluster_name": "lab",
    "cluster_uuid": "lab-mock-cluster-uuid0",
    "version": {
        "distribution": "opensearch",
        "number": "2.19.0",
        "build_type": "tar",
        "build_hash": "lab-mock",
        "build_date": "2025-01-01T00:00:00.000000Z",
        "build_snapshot": False,
        "lucene_version": "9.12.1",
        "minimum_wire_compatibility_version": "7.10.0",
        "minimum_index_compatibility_version": "7.0.0",
    },
    "tagline": "The OpenSearch Project: https://opensearch.org/",
}


def os_error(
    status: int, error_type: str, reason: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A whole-request error in OpenSearch's shape."""
    cause = {"type": error_type, "reason": reason}
    body = {"error": {"root_cause": [cause], **cause}, "status": status}
    return json_response(body, status=status, headers=headers)


class OpenSearchMock(MockService):
    """Index, bulk and delete against a capacity-bound write pool; ids kept in a DocStore."""

    kind = "opensearch"

    def __init__(self, spec: ServiceSpec) -> None:
        super().__init__(spec)
        self.store = DocStore()
        self._id_rng = random.Random(f"{spec.seed}:ids")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path.partition("?")[0].strip("/")
        parts = [unquote(p) if "%" in p else p for p in raw.split("/")] if raw else []
        method = request.method
        n = len(parts)
        if n == 3 and parts[1] in ("_doc", "_create"):
            if method in ("PUT", "POST"):
                op = "create" if parts[1] == "_create" else "index"
                return await self._write_one(request, parts[0], parts[2], op)
            if method == "DELETE" and parts[1] == "_doc":
                return await self._delete_one(parts[0], parts[2])
            if method in ("GET", "HEAD") and parts[1] == "_doc":
                return self._get(parts[0], parts[2])
        if n == 2 and parts[1] == "_doc" and method == "POST":
            return await self._write_one(request, parts[0], None, "index")
        if parts[-1:] == ["_bulk"] and n <= 2 and method in ("POST", "PUT"):
            return await self._bulk(request, parts[0] if n == 2 else None)
        return self._metadata(method, parts, request.path)

    # --- single-document writes ------------------------------------------------------------

    async def _write_one(
        self, request: web.BaseRequest, index: str, doc_id: str | None, op: str
    ) -> web.Response:
        if not await request.read():
            return os_error(400, "parse_exception", "request body is required")
        self.model.stats.items += 1
        outcome = await self.model.serve(1)
        if outcome is not Outcome.SERVED:
            return self._unit_failed(outcome, index, 1)
        doc_id = doc_id if doc_id is not None else self._auto_id()
        res = self.store.write(index, doc_id, op=op)
        if res.result == "conflict":
            return os_error(409, "version_conflict_engine_exception", _conflict(doc_id, res))
        return web.Response(
            body=_doc_body(index, doc_id, res),
            status=_STATUS[res.result],
            content_type="application/json",
        )

    async def _delete_one(self, index: str, doc_id: str) -> web.Response:
        self.model.stats.items += 1
        outcome = await self.model.serve(1)
        if outcome is not Outcome.SERVED:
            return self._unit_failed(outcome, index, 1)
        res = self.store.delete(index, doc_id)
        return json_response(_doc_result(index, doc_id, res), status=_STATUS[res.result])

    def _unit_failed(self, outcome: Outcome, index: str, items: int) -> web.Response:
        if outcome is Outcome.REJECTED:
            return os_error(
                429, "rejected_execution_exception", self._rejection_reason(index, items)
            )
        return self._injected_error()

    def _injected_error(self) -> web.Response:
        status = self.spec.error_status
        error_type = "unavailable_shards_exception" if status == 503 else "exception"
        return os_error(status, error_type, "injected failure")

    def _rejection_reason(self, index: str, items: int, shard: int = 0) -> str:
        """Shaped like OpenSearch's; a rejection means every thread busy and the queue full."""
        gate = self.model.gate
        return (
            f"rejected execution of primary operation [shard [{index}][{shard}], {items} "
            f"requests] on OpenSearchThreadPoolExecutor[name = lab-mock/write, queue capacity = "
            f"{gate.queue_places}, pool size = {gate.capacity}, active threads = "
            f"{gate.capacity}, queued tasks = {gate.queue_places}, completed tasks = "
            f"{self.model.stats.served}]"
        )

    def _auto_id(self) -> str:
        """20 URL-safe characters like OpenSearch's ids, from the seeded stream."""
        return base64.urlsafe_b64encode(self._id_rng.getrandbits(120).to_bytes(15, "big")).decode()

    # --- bulk ----------------------------------------------------------------------------

    async def _bulk(self, request: web.BaseRequest, default_index: str | None) -> web.Response:
        started = time.monotonic()
        try:
            ops = parse_bulk(await request.read(), default_index)
        except BulkError as exc:
            return os_error(400, exc.error_type, exc.reason)
        self.model.stats.items += len(ops)
        for op in ops:
            if op.doc_id is None:
                op.doc_id = self._auto_id()
        # One part per target shard, as the coordinating node splits a bulk: (index, shard).
        shards = self.spec.shards
        shard_of = [
            (op.index, zlib.crc32(str(op.doc_id).encode()) % shards if shards > 1 else 0)
            for op in ops
        ]
        sizes: dict[tuple[str, int], int] = {}
        for part in shard_of:
            sizes[part] = sizes.get(part, 0) + 1
        serve = self.model.serve
        if len(sizes) == 1:
            outcomes = {shard_of[0]: await serve(len(ops))}
        else:
            done = await asyncio.gather(*(serve(size) for size in sizes.values()))
            outcomes = dict(zip(sizes, done, strict=True))
        if all(o is Outcome.FAILED for o in outcomes.values()):
            return self._injected_error()
        items = [
            self._bulk_item(op, outcomes[part], sizes[part], part[1])
            for op, part in zip(ops, shard_of, strict=True)
        ]
        errors = any("error" in next(iter(item.values())) for item in items)
        took_ms = int((time.monotonic() - started) * 1000)
        return json_response({"took": took_ms, "errors": errors, "items": items})

    def _bulk_item(
        self, op: BulkOp, outcome: Outcome, shard_items: int, shard: int
    ) -> dict[str, Any]:
        doc_id = str(op.doc_id)
        head: dict[str, Any] = {"_index": op.index, "_id": doc_id}
        if outcome is Outcome.REJECTED:
            reason = self._rejection_reason(op.index, shard_items, shard)
            error = {"type": "rejected_execution_exception", "reason": reason}
            return {op.action: {**head, "status": 429, "error": error}}
        if outcome is Outcome.FAILED:
            status = self.spec.error_status
            error = {"type": "exception", "reason": "injected failure"}
            return {op.action: {**head, "status": status, "error": error}}
        if op.action == "delete":
            res = self.store.delete(op.index, doc_id)
        else:
            res = self.store.write(op.index, doc_id, op=op.action, upsert=op.upsert)
        if res.result == "conflict":
            error = {
                "type": "version_conflict_engine_exception",
                "reason": _conflict(doc_id, res),
                "index": op.index,
            }
            return {op.action: {**head, "status": 409, "error": error}}
        if res.result == "missing":
            error = {
                "type": "document_missing_exception",
                "reason": f"[{doc_id}]: document missing",
                "index": op.index,
            }
            return {op.action: {**head, "status": 404, "error": error}}
        return {op.action: {**_doc_result(op.index, doc_id, res), "status": _STATUS[res.result]}}

    # --- metadata (outside the load model) -------------------------------------------------

    def _metadata(self, method: str, parts: list[str], path: str) -> web.Response:
        n = len(parts)
        if n == 0 and method in ("GET", "HEAD"):
            return json_response(_INFO)
        if parts[-1:] == ["_count"] and n <= 2 and method in ("GET", "POST"):
            count = self.store.count(parts[0] if n == 2 else None)
            shards = {
                "total": self.spec.shards,
                "successful": self.spec.shards,
                "skipped": 0,
                "failed": 0,
            }
            return json_response({"count": count, "_shards": shards})
        if parts[-1:] == ["_refresh"] and n <= 2 and method in ("GET", "POST"):
            return json_response({"_shards": {"total": 2, "successful": 1, "failed": 0}})
        if n == 1 and not parts[0].startswith("_"):
            return self._index_admin(method, parts[0])
        reason = f"no handler found for uri [{path}] and method [{method}]"
        return json_response({"error": reason, "status": 400}, status=400)

    def _index_admin(self, method: str, index: str) -> web.Response:
        if method == "PUT":
            if not self.store.create_index(index):
                return os_error(
                    400, "resource_already_exists_exception", f"index [{index}] already exists"
                )
            return json_response(
                {"acknowledged": True, "shards_acknowledged": True, "index": index}
            )
        if method == "HEAD":
            return web.Response(status=200 if index in self.store.indices else 404)
        if method == "DELETE" and self.store.indices.pop(index, None) is not None:
            return json_response({"acknowledged": True})
        return os_error(404, "index_not_found_exception", f"no such index [{index}]")

    def _get(self, index: str, doc_id: str) -> web.Response:
        docs = self.store.indices.get(index)
        version = None if docs is None else docs.docs.get(doc_id)
        body: dict[str, Any] = {"_index": index, "_id": doc_id, "found": version is not None}
        if version is not None:
            body.update(_version=version, _seq_no=0, _primary_term=1, _source={})
        return json_response(body, status=200 if version is not None else 404)

    # --- control ---------------------------------------------------------------------------

    def rate_limited(self, wait_s: float) -> web.Response:
        reason = "rate limit exceeded: too many requests"
        return os_error(429, "too_many_requests", reason, headers=self.retry_after(wait_s))

    def refused(self, reason: str) -> web.Response:
        return os_error(503, reason, "too many connections")

    def stats_json(self) -> dict[str, Any]:
        out = super().stats_json()
        out["opensearch"] = self.store.to_json()
        return out

    reset_options = frozenset({"clear_docs"})

    def state(self) -> dict[str, Any]:
        return super().state() | {"docs": self.store.state()}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.store.restore(state["docs"])

    def reset(self, options: dict[str, Any]) -> dict[str, Any]:
        """Zero the statistics and write ledgers; keep the documents unless `clear_docs` (or
        `seed`: as just started, so no document either)."""
        clear_docs = bool(options.get("clear_docs", False)) or "seed" in options
        done = super().reset({k: v for k, v in options.items() if k != "clear_docs"})
        self.store.reset(clear_docs=clear_docs)
        return {**done, "clear_docs": clear_docs}

    def reseed(self, seed: int) -> None:
        self._id_rng = random.Random(f"{seed}:ids")

    def controls(self) -> dict[str, ControlHandler]:
        return {"seed": self._seed, "docs": self._docs}

    async def _seed(self, request: web.BaseRequest) -> web.StreamResponse:
        """`POST /_lab/seed {"index": "x", "ids": [...]}`: documents in place before the clock."""
        try:
            data = await request.json()
        except ValueError:
            data = None
        index, ids = (
            (data.get("index"), data.get("ids")) if isinstance(data, dict) else (None, None)
        )
        if (
            set(data or ()) != {"index", "ids"}
            or not isinstance(index, str)
            or not isinstance(ids, list)
        ):
            return json_response(
                {"error": 'expected {"index": str, "ids": [str, ...]}'}, status=400
            )
        added = self.store.seed(index, (str(i) for i in ids))
        return json_response({"index": index, "seeded": added, "docs": self.store.count(index)})

    async def _docs(self, request: web.BaseRequest) -> web.StreamResponse:
        """`GET /_lab/docs?index=x`: every id held, sorted, to check exactly what was lost."""
        index = request.query.get("index", "")
        ids = self.store.ids(index)
        return json_response({"index": index, "count": len(ids), "ids": ids})


def _conflict(doc_id: str, res: WriteResult) -> str:
    return (
        f"[{doc_id}]: version conflict, document already exists (current version [{res.version}])"
    )


def _doc_body(index: str, doc_id: str, res: WriteResult) -> bytes:
    """`_doc_result` as JSON bytes, formatted directly: single writes are the hot path."""
    return (
        f'{{"_index":{_quote(index)},"_id":{_quote(doc_id)},"_version":{res.version},'
        f'"result":"{res.result}","_shards":{{"total":2,"successful":1,"failed":0}},'
        f'"_seq_no":{max(res.seq_no, 0)},"_primary_term":1}}'
    ).encode()


def _doc_result(index: str, doc_id: str, res: WriteResult) -> dict[str, Any]:
    return {
        "_index": index,
        "_id": doc_id,
        "_version": res.version,
        "result": res.result,
        "_shards": _SHARDS_OK,
        "_seq_no": max(res.seq_no, 0),
        "_primary_term": 1,
    }
