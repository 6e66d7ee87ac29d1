"""The recommendation: one frozen type, one way to say it, JSON only at the edge.

The sweep's verdict line, `Analysis.summary()`, the report's headline box and
recommendation.json all render this object, so they cannot disagree (a co-located pick reads
as co-located everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.configuration import Configuration

#: recommendation.json history: 1 = schema_version, config, figures, reasons, runners_up,
#: warnings, scalability, objective; 2 = `bottleneck` and `evidence` beside a configuration's
#: figures (the pick's, the runners-up'), and `configs`: every configuration with its figures,
#: bottleneck and evidence (lab.analysis.attribution); 3 = `dynamic`: each dynamic policy
#: against the best fixed configuration (lab.analysis.dynamic), empty when none was run.
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Candidate:
    """A measured configuration and its figures (means over repeats)."""

    config: Configuration
    figures: Mapping[str, Any]
    within_noise: bool | None = None  # runners-up: within the noise of the best
    bottleneck: str | None = None  # what held it (lab.analysis.attribution.BOTTLENECKS)
    evidence: Mapping[str, Any] | None = None  # the numbers that decided `bottleneck`

    def describe(self) -> str:
        """`nw16-in2-bs50: 4,100 items/s, p99 80 ms` (+ within noise of the best)."""
        f = self.figures
        noise = " (within noise of the best)" if self.within_noise else ""
        return (
            f"{self.config.label}: {_num(f.get('items_per_s'))} items/s, "
            f"p99 {_num(f.get('latency_p99_ms'))} ms{noise}"
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config.to_json(), "figures": dict(self.figures)}
        if self.within_noise is not None:
            out["within_noise"] = self.within_noise
        if self.bottleneck is not None:
            out |= {"bottleneck": self.bottleneck, "evidence": dict(self.evidence or {})}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            Configuration.of(data["config"]), data["figures"], data.get("within_noise"),
            data.get("bottleneck"), data.get("evidence"),
        )  # fmt: skip


@dataclass(frozen=True)
class Recommendation:
    """The pick (None when nothing met the SLO), its figures, the reasons and what came close."""

    pick: Candidate | None
    reasons: tuple[str, ...]
    runners_up: tuple[Candidate, ...] = ()
    warnings: tuple[str, ...] = ()
    scalability: tuple[Mapping[str, Any], ...] = ()
    objective: Mapping[str, Any] = field(default_factory=dict)
    configs: tuple[Candidate, ...] = ()  # every configuration measured, with what held it
    dynamic: tuple[Mapping[str, Any], ...] = ()  # each dynamic policy and its verdict

    @property
    def config(self) -> Configuration | None:
        return None if self.pick is None else self.pick.config

    @property
    def figures(self) -> Mapping[str, Any]:
        return {} if self.pick is None else self.pick.figures

    def describe(self) -> str:
        """The one-line verdict: what to run and what it measured, or why nothing is recommended."""
        if self.pick is None:
            return f"no configuration recommended: {self.reasons[0] if self.reasons else ''}"
        f = self.pick.figures
        repeats = f.get("repeats", 1)
        return (
            f"recommended: {self.pick.config.describe()} -> {_num(f.get('items_per_s'))} items/s, "
            f"p99 {_num(f.get('latency_p99_ms'))} ms, errors {_pct(f.get('error_rate'))} "
            f"(mean of {repeats} repeat{'s' if repeats != 1 else ''})"
        )

    def with_warnings(self, warnings: list[str]) -> Recommendation:
        return Recommendation(
            self.pick, self.reasons, self.runners_up, tuple(warnings), self.scalability,
            self.objective, self.configs, self.dynamic,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """recommendation.json's content."""
        return {
            "schema_version": SCHEMA_VERSION,
            "config": None if self.pick is None else self.pick.config.to_json(),
            "figures": {} if self.pick is None else dict(self.pick.figures),
            **(
                {}
                if self.pick is None or self.pick.bottleneck is None
                else {
                    "bottleneck": self.pick.bottleneck,
                    "evidence": dict(self.pick.evidence or {}),
                }
            ),
            "reasons": list(self.reasons),
            "runners_up": [r.to_json() for r in self.runners_up],
            "configs": [c.to_json() for c in self.configs],
            "warnings": list(self.warnings),
            "scalability": [dict(s) for s in self.scalability],
            "objective": dict(self.objective),
            "dynamic": [dict(d) for d in self.dynamic],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recommendation:
        config = data.get("config")
        pick = (
            None
            if config is None
            else Candidate(
                Configuration.of(config), data["figures"], None, data.get("bottleneck"),
                data.get("evidence"),
            )
        )  # fmt: skip
        return cls(
            pick=pick,
            reasons=tuple(data.get("reasons", ())),
            runners_up=tuple(Candidate.from_json(r) for r in data.get("runners_up", ())),
            warnings=tuple(data.get("warnings", ())),
            scalability=tuple(data.get("scalability", ())),
            objective=data.get("objective", {}),
            configs=tuple(Candidate.from_json(c) for c in data.get("configs", ())),
            dynamic=tuple(data.get("dynamic", ())),
        )


def _num(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:,.0f}"


def _pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.1%}"
