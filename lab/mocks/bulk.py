"""Parsing an OpenSearch `_bulk` NDJSON body into operations, with OpenSearch's own errors.

Source lines of index/create are not parsed (bodies are not stored); update sources are, to see
`doc_as_upsert` / `upsert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ACTIONS = ("create", "delete", "index", "update")


class BulkError(ValueError):
    """The whole request is invalid: OpenSearch answers 400 with this reason."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


@dataclass(slots=True)
class BulkOp:
    action: str
    index: str
    doc_id: str | None
    upsert: bool = False


def parse_bulk(body: bytes, default_index: str | None) -> list[BulkOp]:
    """The operations of a bulk body, in request order."""
    if not body.endswith(b"\n"):
        raise BulkError(
            "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]"
        )
    lines = body.split(b"\n")
    ops: list[BulkOp] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        action, meta = _action_line(line, i)
        index = meta.get("_index", default_index)
        if not isinstance(index, str) or not index:
            raise BulkError(
                "action_request_validation_exception", "Validation Failed: 1: index is missing;"
            )
        raw_id = meta.get("_id")
        doc_id = None if raw_id is None else str(raw_id)
        if doc_id is None and action in ("delete", "update"):
            raise BulkError(
                "action_request_validation_exception", "Validation Failed: 1: id is missing;"
            )
        op = BulkOp(action, index, doc_id)
        if action != "delete":
            if i >= n or not lines[i].strip():
                raise BulkError(
                    "illegal_argument_exception",
                    f"Malformed action/metadata line [{i}], expected a source line",
                )
            if action == "update":
                op.upsert = _is_upsert(lines[i], i + 1)
            i += 1
        ops.append(op)
    if not ops:
        raise BulkError(
            "action_request_validation_exception", "Validation Failed: 1: no requests added;"
        )
    return ops


def _parse_line(line: bytes, what: str, line_no: int) -> object:
    """One NDJSON line, or the json_parse_exception OpenSearch answers for a malformed one."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BulkError("json_parse_exception", f"Malformed {what} line [{line_no}]") from None


def _action_line(line: bytes, line_no: int) -> tuple[str, dict[str, object]]:
    data = _parse_line(line, "action/metadata", line_no)
    if not isinstance(data, dict) or len(data) != 1:
        raise BulkError(
            "illegal_argument_exception",
            f"Malformed action/metadata line [{line_no}], expected one action",
        )
    ((action, meta),) = data.items()
    if action not in ACTIONS or not isinstance(meta, dict):
        raise BulkError(
            "illegal_argument_exception",
            f"Malformed action/metadata line [{line_no}], expected one of [{', '.join(ACTIONS)}] "
            f"but found [{action}]",
        )
    return action, meta


def _is_upsert(line: bytes, line_no: int) -> bool:
    source = _parse_line(line, "update source", line_no)
    return isinstance(source, dict) and (bool(source.get("doc_as_upsert")) or "upsert" in source)
