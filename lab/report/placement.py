"""The report's "where it ran" section, from a run's placement/<trial>.json (a Ray cluster).

Shown only when trials were placed on a cluster (`cluster:` in the scenario). One row per node
a trial used: what ran there, its clock against the broker's, and its CPU by role, so a reader
of a shared report sees which node ran what, and that the latency figures are on one clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from lab.results import RunFolder

#: At most this many trials get their rows; the rest are in placement/<trial>.json.
MAX_TRIALS = 12


def _what_ran(names: list[str], components: Mapping[str, Any]) -> str:
    """A node's components -> "mock-search, 2 worker instances" (roles from the record)."""
    workers = [n for n in names if components.get(n, {}).get("role") == "worker"]
    others = [n for n in names if n not in workers]
    count = len(workers)
    return ", ".join(others + ([f"{count} worker instance{'s' * (count != 1)}"] if count else []))


def _cores(by_role: Mapping[str, Any] | None) -> str:
    if not by_role:
        return "–"
    return ", ".join(f"{role} {float(v):.2f}" for role, v in sorted(by_role.items()))


def _rows(trial_id: str, record: Mapping[str, Any]) -> list[str]:
    rows = []
    for node_id, node in record.get("nodes", {}).items():
        clock = node.get("clock") or {}
        offset = (
            f"{clock['offset_ms']:+.2f} ± {clock['error_ms']:.2f}"
            if "offset_ms" in clock and "error_ms" in clock
            else "–"
        )
        ran = _what_ran(list(node.get("components", [])), record.get("components", {}))
        where = f"{node.get('ip', '?')} {node_id[:12]}" + (
            " (driver)" if node.get("driver") else ""
        )
        rows.append(
            f"<tr><td>{escape(trial_id)}</td><td>{escape(where)}</td>"
            f"<td>{escape(str(node.get('hostname', '–')))}</td>"
            f'<td class="l">{escape(ran or "–")}</td>'
            f"<td>{escape(offset)}</td><td>{escape(_cores(node.get('cores')))}</td>"
            f"<td>{'yes' if node.get('harness_saturated') else 'no'}</td></tr>"
        )
    return rows


def section(run_dir: Path, trials: pd.DataFrame) -> str:
    """The placement table, or "" when no trial of the run was placed on a cluster."""
    folder = RunFolder(run_dir)
    records = {
        tid: record
        for tid in trials.get("trial_id", pd.Series(dtype=str)).astype(str)
        if (record := folder.placement(tid)) is not None
    }
    if not records:
        return ""
    shown = list(records.items())[:MAX_TRIALS]
    rows = [row for tid, record in shown for row in _rows(tid, record)]
    head = "".join(
        f"<th>{h}</th>"
        for h in ("trial", "node", "host", "ran", "clock offset ms", "cores", "harness busy")
    )
    bounds = [r.get("clock", {}).get("latency_error_bound_ms") for r in records.values()]
    worst = max((b for b in bounds if isinstance(b, int | float)), default=None)
    ready = [(r.get("startup_s") or {}).get("ready_s") for r in records.values()]
    slowest = max((s for s in ready if isinstance(s, int | float)), default=None)
    warnings = Counter(w for r in records.values() for w in r.get("warnings", []))
    more = len(records) - len(shown)
    return (
        "<h2>Where it ran</h2>"
        f"<p>{len(records)} trial(s) placed on the Ray cluster at "
        f"{escape(str(next(iter(records.values())).get('address', '?')))}: each mock service on "
        "a node of its own where there was room, the worker instances round-robin over the "
        "others, the producer and the clock on the driver. Job times are on the broker's clock"
        + (f"; no latency is off by more than {worst:.2f} ms" if worst is not None else "")
        + (f"; the instances were ready at most {slowest:.1f} s after being asked for" if slowest is not None else "")
        + ".</p>"
        f'<div class="wide"><table><tr>{head}</tr>{"".join(rows)}</table></div>'
        + (f"<p>{more} more trial(s) in placement/&lt;trial&gt;.json.</p>" if more else "")
        + (
            '<div class="box warn"><ul>'
            + "".join(f"<li>{escape(w)} ({n} trial(s))</li>" for w, n in warnings.items())
            + "</ul></div>"
            if warnings
            else ""
        )
    )  # fmt: skip
