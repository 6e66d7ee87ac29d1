"""`python -m lab.bench.calibrate [--quick] [--json PATH]`: how well the calibrator recovers a
service's parameters, and how well a sweep of its twin predicts the real thing.

1. The lab's own mock, started with parameters the calibrator is not told: capacities from 2
   to 32 (with their queue, latency and per-item cost), rate limits, connection limits. Each
   fitted value is printed beside the truth, with the issue's tolerance: capacity exact up to 16
   (±10 % above), queue exact, median ±10 %, p99 ±25 %, rate ±10 %, per_item_ms ±20 %,
   connection limit exact.
2. nginx (`lab.bench.nginx`: echo_sleep 0.05, limit_req 200 r/s burst 20 nodelay), when
   installed: rate 200 ±10 %, median 50 ms ±10 %; then a sweep of the fitted twin with
   `--verify`: the twin's throughput at its recommended configuration against nginx's, ±15 %.
Each calibration runs in a fresh mock (or nginx) process; the machine's own load shows up as
latency the calibrator cannot tell from the service's (the note says so with the numbers).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.bench.nginx import nginx_binary, nginx_server
from lab.calibrate import calibrate
from lab.calibrate.run import Calibration
from lab.mocks.distributions import quantile
from lab.mocks.process import mock_process
from lab.mocks.spec import parse_spec
from lab.results import RunFolder


@dataclass
class Check:
    case: str
    parameter: str
    truth: float
    fitted: float | None
    tolerance: float  # a share of the truth; 0: exact

    @property
    def error(self) -> float | None:
        if self.fitted is None or not math.isfinite(self.fitted):
            return None
        return (self.fitted - self.truth) / self.truth if self.truth else None

    @property
    def ok(self) -> bool:
        err = self.error
        return err is not None and abs(err) <= self.tolerance + 1e-9


def _run(spec: dict[str, Any], work: Path, **kw: Any) -> Calibration:
    with mock_process(parse_spec(spec), workdir=work / "mock") as mock:
        return calibrate(
            mock.url, spec["kind"], out_dir=work / "out", stream=io.StringIO(), check=False, **kw
        )


def capacity_cases(quick: bool) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for k in (4, 16) if quick else (2, 4, 8, 12, 16, 32):
        spec = {
            "kind": "http_api", "capacity": k, "queue": max(4, k // 2), "per_item_ms": 0.3,
            "latency": {"dist": "lognormal", "median_ms": 40, "p99_ms": 80},
        }  # fmt: skip
        out.append(
            (
                f"capacity {k}",
                spec,
                {
                    "max_in_flight": 64,
                    "max_requests_per_s": 3000,
                    "budget_s": 30,
                    "batch_sizes": (1, 50, 100),
                },
            )
        )
    return out


def _latency_checks(case: str, spec: dict[str, Any], cal: Calibration) -> list[Check]:
    truth = parse_spec(spec).latency
    best = cal.fit.latency
    return [
        Check(case, "median_ms", quantile(truth, 0.5), best.median_ms, 0.10),
        Check(case, "p99_ms", quantile(truth, 0.99), best.p99_ms, 0.25),
    ]


def mock_checks(quick: bool, work: Path, say: Callable[[str], None]) -> list[Check]:
    checks: list[Check] = []
    for case, spec, kw in capacity_cases(quick):
        cal = _run(spec, work / case.replace(" ", "-"), **kw)
        k = spec["capacity"]
        checks += [
            Check(case, "capacity", k, cal.spec.capacity, 0.0 if k <= 16 else 0.10),
            Check(case, "queue", spec["queue"], cal.spec.queue, 0.0),
            Check(case, "per_item_ms", spec["per_item_ms"], cal.spec.per_item_ms, 0.20),
            *_latency_checks(case, spec, cal),
        ]
        say(f"{case}: {cal.fit.findings['capacity']}")
    for per_s in (100,) if quick else (50, 100, 200):
        case = f"rate limit {per_s}/s"
        spec = {
            "kind": "http_api", "capacity": 64, "queue": 0,
            "latency": {"dist": "lognormal", "median_ms": 20, "p99_ms": 40},
            "rate_limit": {"per_s": per_s, "burst": max(1, per_s // 4)},
        }  # fmt: skip
        cal = _run(
            spec,
            work / f"rate-{per_s}",
            max_in_flight=32,
            max_requests_per_s=4 * per_s,
            budget_s=15,
            batch_sizes=(1,),
        )
        limit = cal.spec.rate_limit
        checks.append(Check(case, "rate_limit.per_s", per_s, limit.per_s if limit else None, 0.10))
        say(f"{case}: {cal.fit.findings.get('rate_limit')}")
    for n in (5,) if quick else (3, 5, 10):
        case = f"connection limit {n}"
        spec = {
            "kind": "database",
            "capacity": 64,
            "connection_limit": n,
            "latency": {"dist": "constant", "ms": 20},
        }
        cal = _run(
            spec,
            work / f"conn-{n}",
            max_in_flight=32,
            max_requests_per_s=500,
            budget_s=8,
            batch_sizes=(1,),
        )
        checks.append(Check(case, "connection_limit", n, cal.spec.connection_limit, 0.0))
    return checks


def nginx_checks(work: Path, say: Callable[[str], None]) -> tuple[list[Check], dict[str, Any]]:
    from lab.sweep.runner import run_sweep

    with nginx_server(work / "nginx", sleep_s=0.05, rate_per_s=200, burst=20) as url:
        cal = calibrate(
            url, "http_api", max_in_flight=32, max_requests_per_s=400, budget_s=30,
            batch_sizes=(1, 20), out_dir=work / "out", stream=io.StringIO(), check=False,
        )  # fmt: skip
        limit = cal.spec.rate_limit
        checks = [
            Check("nginx", "rate_limit.per_s", 200, limit.per_s if limit else None, 0.10),
            Check("nginx", "median_ms", 50, cal.fit.latency.median_ms, 0.10),
        ]
        say(f"nginx: {cal.fit.findings.get('rate_limit')}; {cal.fit.findings['latency']}")
        scenario = {
            **yaml.safe_load(cal.paths["yaml"].read_text()), "name": "nginx-twin", "seed": 1,
            "workload": {"job": "http.call", "service": "api", "items": 400},
            "sweep": {"num_workers": [2, 4, 8, 16], "instances": [1, 2], "batch_size": [1]},
        }  # fmt: skip
        path = work / "twin.yaml"
        path.write_text(yaml.safe_dump(scenario))
        run = run_sweep(path, out_dir=work / "runs", verify=True, stream=io.StringIO())
        assert run is not None
        verification = RunFolder(run.path).verification() or {}
    picked = verification["configs"][0]
    checks.append(
        Check(
            f"nginx {picked['label']}",
            "items_per_s (twin)",
            picked["real"]["items_per_s"],
            picked["predicted"]["items_per_s"],
            0.15,
        )
    )
    return checks, verification


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.bench.calibrate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one case of each kind")
    parser.add_argument(
        "--only", choices=["mocks", "nginx"], help="only the mock cases, or only nginx's"
    )
    parser.add_argument("--json", type=Path, help="also write the checks here")
    ns = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lab-bench-calibrate-") as tmp:
        work = Path(tmp)
        checks = mock_checks(ns.quick, work, say) if ns.only != "nginx" else []
        verification: dict[str, Any] = {}
        if ns.only == "mocks":
            pass
        elif nginx_binary() is not None:
            more, verification = nginx_checks(work, say)
            checks += more
        else:
            say("nginx with its echo module is not installed: its checks are skipped")
    if not checks:
        say("no check ran: nothing was measured")
        return 2
    print(f"{'case':24s} {'parameter':20s} {'truth':>9s} {'fitted':>9s} {'error':>8s}  within")
    for c in checks:
        err = "–" if c.error is None else f"{c.error:+.1%}"
        fitted = "–" if c.fitted is None else f"{c.fitted:g}"
        tol = "exact" if c.tolerance == 0 else f"±{c.tolerance:.0%}"
        print(
            f"{c.case:24s} {c.parameter:20s} {c.truth:9g} {fitted:>9s} {err:>8s}  {tol:6s} {'yes' if c.ok else 'NO'}"
        )
    if ns.json:
        ns.json.write_text(
            json.dumps(
                {
                    "checks": [asdict(c) | {"ok": c.ok} for c in checks],
                    "verification": verification,
                },
                indent=2,
            )
        )
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
