"""Mock IO services (opensearch, http_api, database) and the load model they share.

`run_mock(spec)` serves one in the current event loop; `python -m lab.mocks KIND` in its own
process. Importing this package starts nothing.
"""

from lab.mocks.distributions import cdf, make_sampler, mean_ms, quantile
from lab.mocks.server import run, run_mock, serve
from lab.mocks.spec import ServiceSpec, parse_spec, spec_from_json, spec_to_json
from lab.mocks.stats import STATS_SCHEMA_VERSION

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
