"""A calibration's folder: `--out DIR/<host-port>/<YYYYmmdd-HHMMSS>/`, never overwritten.

service.yaml      a `services:` block holding the fitted twin, ready to paste into a scenario
                  (its `calibrated_from` names the real service for `lab.sweep --verify`);
                  the evidence for each parameter in comments above it
calibration.json  the fit (each family's KS distance), every step's figures, the notes, the
                  probe's own check of the caps; `schema_version` below
steps.csv         one row per load level, of the service and of the twin (`service` column)
requests.csv      one row per request: phase, level, sent at, latency, status, Retry-After
report.html       the measured curves with the twin's on them, self-contained
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lab.calibrate.fit import Fit
from lab.calibrate.latency import quality
from lab.calibrate.phases import Measured
from lab.calibrate.plots import batch_cost, latency_fit, load_curves, rate_phase
from lab.calibrate.probe import Step
from lab.infra.files import atomic_write
from lab.mocks.spec import ServiceSpec
from lab.report.html import figure_png, html_page

#: Format history of calibration.json: 1 - first version.
SCHEMA_VERSION = 1

_ORDER = ("kind", "capacity", "queue", "latency", "per_item_ms", "rate_limit", "connection_limit",
          "error_rate", "error_status", "calibrated_from")  # fmt: skip


def service_block(spec: ServiceSpec) -> dict[str, Any]:
    """The spec as YAML-ready data: the fitted fields in a reading order, defaults left out
    (except capacity, queue and latency, which a reader looks for)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    full = spec.model_dump(mode="json")
    for key in ("capacity", "queue"):
        data[key] = full[key]
    data["latency"] = spec.latency.model_dump(mode="json", exclude_none=True)
    return {k: data[k] for k in _ORDER if k in data}


def service_yaml(fit: Fit, name: str, *, command: str) -> str:
    """service.yaml: the evidence as comments, then `services: {name: twin}`."""
    lines = [
        f"# Fitted by: {command}",
        f"# at {fit.figures['fitted_at']}. Paste the services: block into a scenario;",
        "# `python -m lab.sweep SCENARIO --verify` reruns the best configurations on calibrated_from.",
        "#",
    ]
    for key, text in fit.findings.items():
        if text:
            lines += textwrap.wrap(
                f"{key}: {text}", 98, initial_indent="# ", subsequent_indent="#   "
            )
    body = yaml.safe_dump({"services": {name: service_block(fit.spec)}}, sort_keys=False, width=100)
    return "\n".join(lines) + "\n" + body


def _rows(service: str, steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [{"service": service, **s.summary()} for s in steps]


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _requests(service: str, steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [
        {
            "service": service,
            "phase": s.phase,
            "step": s.index,
            "concurrency": s.concurrency,
            "items": s.items,
            "sent_s": round(x.sent_s, 6),
            "latency_ms": round(x.latency_ms, 3),
            "status": x.status,
            "retry_after_s": x.retry_after_s,
            "error": x.error,
        }
        for s in steps
        for x in s.samples
    ]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_folder(
    folder: Path,
    *,
    fit: Fit,
    measured: Measured,
    twin: list[Step],
    name: str,
    meta: dict[str, Any],
) -> dict[str, Path]:
    """Write every file of a calibration into the new `folder`; returns their paths by role."""
    paths = {
        "yaml": folder / "service.yaml",
        "json": folder / "calibration.json",
        "steps": folder / "steps.csv",
        "requests": folder / "requests.csv",
        "report": folder / "report.html",
    }
    atomic_write(paths["yaml"], service_yaml(fit, name, command=meta["command"]))
    document = {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "service_name": name,
        "fit": {
            "spec": fit.spec.model_dump(mode="json"),
            "findings": fit.findings,
            "figures": fit.figures,
            "latency_families": [
                {
                    "dist": f.dist,
                    "ks": f.ks,
                    "quality": quality(f.ks),
                    "median_ms": f.median_ms,
                    "p99_ms": f.p99_ms,
                    "latency": f.latency.model_dump(mode="json"),
                }
                for f in fit.latency_fits
            ],
        },
        "probe": {
            "requests": measured.requests,
            "duration_s": measured.duration_s,
            "max_in_flight_seen": measured.max_in_flight_seen,
            "max_requests_in_1s": measured.max_requests_in_1s,
            "notes": measured.notes,
        },
        "steps": _rows("service", measured.steps),
        "twin_steps": _rows("twin", twin),
    }
    atomic_write(paths["json"], json.dumps(_json_safe(document), indent=2, sort_keys=True) + "\n")
    atomic_write(paths["steps"], _csv(_rows("service", measured.steps) + _rows("twin", twin)))
    requests = _requests("service", measured.steps) + _requests("twin", twin)
    atomic_write(paths["requests"], _csv(requests))
    atomic_write(paths["report"], render(fit, measured, twin, name=name, meta=meta))
    return paths


_STEP_COLUMNS = [
    ("phase", "phase", ""), ("concurrency", "clients", "d"), ("items", "items", "d"),
    ("requests", "requests", "d"), ("ok_per_s", "2xx/s", ",.1f"), ("p50_ms", "p50 ms", ",.1f"),
    ("p99_ms", "p99 ms", ",.1f"), ("rejected_429", "429", "d"), ("status_503", "503", "d"),
    ("no_answer", "no answer", "d"), ("duration_s", "s", ".2f"),
]  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, spec) if spec else escape(str(value))


def _steps_table(title: str, steps: Sequence[Step]) -> str:
    if not steps:
        return ""
    head = "".join(f"<th>{escape(t)}</th>" for _, t, _ in _STEP_COLUMNS)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{_fmt(s.summary()[k], f)}</td>" for k, _, f in _STEP_COLUMNS)
        + "</tr>"
        for s in steps
    )
    return f"<h3>{escape(title)}</h3><div class='wide'><table><tr>{head}</tr>{rows}</table></div>"


