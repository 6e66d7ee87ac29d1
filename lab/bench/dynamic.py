"""`python -m lab.bench dynamic`: do the dynamic policies hold up against the best fixed setting?

Three experiments, each a real sweep (embedded Redis, mock and worker processes), written under
`--out` and analysed with `lab.analysis.dynamic`; the table printed at the end is the figures of
the issue that asked for them. Everything is a ratio against a fixed configuration measured in
the same run, so a busy machine shifts both sides.

1. match: `num_workers: auto` (no prior knowledge: min 1, max 256, initial 4) added to the
   num_workers axis of a capacity-bound scenario (quickstart, batch 1), a rate-limited one
   (rate_limited_api, and with 4x its backlog: every 429 costs its job the server's Retry-After,
   a tail whose share shrinks with a longer backlog; and another API, 500/s at 20 ms, so that
   nothing is tuned to the shipped one) and a connection-limited database (below); auto
   against the best fixed num_workers at the same instance count: throughput, p99, and how
   long its limit took to settle. `--case WORD` keeps the cases whose name holds WORD.
2. brownout: a backlog against a service that is 5x slower for 10 s. The best fixed
   num_workers is found on the same service WITHOUT the brown-out (what a sweep would have
   told you); then it and auto meet the brown-out: 429s and timeouts, and how long after the
   brown-out the items done per second were back to 80 % of their rate before it.
3. step: scenarios/dynamic_load.yaml without its brown-out, num_workers 8: autoscaled
   instances against 1..4 fixed instances: does it meet the SLO, and with how many
   instance-seconds against the smallest fixed instance count that meets it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lab.analysis.configs import Analysis, analyze
from lab.analysis.dynamic import done_items, recovery_s
from lab.configuration import label
from lab.sweep.runner import run_sweep

SCENARIOS = Path(__file__).resolve().parent.parent.parent / "scenarios"

#: A database behind a connection limit: 20 connections, past them refused (503, like Postgres'
#: "too many clients"); 16 queries at once. More slots than connections only collect 503s.
CONNECTION_LIMITED = """
name: bench_connection_limited
seed: 21
services:
  db:
    kind: database
    capacity: 16
    queue: 64
    latency: {dist: lognormal, median_ms: 8, p99_ms: 30}
    connection_limit: 20
    connection_overflow: refuse
workload:
  job: http.call
  service: db
  items: 3000
  retry: {max_attempts: 10, backoff_ms: 20}
sweep:
  num_workers: [4, 16, 64]
  instances: [1]
  batch_size: [1]
  trial_timeout_s: 120
objective:
  slo: {max_error_rate: 0.01}
"""

#: The brown-out experiment's service and backlog: 4 servers, a 0.5 s job timeout.
BROWNOUT = """
name: bench_brownout
seed: 23
services:
  api:
    kind: http_api
    capacity: 4
    queue: 100
    latency: {dist: lognormal, median_ms: 10, p99_ms: 40}
workload:
  job: http.call
  service: api
  items: 3000
  job_timeout_s: 0.5
  retry: {max_attempts: 10, backoff_ms: 50}
sweep:
  num_workers: [2, 4, 8, 16, 32]
  instances: [1]
  batch_size: [1]
  trial_timeout_s: 120
objective:
  slo: {max_error_rate: 0.01}
"""

BROWNOUT_WINDOW = {"start_s": 2.0, "duration_s": 10.0, "latency_x": 5.0}


def _write(out: Path, name: str, scenario: dict[str, Any]) -> Path:
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def _sweep(out: Path, name: str, scenario: dict[str, Any], repeats: int) -> Analysis:
    scenario = {**scenario, "name": name}
    scenario["sweep"] = {**scenario["sweep"], "repeats": repeats}
    run = run_sweep(_write(out, name, scenario), out_dir=out / "runs", stream=io.StringIO())
    assert run is not None
    return analyze(run.path)


def _shipped(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((SCENARIOS / name).read_text()))


def match(out: Path, repeats: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Experiment 1: auto against the best fixed num_workers, per scenario and instance count
    (only the cases whose name holds one of `only`, if given)."""
    quickstart = _shipped("quickstart.yaml")
    quickstart["sweep"] |= {"batch_size": [1]}  # batch 50 is 8 jobs: nothing to adapt to
    longer = _shipped("rate_limited_api.yaml")  # a 429's Retry-After is a tail: how much of it
    longer["workload"]["items"] *= 4  # is the probing, how much the backlog's length
    longer["sweep"] |= {"num_workers": [10, 16]}
    other = _shipped("rate_limited_api.yaml")  # another rate and latency: 500/s x 22 ms = 11
    other["services"]["payments"] |= {
        "latency": {"dist": "lognormal", "median_ms": 20, "p99_ms": 60},
        "rate_limit": {"per_s": 500, "burst": 50},
    }
    other["workload"]["items"] = 2500  # a 5-s backlog, as the shipped one
    other["sweep"] |= {"num_workers": [4, 8, 12, 16, 64]}
    cases = {
        "capacity-bound (quickstart, batch 1)": quickstart,
        "rate-limited (rate_limited_api)": _shipped("rate_limited_api.yaml"),
        "rate-limited, 4x the backlog": longer,
        "rate-limited, 500/s at 20 ms": other,
        "connection-limited (database, 20 connections)": yaml.safe_load(CONNECTION_LIMITED),
    }
    rows = []
    for i, (case, scenario) in enumerate(cases.items()):
        if only and not any(word in case for word in only):
            continue
        scenario["sweep"] = {**scenario["sweep"], "quick": None}
        scenario["sweep"]["num_workers"] = ["auto", *scenario["sweep"]["num_workers"]]
        analysis = _sweep(out, f"match{i}", scenario, repeats)
        for _, p in analysis.dynamic.iterrows():
            top = _top_fixed(analysis, p)
            rows.append({
                "experiment": "match", "case": case, "policy": p["config"],
                "best_fixed": p.get("best_fixed"), "throughput_ratio": p.get("throughput_ratio"),
                "p99_ratio": p.get("p99_ratio"), "settle_s": p.get("settle_s"),
                "overloads": p["overloads"], "best_overloads": _best(analysis, p, "overloads"),
                "top_fixed": label(top), "top_ratio": p["items_per_s"] / top["items_per_s"],
                "top_p99_ratio": p["latency_p99_ms"] / top["latency_p99_ms"],
            })  # fmt: skip
    return rows


