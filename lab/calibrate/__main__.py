"""`python -m lab.calibrate URL --protocol P [...]`: probe a live service, fit its twin."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from lab.calibrate.target import PROTOCOLS, check_input, parse_batch_sizes
from lab.errors import LabError
from lab.infra.procs import stop_on_signals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.calibrate",
        description="Probe a live service (bounded by the caps and the budget), fit the lab's "
        "mock to it and write a services: block, the measurements and a report.",
    )
    p.add_argument("url", help="the service's base URL (http:// or https://)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS, help="what it speaks")
    p.add_argument("--max-in-flight", type=int, default=32, metavar="N",
                   help="never more requests at once than this (default 32)")  # fmt: skip
    p.add_argument("--max-requests-per-s", type=float, default=500.0, metavar="R",
                   help="never more requests per second than this (default 500)")  # fmt: skip
    p.add_argument("--batch-sizes", default="1,10,100", metavar="LIST",
                   help="items per request to time, for per_item_ms (default 1,10,100)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=60.0, metavar="S",
                   help="the probe's time on the service, in seconds (default 60)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("results/calibrate"), metavar="DIR",
                   help="where the calibration's folder goes (default results/calibrate)")  # fmt: skip
    p.add_argument("--name", help="the service's key in the services: block (default by protocol)")
    p.add_argument("--no-check", action="store_true",
                   help="skip probing the fitted twin on loopback (faster; no twin curves)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(args)
    try:
        settings = {
            "max_in_flight": ns.max_in_flight, "max_requests_per_s": ns.max_requests_per_s,
            "batch_sizes": parse_batch_sizes(ns.batch_sizes), "budget_s": ns.budget_s,
            "name": ns.name,
        }  # fmt: skip
        check_input(ns.url, ns.protocol, **settings)  # bad input fails fast, before the imports
        from lab.calibrate.run import calibrate

        with stop_on_signals():
            result = calibrate(
                ns.url, ns.protocol, **settings, out_dir=ns.out, check=not ns.no_check,
                command=shlex.join(["python", "-m", "lab.calibrate", *args]),
            )  # fmt: skip
    except LabError as exc:
        print(f"lab.calibrate: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nlab.calibrate: interrupted; nothing written", file=sys.stderr)
        return 130
    except SystemExit as exc:  # SIGTERM, turned into SystemExit so the twin mock was stopped
        return int(exc.code or 0)
    print(f"fitted service: {result.paths['yaml']}\nreport: {result.paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