def _figure(fig: Any, caption: str) -> str:
    if fig is None:
        return ""
    return (
        f'<figure><img alt="{escape(caption)}" src="{figure_png(fig)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def render(
    fit: Fit, measured: Measured, twin: list[Step], *, name: str, meta: dict[str, Any]
) -> str:
    """report.html: the fitted block, the evidence, the figures, every step, the cap check."""
    caps = meta["caps"]
    findings = "".join(
        f"<tr><td class='l'>{escape(k)}</td><td class='l'>{escape(v)}</td></tr>"
        for k, v in fit.findings.items()
        if v
    )
    families = "".join(
        f"<tr><td class='l'>{escape(f.dist)}{' (chosen)' if i == 0 else ''}</td><td>{f.ks:.3f}</td>"
        f"<td class='l'>{quality(f.ks)}</td><td>{f.median_ms:,.2f}</td><td>{f.p99_ms:,.1f}</td></tr>"
        for i, f in enumerate(fit.latency_fits)
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in measured.notes)
    checks = (
        f"at most {measured.max_in_flight_seen} requests in flight (cap {caps['max_in_flight']}), "
        f"at most {measured.max_requests_in_1s} sent in any one second "
        f"(cap {caps['max_requests_per_s']:g}/s); {measured.requests} requests in "
        f"{measured.duration_s:.1f} s"
    )
    twin_note = (
        "The twin (the fitted mock, on loopback) was probed with the same load levels: dashed."
        if twin
        else "The twin was not probed (--no-check)."
    )
    sections = [
        f"<h1>Calibration of {escape(meta['url'])}</h1>",
        f'<p class="sub">protocol {escape(meta["protocol"])}, {escape(meta["finished_at"])}, '
        f"budget {meta['budget_s']:g} s</p>",
        "<h2>The fitted service</h2>",
        f"<pre>{escape(service_yaml(fit, name, command=meta['command']))}</pre>",
        f"<table><tr><th class='l'>parameter</th><th class='l'>evidence</th></tr>{findings}</table>",
        "<h2>Latency families</h2><p>Kolmogorov-Smirnov distance between the measured and the "
        "fitted distribution: below 0.05 close, above 0.1 visibly off.</p>",
        "<table><tr><th class='l'>family</th><th>KS</th><th class='l'>fit</th><th>median ms</th>"
        f"<th>p99 ms</th></tr>{families}</table>",
        f"<h2>Figures</h2><p>{escape(twin_note)}</p>",
        _figure(
            load_curves(measured.steps, twin, fit),
            "throughput and latency against clients in flight",
        ),
        _figure(latency_fit(fit), "latency distribution at low load, measured and fitted"),
        _figure(batch_cost(measured.steps, twin, fit), "median latency against items per request"),
        _figure(
            rate_phase(measured.steps),
            "requests accepted and rejected while pacing above the limit",
        ),
        "<h2>How the probe went</h2>",
        f"<ul>{notes}</ul><p>The caps held: {escape(checks)}.</p>",
        _steps_table("The service", measured.steps),
        _steps_table("The twin", twin),
    ]
    return html_page(f"calibration of {meta['url']}", "\n".join(sections))
