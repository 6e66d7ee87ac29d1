"""A real service in a trial: its owner's caps hold over all instances, no lab route reaches it.

- In flight: every built-in job sends one request at a time, and an instance's connection pool
  has `num_workers` connections, so at most num_workers x instances requests are in flight. A
  configuration with more slots than `max_in_flight` is clipped (fewer slots per instance;
  fewer instances if even one slot each is too many) and its trials.csv row says so.
- Rate: each instance paces its requests to the service at `floor(max_requests_per_s /
  instances)` per second (`lab.infra.pacing`), so the sum over instances never exceeds the cap
  in any second. A per-instance share needs no coordination on the hot path (a shared limiter
  in Redis would add a round trip to every request); its cost is that an idle instance's share
  is not lent to a busy one, which only makes the lab gentler than allowed.
- Accounting: the lab cannot read a real service's ledger. OpenSearch can count by ids: each
  trial writes into an index of its own (`<index>-<trial>-<token>`), counts it after the drain
  (`_refresh`, `_count`: lost = items - documents), then deletes it; duplicates stay unknown.
  Other protocols report lost and duplicate items as unknown (empty).
- A delete workload's documents are put in place with `_bulk` (the protocol), never with the
  mocks' `/_lab/seed`; no `/_lab/` route is ever sent to an external URL.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from lab.errors import ServiceError
from lab.external import ExternalService
from lab.mocks.spec import RateLimit, ServiceSpec
from lab.runtime.jobs import job_type
from lab.scenario.spec import Scenario

SEED_BATCH = 500
"""Documents per `_bulk` request when putting a delete workload's ids in place."""


def externals(scenario: Scenario) -> dict[str, ExternalService]:
    return {n: s for n, s in scenario.services.items() if isinstance(s, ExternalService)}


def clip(scenario: Scenario, num_workers: int, instances: int) -> tuple[int, int, str]:
    """(num_workers, instances, what changed and why: "" when nothing) within every external
    service's caps: at most max_in_flight slots in all, at least one request/s per instance."""
    caps = list(externals(scenario).values())
    if not caps:
        return num_workers, instances, ""
    slots = min(c.max_in_flight for c in caps)
    per_s = min(c.max_requests_per_s for c in caps)
    changes = []
    most_instances = max(1, min(slots, math.floor(per_s)))
    if instances > most_instances:  # each change names the cap that made it
        cap = (
            f"max_in_flight {slots}" if most_instances == slots else f"max_requests_per_s {per_s:g}"
        )
        changes.append(f"instances {instances} -> {most_instances} ({cap})")
        instances = most_instances
    if num_workers * instances > slots:
        changes.append(f"num_workers {num_workers} -> {slots // instances} (max_in_flight {slots})")
        num_workers = slots // instances
    return num_workers, instances, ", ".join(changes)


def rate_share(per_s: float, instances: int) -> float:
    """One instance's requests/s: whole requests, so the instances' sum stays within `per_s`."""
    share = per_s / instances
    return float(math.floor(share)) if share >= 1 else share


def worker_flags(scenario: Scenario, instances: int) -> list[str]:
    """`--max-requests-per-s NAME=R` for each external service: this instance's share."""
    flags: list[str] = []
    for name, ext in externals(scenario).items():
        flags += [
            "--max-requests-per-s",
            f"{name}={rate_share(ext.max_requests_per_s, instances):g}",
        ]
    return flags


def with_trial_index(scenario: Scenario, trial_id: str, token: str) -> Scenario:
    """The scenario with an index of the trial's own when the target is an external OpenSearch
    (so its documents can be counted, then removed); unchanged otherwise."""
    target = scenario.services[scenario.workload.service]
    if not isinstance(target, ExternalService) or target.protocol != "opensearch":
        return scenario
    index = f"{scenario.workload.index}-{trial_id}-{token}".lower()
    workload = scenario.workload.model_copy(update={"index": index})
    return scenario.model_copy(update={"workload": workload})


def stand_in(service: ServiceSpec | ExternalService) -> ServiceSpec:
    """A mock standing in for a service in estimates: an external one as its caps allow (the
    model's default latency, `max_in_flight` at once, `max_requests_per_s`)."""
    if isinstance(service, ServiceSpec):
        return service
    return ServiceSpec(
        kind=service.protocol,
        capacity=service.max_in_flight,
        rate_limit=RateLimit(per_s=service.max_requests_per_s),
    )


class _Client:
    """Plain requests to an external service outside the measured time, within its caps: one
    at a time, paced at its max_requests_per_s."""

    def __init__(self, service: ExternalService) -> None:
        self.service = service
        self.gap_s = 1.0 / service.max_requests_per_s
        self._last = -math.inf

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> Any:
        time.sleep(max(0.0, self._last + self.gap_s - time.monotonic()))
        self._last = time.monotonic()
        headers = {"Content-Type": ctype} if ctype else {}
        req = urllib.request.Request(
            self.service.url + path, data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise ServiceError(f"{method} {self.service.url}{path}: {exc}") from None


def prepare(scenario: Scenario, items: int) -> None:
    """Before the clock: a delete workload's ids put in place on an external OpenSearch."""
    w = scenario.workload
    target = scenario.services[w.service]
    if not isinstance(target, ExternalService) or not job_type(w.job).seeds_ids:
        return
    client = _Client(target)
    for start in range(0, items, SEED_BATCH):
        lines = []
        for i in range(start, min(items, start + SEED_BATCH)):
            lines += [json.dumps({"index": {"_index": w.index, "_id": str(i)}}), "{}"]
        answer = client.call(
            "POST", "/_bulk", ("\n".join(lines) + "\n").encode(), "application/x-ndjson"
        )
        if isinstance(answer, dict) and answer.get("errors"):
            raise ServiceError(f"{target.url}: putting the delete workload's ids in place failed")


def collect(scenario: Scenario, name: str) -> dict[str, Any]:
    """After the drain: what the lab can know of an external service (its 'statistics' in
    services/<trial>.json); on an external OpenSearch target, its documents counted, then its
    trial index deleted."""
    service = scenario.services[name]
    assert isinstance(service, ExternalService)
    out: dict[str, Any] = {"external": True, "url": service.url, "protocol": service.protocol}
    w = scenario.workload
    if name != w.service or service.protocol != "opensearch":
        return out
    client = _Client(service)
    client.call("POST", f"/{w.index}/_refresh")
    out["documents"] = int(client.call("GET", f"/{w.index}/_count")["count"])
    out["index_deleted"] = bool(client.call("DELETE", f"/{w.index}").get("acknowledged"))
    return out


def row_columns(job: str, stats: Mapping[str, Any], items: int) -> dict[str, Any]:
    """The trials.csv columns an external target fills differently from a mock: what it alone
    could count is unknown (None), lost items come from its document count where it has one."""
    documents = stats.get("documents")
    lost = None
    if documents is not None:
        ledger = job_type(job).ledger
        lost = (
            items - documents if ledger == "writes" else documents if ledger == "deletes" else None
        )
    unknown = ("service_requests", "service_rejected", "service_errors", "service_max_in_flight",
               "service_max_queue_depth", "service_rate_limited", "service_queue_full",
               "service_connections_refused", "service_max_connections", "service_utilization",
               "duplicate_items")  # fmt: skip
    return {**dict.fromkeys(unknown), "lost_items": lost}
