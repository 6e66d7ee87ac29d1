"""One mock in its own process, for code outside a trial (the calibrator's twin check, tests)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lab.infra.procs import python_module_argv, spawn, wait_for
from lab.mocks.control import TOKEN_ENV, MockControl, new_token
from lab.mocks.spec import ServiceSpec, spec_to_json


@contextlib.contextmanager
def mock_process(spec: ServiceSpec, *, workdir: Path, name: str = "mock") -> Iterator[MockControl]:
    """`python -m lab.mocks` serving `spec` on loopback, stopped on exit; yields a client of its
    control routes (`.url` is the service's base URL, `.stats()` its statistics)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    token = new_token()
    argv = python_module_argv(
        "lab.mocks", spec.kind, "--spec-json", spec_to_json(spec), "--port", "0",
        "--ready-file", str(ready),
    )  # fmt: skip
    env = {**os.environ, TOKEN_ENV: token}  # the token never goes on a command line
    with spawn(argv, name=name, log_path=workdir / f"{name}.log", env=env) as child:
        wait_for(ready.exists, what=f"the {name} mock", timeout_s=30, children=[child])
        yield MockControl(str(json.loads(ready.read_text())["url"]), token)
