"""lab: a concurrency tuning lab for background workers.

Importing `lab` has no side effects: it starts nothing and reads no file.
"""

from lab.broker import Broker, start_broker
from lab.errors import BrokerError, ConfigError, LabError, ServiceError
from lab.runtime.queue import JobEvent, Queue

__all__ = [
    "Broker",
    "BrokerError",
    "ConfigError",
    "JobEvent",
    "LabError",
    "Queue",
    "ServiceError",
    "start_broker",
]

__version__ = "0.1.0"
