"""A configuration: the knobs one trial runs with. The one place that names and renders it.

Trial ids, report labels, the recommendation's verdict and recommendation.json all come from
here, so a co-located (or, later, a dynamic) configuration never shows as something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Where the slots run: worker processes of their own, or inside the web app's processes.
SEPARATE, COLOCATED = "separate", "colocated"

#: The knobs of a configuration, in trials.csv order.
KNOBS = ("num_workers", "instances", "batch_size", "placement")


def _knob(value: Any) -> int | str:
    """An axis value as trials.csv and JSON hold it: an integer, or a policy's name (`auto`)."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return value
    return int(value)


@dataclass(frozen=True)
class Configuration:
    """num_workers slots per instance x instances, batch_size items per job, and the placement."""

    num_workers: int | str
    instances: int | str
    batch_size: int
    placement: str = SEPARATE

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Configuration:
        """From a trials.csv row, a per-configuration row, or a JSON `config` mapping."""
        placement = row.get("placement", SEPARATE)
        return cls(
            num_workers=_knob(row["num_workers"]),
            instances=_knob(row["instances"]),
            batch_size=int(row["batch_size"]),
            placement=str(placement) if isinstance(placement, str) and placement else SEPARATE,
        )

    @property
    def concurrency(self) -> int | None:
        """Total slots (num_workers x instances); None when either is a dynamic policy."""
        if isinstance(self.num_workers, int) and isinstance(self.instances, int):
            return self.num_workers * self.instances
        return None

    @property
    def label(self) -> str:
        """As trial ids name it: nw16-in2-bs50 (nw16-in2-bs50-colo when co-located)."""
        colocated = "-colo" if self.placement == COLOCATED else ""
        return f"nw{self.num_workers}-in{self.instances}-bs{self.batch_size}{colocated}"

    def describe(self) -> str:
        """For people: `num_workers=16, instances=2, batch_size=50` (+ the placement if not separate)."""
        words = [f"{k}={v}" for k, v in self.to_json().items()]
        return ", ".join(words)

    def to_json(self) -> dict[str, Any]:
        """recommendation.json's `config`: the placement only when it is not the default."""
        out: dict[str, Any] = {
            "num_workers": self.num_workers,
            "instances": self.instances,
            "batch_size": self.batch_size,
        }
        if self.placement != SEPARATE:
            out["placement"] = self.placement
        return out


def label(row: Mapping[str, Any]) -> str:
    """The label of the configuration a row (trial, per-configuration or JSON) describes."""
    return Configuration.of(row).label
