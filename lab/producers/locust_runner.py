"""Locust as a producer: its command line, and its figures read back from its CSV output.

Locust runs headless in its own process (gevent, its own core when there is one), against the
app under test on loopback only, for a bounded time; it exits by itself, and the trial's
context manager stops it on any other exit path.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")

#: The trial row's columns that come from Locust, with the CSV column each is read from.
LOCUST_COLUMNS = {
    "web_requests": "Request Count",
    "web_failures": "Failure Count",
    "web_requests_per_s": "Requests/s",
    "web_p50_ms": "50%",
    "web_p90_ms": "90%",
    "web_p99_ms": "99%",
    "web_max_ms": "Max Response Time",
}


def locust_argv(
    *, host: str, users: int, spawn_rate: float, duration_s: float, csv_prefix: Path
) -> list[str]:
    """`python -m locust` headless for `duration_s`, writing its final figures to
    `<csv_prefix>_final_stats.csv` on exit (and its own `--csv` files beside it)."""
    if not host.startswith(("http://127.", "http://[::1]", "http://localhost")):
        raise ValueError(f"Locust may only target loopback, got {host}")
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{max(1, math.ceil(duration_s))}s",
        "--host", host, "--csv", str(csv_prefix), "--only-summary", "--loglevel", "WARNING",
        "--stop-timeout", "5", "--exit-code-on-error", "0", "--lab-final-csv", str(final_csv(csv_prefix)),
    ]  # fmt: skip


def final_csv(csv_prefix: Path) -> Path:
    """Where the locustfile writes the run's final stats (same columns as Locust's `--csv`)."""
    return Path(f"{csv_prefix}_final_stats.csv")


def read_locust_stats(csv_prefix: Path) -> dict[str, float]:
    """The aggregated figures of a finished Locust run (NaN where Locust wrote nothing).

    Read from the final stats, never from Locust's `<prefix>_stats.csv`: that is a snapshot up
    to a second old, short of the run's last responses."""
    path = final_csv(csv_prefix)
    empty = dict.fromkeys(LOCUST_COLUMNS, math.nan)
    if not path.exists():
        return empty
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return empty
    row = rows[0]
    out: dict[str, float] = {}
    for column, source in LOCUST_COLUMNS.items():
        value = row.get(source, "")
        out[column] = float(value) if value not in ("", "N/A") else math.nan
    return out
