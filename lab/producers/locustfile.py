"""The Locust user of a web-driven trial: posts to the app under test's `/items`, then waits.

Settings come from the environment, set by `lab.producers.locust_runner`:
LAB_WAIT_MIN_S and LAB_WAIT_MAX_S (a user's think time between requests, uniform).
"""

from __future__ import annotations

import os

from locust import HttpUser, between, task


class ItemPoster(HttpUser):
    wait_time = between(
        float(os.environ.get("LAB_WAIT_MIN_S", "0.5")),
        float(os.environ.get("LAB_WAIT_MAX_S", "1.5")),
    )

    @task
    def post_items(self) -> None:
        self.client.post("/items", data=b"{}", headers={"Content-Type": "application/json"})
