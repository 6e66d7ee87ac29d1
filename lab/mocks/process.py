"""One mock in its own process, for code outside a trial (the calibrator's twin check)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from lab.infra.procs import python_module_argv, spawn, wait_for
from lab.mocks.spec import ServiceSpec, spec_to_json


@contextlib.contextmanager
def mock_process(spec: ServiceSpec, *, workdir: Path, name: str = "mock") -> Iterator[str]:
    """`python -m lab.mocks` serving `spec` on loopback; yields its URL, stops it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    argv = python_module_argv(
        "lab.mocks", spec.kind, "--spec-json", spec_to_json(spec), "--port", "0",
        "--ready-file", str(ready),
    )  # fmt: skip
    with spawn(argv, name=name, log_path=workdir / f"{name}.log") as child:
        wait_for(ready.exists, what=f"the {name} mock", timeout_s=30, children=[child])
        yield str(json.loads(ready.read_text())["url"])
