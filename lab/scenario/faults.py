"""The `faults:` field of a scenario: what goes wrong during every trial, and when.

    faults:
      - {at_s: 5, kill: instance, count: 1}          # SIGKILL one worker instance (a crash)
      - {at_s: 6, stall: instance, for_s: 3}         # freeze one (SIGSTOP, then SIGCONT)
      - {at_s: 8, restart: service, name: search}    # stop a mock, start it again
      - {at_s: 10, pause: broker, for_s: 2}          # the broker answers no client for 2 s

Each entry names exactly one action. Times count from the trial's clock start; a fault whose
time comes after the trial drained is not applied (the trial row says how many were). The sweep
applies them (`lab.sweep.faults`); this module only describes them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lab import limits as L
from lab.strict import Loc, Problems, Strict, hint, why

_At = Annotated[float, Field(ge=0, le=L.TIMEOUT_S_MAX), why(L.TIMEOUT_WHY)]
_For = Annotated[float, Field(gt=0, le=L.DURATION_S_MAX), why(L.DURATION_WHY)]

#: The action keys, the one value each takes, and the fields each action allows besides `at_s`.
ACTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "kill": ("instance", frozenset({"count", "signal"})),
    "stall": ("instance", frozenset({"count", "for_s"})),
    "restart": ("service", frozenset({"name"})),
    "pause": ("broker", frozenset({"for_s"})),
}
_REQUIRED = {"stall": ("for_s",), "restart": ("name",), "pause": ("for_s",)}


class Fault(Strict):
    """One fault: `at_s` and exactly one of kill, stall, restart or pause."""

    at_s: _At = Field(description="When, in seconds after the trial's clock start.")
    kill: Literal["instance"] | None = Field(
        default=None,
        description="Kill worker instances (chosen by the scenario's seed) with `signal`: a "
        "crash. Their jobs come back when their heartbeat expires (workers.heartbeat_ttl_s).",
    )
    stall: Literal["instance"] | None = Field(
        default=None,
        description="Freeze worker instances for `for_s` (SIGSTOP, then SIGCONT): a long GC "
        "pause or a job holding the event loop. Longer than the heartbeat TTL, their jobs are "
        "put back while they still run them: that work is done twice.",
    )
    restart: Literal["service"] | None = Field(
        default=None,
        description="Stop the mock service `name` (SIGTERM) and start it again on the same "
        "address, keeping its documents; connections open to it are closed.",
    )
    pause: Literal["broker"] | None = Field(
        default=None,
        description="The broker answers no client for `for_s` (Redis CLIENT PAUSE); only with "
        "the lab's private broker (broker.url null).",
    )
    count: Annotated[int, Field(ge=1, le=L.INSTANCES_MAX), why(L.INSTANCES_WHY)] = Field(
        default=1, description="kill, stall: how many instances."
    )
    signal: Literal["SIGKILL", "SIGTERM"] = Field(
        default="SIGKILL",
        description="kill: SIGKILL (a crash: nothing is put back until the heartbeat expires) "
        "or SIGTERM (a graceful stop: the instance puts its jobs back itself).",
    )
    for_s: _For | None = Field(default=None, description="stall, pause: how long, in seconds.")
    name: Annotated[str, Field(max_length=L.NAME_CHARS_MAX)] | None = Field(
        default=None, description="restart: the key of `services`."
    )

    @model_validator(mode="after")
    def _one_action(self) -> Fault:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            words = ", ".join(f"{a}: {value}" for a, (value, _) in ACTIONS.items())
            got = f"got {', '.join(given)}" if given else "got none"
            raise Problems(((), f"give exactly one action ({words}); {got}"))
        action = given[0]
        allowed = ACTIONS[action][1]
        fields = type(self).model_fields
        extra = [
            f for f in ("count", "signal", "for_s", "name") if getattr(self, f) != fields[f].default
        ]
        problems: list[tuple[Loc, str]] = [
            ((f,), f"not used by {action}") for f in extra if f not in allowed
        ]
        problems += [
            ((f,), f"required by {action}")
            for f in _REQUIRED.get(action, ())
            if getattr(self, f) is None
        ]
        if problems:
            raise Problems(*problems)
        return self

    @property
    def action(self) -> str:
        """kill, stall, restart or pause."""
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def ends_s(self) -> float:
        """When the fault's own action is over (its start for kill and restart)."""
        return float(self.at_s) + float(self.for_s or 0)

    def describe(self) -> str:
        """For people: 'kill 1 instance (SIGKILL) at 5 s'."""
        at = f"at {self.at_s:g} s"
        if self.kill:
            return f"kill {self.count} instance(s) ({self.signal}) {at}"
        if self.stall:
            return f"stall {self.count} instance(s) for {self.for_s:g} s {at}"
        if self.restart:
            return f"restart service {self.name} {at}"
        return f"pause the broker for {self.for_s:g} s {at}"


def fault_problems(
    faults: Sequence[Fault],
    services: Collection[str],
    *,
    broker_url: str | None,
    timeout_s: float,
) -> list[tuple[Loc, str]]:
    """What the rest of the scenario rules out: unknown services, a shared broker, late faults."""
    problems: list[tuple[Loc, str]] = []
    for i, fault in enumerate(faults):
        if fault.name is not None and fault.name not in services:
            known = f"{hint(fault.name, services)}; known: {', '.join(sorted(services))}"
            problems.append((("faults", i, "name"), f"unknown service {fault.name!r}{known}"))
        if fault.pause and broker_url is not None:
            problems.append(
                (
                    ("faults", i, "pause"),
                    "needs the lab's private broker (broker.url null): pausing a shared server "
                    "stops every client of it",
                )
            )
        if fault.at_s >= timeout_s:
            problems.append(
                (
                    ("faults", i, "at_s"),
                    f"must be < sweep.trial_timeout_s ({timeout_s:g}), got {fault.at_s:g}",
                )
            )
    return problems
