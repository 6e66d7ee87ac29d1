"""`python -m lab.bench {runtime,mocks,peers,faults,ray,dynamic} [options]`: dispatch to one benchmark's `main`."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "runtime": "lab.bench.runtime",
    "mocks": "lab.bench.mocks",
    "peers": "lab.bench.peers",
    "faults": "lab.bench.faults",
    "ray": "lab.bench.ray",
    "dynamic": "lab.bench.dynamic",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m lab.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
