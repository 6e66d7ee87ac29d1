"""lab: a concurrency tuning lab for background workers.

Importing `lab` has no side effects and is cheap: the names below load on first use (PEP 562),
so a worker or mock process pays only for the modules it really runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Analysis": "lab.analysis.configs",
    "Broker": "lab.infra.broker",
    "BrokerError": "lab.errors",
    "ConfigError": "lab.errors",
    "JobEvent": "lab.runtime.queue",
    "LabError": "lab.errors",
    "Queue": "lab.runtime.queue",
    "RunFolder": "lab.results",
    "Scenario": "lab.scenario.spec",
    "ServiceError": "lab.errors",
    "analyze": "lab.analysis.configs",
    "load_run": "lab.analysis.configs",
    "load_scenario": "lab.scenario.spec",
    "run_sweep": "lab.sweep.runner",
    "start_broker": "lab.infra.broker",
    "write_report": "lab.report.html",
}

__all__ = [
    "Analysis",
    "Broker",
    "BrokerError",
    "ConfigError",
    "JobEvent",
    "LabError",
    "Queue",
    "RunFolder",
    "Scenario",
    "ServiceError",
    "analyze",
    "load_run",
    "load_scenario",
    "run_sweep",
    "start_broker",
    "write_report",
]

if TYPE_CHECKING:
    from lab.analysis.configs import Analysis, analyze, load_run
    from lab.errors import BrokerError, ConfigError, LabError, ServiceError
    from lab.infra.broker import Broker, start_broker
    from lab.report.html import write_report
    from lab.results import RunFolder
    from lab.runtime.queue import JobEvent, Queue
    from lab.scenario.spec import Scenario, load_scenario
    from lab.sweep.runner import run_sweep


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
