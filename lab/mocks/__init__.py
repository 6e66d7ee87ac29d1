"""Mock IO services (opensearch, http_api, database) and the load model they share.

`run_mock(spec)` serves one in the current event loop; `python -m lab.mocks KIND` in its own
process. Importing this package starts nothing, and loads the names below on first use (PEP
562): checking a scenario's `services:` needs `lab.mocks.spec`, not the aiohttp server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "STATS_SCHEMA_VERSION": "lab.mocks.stats",
    "ServiceSpec": "lab.mocks.spec",
    "cdf": "lab.mocks.distributions",
    "make_sampler": "lab.mocks.distributions",
    "mean_ms": "lab.mocks.distributions",
    "parse_spec": "lab.mocks.spec",
    "quantile": "lab.mocks.distributions",
    "run": "lab.mocks.server",
    "run_mock": "lab.mocks.server",
    "serve": "lab.mocks.server",
    "spec_from_json": "lab.mocks.spec",
    "spec_to_json": "lab.mocks.spec",
}

__all__ = [
    "STATS_SCHEMA_VERSION",
    "ServiceSpec",
    "cdf",
    "make_sampler",
    "mean_ms",
    "parse_spec",
    "quantile",
    "run",
    "run_mock",
    "serve",
    "spec_from_json",
    "spec_to_json",
]

if TYPE_CHECKING:
    from lab.mocks.distributions import cdf, make_sampler, mean_ms, quantile
    from lab.mocks.server import run, run_mock, serve
    from lab.mocks.spec import ServiceSpec, parse_spec, spec_from_json, spec_to_json
    from lab.mocks.stats import STATS_SCHEMA_VERSION


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lab.mocks' has no attribute {name!r}")
