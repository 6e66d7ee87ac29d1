"""The ids the opensearch mock holds, and how often each was written: the trial's ledger.

Only ids and versions are kept (no document bodies), so memory stays small. Write counts let a
trial prove that nothing was lost (every id is held) and count duplicate writes (an id written
more than once, e.g. a retry after a timeout whose first attempt did land).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DUPLICATE_IDS_SAMPLE = 20
"""How many duplicated ids `stats` lists by name, to debug a duplicate without a flood."""


@dataclass
class IndexDocs:
    """One index: the ids it holds (with versions) and its write ledger since the last reset."""

    docs: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    seq_no: int = -1
    deletes: int = 0
    not_found: int = 0
    conflicts: int = 0

    def next_seq_no(self) -> int:
        self.seq_no += 1
        return self.seq_no

    def to_json(self) -> dict[str, Any]:
        total = sum(self.writes.values())
        duplicated = sorted(k for k, n in self.writes.items() if n > 1)
        return {
            "docs": len(self.docs),
            "writes": total,
            "unique_ids_written": len(self.writes),
            "duplicate_writes": total - len(self.writes),
            "duplicate_ids_sample": duplicated[:DUPLICATE_IDS_SAMPLE],
            "deletes": self.deletes,
            "not_found": self.not_found,
            "conflicts": self.conflicts,
        }


@dataclass(frozen=True)
class WriteResult:
    """What a write did, in the terms of an OpenSearch response."""

    result: str  # "created" | "updated" | "deleted" | "not_found" | "conflict" | "missing"
    version: int
    seq_no: int


class DocStore:
    """Indices by name; writes auto-create an index, as `action.auto_create_index` does."""

    def __init__(self) -> None:
        self.indices: dict[str, IndexDocs] = {}

    def _index(self, name: str) -> IndexDocs:
        docs = self.indices.get(name)
        if docs is None:
            docs = self.indices[name] = IndexDocs()
        return docs

    def create_index(self, name: str) -> bool:
        """False when it already exists."""
        if name in self.indices:
            return False
        self.indices[name] = IndexDocs()
        return True

    def write(
        self, index: str, doc_id: str, *, op: str = "index", upsert: bool = False
    ) -> WriteResult:
        """`op` is index (add or replace), create (fail if held) or update (fail if missing)."""
        docs = self._index(index)
        version = docs.docs.get(doc_id)
        if version is not None and op == "create":
            docs.conflicts += 1
            return WriteResult("conflict", version, -1)
        if version is None and op == "update" and not upsert:
            docs.not_found += 1
            return WriteResult("missing", 0, -1)
        new_version = 1 if version is None else version + 1
        docs.docs[doc_id] = new_version
        docs.writes[doc_id] = docs.writes.get(doc_id, 0) + 1
        result = "created" if version is None else "updated"
        return WriteResult(result, new_version, docs.next_seq_no())

    def delete(self, index: str, doc_id: str) -> WriteResult:
        docs = self.indices.get(index)
        version = None if docs is None else docs.docs.pop(doc_id, None)
        if docs is None or version is None:
            self._index(index).not_found += 1
            return WriteResult("not_found", 1, -1)
        docs.deletes += 1
        return WriteResult("deleted", version + 1, docs.next_seq_no())

    def seed(self, index: str, ids: Iterable[str]) -> int:
        """Put ids in place before a trial (not counted as writes); returns how many are new."""
        docs = self._index(index).docs
        before = len(docs)
        for doc_id in ids:
            docs.setdefault(doc_id, 1)
        return len(docs) - before

    def count(self, index: str | None = None) -> int:
        if index is None:
            return sum(len(d.docs) for d in self.indices.values())
        docs = self.indices.get(index)
        return 0 if docs is None else len(docs.docs)

    def ids(self, index: str) -> list[str]:
        docs = self.indices.get(index)
        return sorted(docs.docs) if docs is not None else []

    def reset(self, *, clear_docs: bool) -> None:
        """Zero the ledgers; drop the documents too when `clear_docs`."""
        if clear_docs:
            self.indices.clear()
            return
        for docs in self.indices.values():
            docs.writes.clear()
            docs.deletes = docs.not_found = docs.conflicts = 0

    def state(self) -> dict[str, Any]:
        """Every index's ids, versions and ledger: what a restarted mock starts from."""
        return {name: vars(docs) for name, docs in self.indices.items()}

    def restore(self, state: dict[str, Any]) -> None:
        """Hold what a previous process held (`state()`), as a node restarted on its disk does."""
        self.indices = {name: IndexDocs(**fields) for name, fields in state.items()}

    def to_json(self) -> dict[str, Any]:
        per_index = {name: docs.to_json() for name, docs in sorted(self.indices.items())}
        keys = (
            "docs",
            "writes",
            "unique_ids_written",
            "duplicate_writes",
            "deletes",
            "not_found",
            "conflicts",
        )
        totals = {k: sum(v[k] for v in per_index.values()) for k in keys}
        return {"indices": per_index, "totals": totals}