def _top_fixed(analysis: Analysis, policy: Any) -> Any:
    """The fixed configuration with the highest mean throughput at the policy's instance count
    (the analysis's best ranks by a conservative bound, so a noisy repeat can demote the top)."""
    rivals = analysis.configs[analysis.configs["instances"] == int(policy["instances"])]
    return rivals.loc[rivals["items_per_s"].idxmax()]


def _best(analysis: Analysis, policy: Any, figure: str) -> float:
    """A figure of the policy's best fixed rival (429s + timeouts for `overloads`)."""
    best = policy.get("best_fixed")
    rows = analysis.configs[[label(r) == best for _, r in analysis.configs.iterrows()]]
    if rows.empty:
        return math.nan
    row = rows.iloc[0]
    if figure == "overloads":
        return float(row["service_rejected"] + row["timeouts"])
    return float(row[figure])


def brownout(out: Path, repeats: int) -> list[dict[str, Any]]:
    """Experiment 2: the best fixed num_workers without a brown-out, then both through one."""
    calm = yaml.safe_load(BROWNOUT)
    found = _sweep(out, "brownout_calm", calm, repeats)
    ok = found.configs[found.configs["slo_problems"].map(len) == 0]
    best = ok.loc[ok["items_per_s"].idxmax()]
    stormy = yaml.safe_load(BROWNOUT)
    stormy["services"]["api"]["brownouts"] = [BROWNOUT_WINDOW]
    stormy["sweep"]["num_workers"] = ["auto", int(best["num_workers"])]
    analysis = _sweep(out, "brownout", stormy, repeats)
    rows = []
    for _, p in analysis.dynamic.iterrows():
        fixed = analysis.configs.iloc[0]
        rows.append({
            "experiment": "brownout", "case": "5x slower for 10 s (backlog)", "policy": p["config"],
            "best_fixed": label(fixed), "throughput_ratio": p.get("throughput_ratio"),
            "p99_ratio": p.get("p99_ratio"), "overloads": p["overloads"],
            "best_overloads": float(fixed["service_rejected"] + fixed["timeouts"]),
            "slots_during_share": p.get("slots_during_share"), "recovery_s": p.get("recovery_s"),
            "best_recovery_s": _fixed_recovery(analysis, label(fixed)),
        })  # fmt: skip
    return rows


def _fixed_recovery(analysis: Analysis, name: str) -> float:
    """The recovery after the brown-out of a fixed configuration, mean over its trials."""
    assert analysis.run is not None and analysis.service is not None
    window = analysis.service.brownouts[0]
    trials = analysis.trials[[label(r) == name for _, r in analysis.trials.iterrows()]]
    found = [
        recovery_s(done_items(analysis.run.jobs, t), window, float(t["makespan_s"]))
        for _, t in trials.iterrows()
    ]
    known = [f for f in found if math.isfinite(f)]
    return sum(known) / len(known) if known else math.nan


def step(out: Path, repeats: int) -> list[dict[str, Any]]:
    """Experiment 3: autoscaled instances against fixed instance counts on a step load."""
    scenario = _shipped("dynamic_load.yaml")
    scenario["services"]["api"].pop("brownouts", None)
    autoscale = next(v for v in scenario["sweep"]["instances"] if isinstance(v, dict))
    scenario["sweep"] |= {"num_workers": [8], "instances": [1, 2, 3, 4, autoscale], "quick": None}
    analysis = _sweep(out, "step", scenario, repeats)
    rows = []
    for _, p in analysis.dynamic.iterrows():
        rows.append({
            "experiment": "step", "case": "60/s then 300/s, num_workers 8", "policy": p["config"],
            "meets_slo": not p["slo_problems"], "queue_wait_p99_ms": p["queue_wait_p99_ms"],
            "latency_p99_ms": p["latency_p99_ms"], "instance_seconds": p["instance_seconds"],
            "cheapest_fixed": p.get("cheapest_fixed"),
            "cheapest_instance_seconds": p.get("cheapest_instance_seconds"),
        })  # fmt: skip
    return rows


EXPERIMENTS: dict[str, Callable[[Path, int], list[dict[str, Any]]]] = {
    "match": match,
    "brownout": brownout,
    "step": step,
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lab.bench dynamic", description=__doc__.split("\n")[0]
    )
    p.add_argument("--only", choices=list(EXPERIMENTS), action="append", help="run only these")
    p.add_argument("--repeats", type=int, default=2, help="repeats of every configuration (2)")
    p.add_argument("--out", type=Path, default=Path("results/bench-dynamic"))
    p.add_argument(
        "--case", action="append", metavar="WORD",
        help="match: only the cases whose name holds WORD (e.g. rate-limited, 500/s)",
    )  # fmt: skip
    ns = p.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in ns.only or list(EXPERIMENTS):
        if name == "match":
            rows += match(ns.out, ns.repeats, ns.case)
        else:
            rows += EXPERIMENTS[name](ns.out, ns.repeats)
        (ns.out / "summary.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    return 0
