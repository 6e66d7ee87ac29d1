"""`calibrate(url, protocol, ...)`: probe a live service, fit its twin, check it, write it all.

The probe runs first and alone (`lab.calibrate.phases`); nothing is written until it is done,
so an interrupted calibration leaves no half folder. Then the fit; then, unless `check=False`,
the twin: the fitted mock is started on loopback (a child process the lab owns) and probed at
the same load levels as the service, so the report can draw both. The twin check never
touches the real service.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from lab.calibrate.fit import Fit, fit
from lab.calibrate.phases import MAX_STEP_REQUESTS, Measured, measure
from lab.calibrate.probe import Probe, Step
from lab.calibrate.target import Caps, Protocol, Target, check_input
from lab.errors import LabError
from lab.infra.aio import run_coroutine
from lab.mocks.process import mock_process
from lab.mocks.spec import ServiceSpec


@dataclass
class Calibration:
    """What a calibration wrote, and what it found."""

    folder: Path
    paths: dict[str, Path]
    fit: Fit
    measured: Measured
    twin: list[Step]

    @property
    def spec(self) -> ServiceSpec:
        return self.fit.spec


def _progress(stream: TextIO, who: str) -> Callable[[Step], None]:
    def show(step: Step) -> None:
        s = step.summary()
        stream.write(
            f"{who:7s} {s['phase']:11s} {s['concurrency']:4d} clients {s['items']:4d} items "
            f"{s['requests']:5d} req {s['ok_per_s']:8.1f} 2xx/s  p50 {s['p50_ms']:7.1f} ms  "
            f"p99 {s['p99_ms']:7.1f} ms  429 {s['rejected_429']:3d}  5xx {s['errors_5xx']:3d}  "
            f"no answer {s['no_answer']:3d}\n"
        )
        stream.flush()

    return show


async def _probe_twin(
    url: str, protocol: Protocol, caps: Caps, real: list[Step], stream: TextIO
) -> list[Step]:
    """The real steps' closed-loop levels again, on the twin; returns the twin's steps."""
    probe = Probe(Target(url, protocol), caps)
    show = _progress(stream, "twin")
    for step in real:
        if step.phase not in ("ladder", "queue", "batch"):
            continue
        duration = max(0.1, step.issue_end_s - step.started_s)
        done = await probe.closed_loop(
            step.phase, step.concurrency, duration_s=duration, max_requests=MAX_STEP_REQUESTS,
            items=step.items, per_s=step.paced_per_s,
        )  # fmt: skip
        show(done)
    return probe.steps


def calibrate(
    url: str,
    protocol: str,
    *,
    max_in_flight: int = 32,
    max_requests_per_s: float = 500.0,
    batch_sizes: Sequence[int] = (1, 10, 100),
    budget_s: float = 60.0,
    out_dir: Path = Path("results/calibrate"),
    name: str | None = None,
    check: bool = True,
    stream: TextIO | None = None,
    command: str | None = None,
) -> Calibration:
    """Probe `url` within the caps and the budget, fit its twin, write the folder; see
    `lab.calibrate`. Raises ConfigError for bad input, ServiceError when it does not answer."""
    stream = stream or sys.stdout
    target, caps, name = check_input(
        url, protocol, max_in_flight=max_in_flight, max_requests_per_s=max_requests_per_s,
        batch_sizes=batch_sizes, budget_s=budget_s, name=name,
    )  # fmt: skip
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stream.write(
        f"calibrating {target.url} ({target.protocol}) for at most {budget_s:g} s, "
        f"{caps.max_in_flight} in flight, {caps.max_requests_per_s:g} requests/s\n"
    )
    measured = run_coroutine(
        measure(
            target,
            caps,
            budget_s=budget_s,
            batch_sizes=batch_sizes,
            progress=_progress(stream, "service"),
        )
    )
    for note in measured.notes:
        stream.write(f"  {note}\n")
    try:
        fitted = fit(measured.steps, target, caps, fitted_at=started, verdict=measured.verdict)
    except ValueError as exc:  # too few answers to fit: say what to change
        raise LabError(
            f"{target.url}: {exc} after {measured.requests} requests in "
            f"{measured.duration_s:.1f} s; give it a longer --budget-s (or higher caps)"
        ) from None
    twin: list[Step] = []
    if check:
        with (
            tempfile.TemporaryDirectory(prefix="lab-twin-") as tmp,
            mock_process(fitted.spec, workdir=Path(tmp), name="twin") as twin_mock,
        ):
            twin = run_coroutine(
                _probe_twin(twin_mock.url, target.protocol, caps, measured.steps, stream)
            )
    from lab.calibrate.output import write_folder  # matplotlib: only for the report
    from lab.results import new_folder  # pandas: likewise

    parts = urlsplit(target.url)
    folder = new_folder(out_dir / f"{parts.hostname}-{parts.port or parts.scheme}")
    meta = {
        "url": target.url,
        "protocol": target.protocol,
        "caps": {
            "max_in_flight": caps.max_in_flight,
            "max_requests_per_s": caps.max_requests_per_s,
        },
        "budget_s": budget_s,
        "batch_sizes": list(batch_sizes),
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command
        or shlex.join(["python", "-m", "lab.calibrate", target.url, "--protocol", target.protocol]),
    }
    paths = write_folder(folder, fit=fitted, measured=measured, twin=twin, name=name, meta=meta)
    return Calibration(folder, paths, fitted, measured, twin)
