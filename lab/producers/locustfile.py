"""The Locust user of a web-driven trial: posts to the app under test's `/items`, then waits.

Settings come from the environment, set by `lab.producers.locust_runner`:
LAB_WAIT_MIN_S and LAB_WAIT_MAX_S (a user's think time between requests, uniform).

`--lab-final-csv PATH` (added here) writes the final figures when Locust exits, every user
stopped: Locust's own `--csv` stats file is a snapshot it rewrites once a second, so it misses
the responses of the run's last second (all of them, when a busy machine starves its writer).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

_environment: list[Environment] = []  # set by Locust's init event


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--lab-final-csv", default="", help="write the final stats here on exit")


@events.init.add_listener
def _remember(environment: Environment, **_: Any) -> None:
    _environment.append(environment)


@events.quit.add_listener
def _write_final_stats(**_: Any) -> None:
    """Fired once every user stopped (after `--stop-timeout`), just before the process exits."""
    env = _environment[-1]
    path = env.parsed_options.lab_final_csv if env.parsed_options is not None else ""
    if path:
        with open(path, "w", newline="") as f:
            StatsCSV(env, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))


class ItemPoster(HttpUser):
    wait_time = between(
        float(os.environ.get("LAB_WAIT_MIN_S", "0.5")),
        float(os.environ.get("LAB_WAIT_MAX_S", "1.5")),
    )

    @task
    def post_items(self) -> None:
        self.client.post("/items", data=b"{}", headers={"Content-Type": "application/json"})
