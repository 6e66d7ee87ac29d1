"""The report's "predicted vs real" section, from a run's verification.json (`--verify`)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from lab.results import RunFolder

_ROWS = (
    ("items_per_s", "items/s", ",.0f"),
    ("latency_p50_ms", "p50 ms", ",.0f"),
    ("latency_p99_ms", "p99 ms", ",.0f"),
    ("error_rate", "errors", ".1%"),
)


def _cell(value: Any, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "–"


def section(run_dir: Path) -> str:
    """The comparison table, or "" when the run was not verified."""
    doc = RunFolder(run_dir).verification()
    if doc is None:
        return ""
    real = doc.get("real", {})
    head = "".join(
        f"<th>{escape(title)} predicted</th><th>real</th><th>error</th>" for _, title, _ in _ROWS
    )
    rows = []
    for entry in doc.get("configs", []):
        cells = "".join(
            f"<td>{_cell(entry['predicted'].get(key), fmt)}</td>"
            f"<td>{_cell(entry['real'].get(key), fmt)}</td>"
            f"<td>{_cell(entry['error'].get(key), '+.1%')}</td>"
            for key, _, fmt in _ROWS
        )
        note = escape(entry.get("clipped") or "")
        rows.append(
            f"<tr><td class='l'>{escape(entry['label'])}</td>{cells}<td class='l'>{note}</td></tr>"
        )
    return (
        "<h2>Predicted (mock) vs real</h2>"
        f"<p>The recommendation and its runners-up, rerun once each on the real service "
        f"{escape(str(real.get('url', '?')))} ({escape(str(real.get('protocol', '?')))}; at most "
        f"{escape(str(real.get('max_in_flight', '?')))} requests in flight and "
        f"{escape(str(real.get('max_requests_per_s', '?')))} per second). Predicted: the fitted "
        "mock's mean over the sweep's repeats. Error: (predicted − real) / real.</p>"
        f"<div class='wide'><table><tr><th class='l'>configuration</th>{head}"
        f"<th class='l'>clipped to the caps</th></tr>{''.join(rows)}</table></div>"
    )
