"""The lab's error tree.

CLIs catch `LabError`, print its one-line message to stderr and exit non-zero; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class LabError(Exception):
    """A problem the user can fix: the message says what, where and what to do next."""

    exit_code = 1


class ConfigError(LabError):
    """Bad input: a scenario, a flag or a handler name. Exit code 2, like argparse."""

    exit_code = 2


class BrokerError(LabError):
    """The Redis broker cannot be started or reached."""


class ServiceError(LabError):
    """A mock service or a worker process failed to start or answer."""


class HarnessError(LabError):
    """The lab's own machinery (the broker, a mock service) failed during a trial.

    Unlike a crashed worker instance, which is part of the experiment, this stops the run: its
    figures would measure the lab. Exit code 2; the run is marked failed and can be resumed.
    """

    exit_code = 2


def exit_status(prog: str, body: Callable[[], object]) -> int:
    """Run a CLI's body: a LabError becomes one line on stderr and its exit code, 0 otherwise.

    Anything else is a bug and keeps its traceback.
    """
    try:
        body()
    except LabError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
