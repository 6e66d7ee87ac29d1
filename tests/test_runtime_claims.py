"""The claim path: jobs are claimed only for free slots (plus `--prefetch`), the exchange survives
a lost broker connection, and every instance reports its own cost when it stops."""

from __future__ import annotations

import collections
import math
import signal
import threading
import time

import pytest
import redis

from lab.infra.broker import Broker
from lab.infra.procs import wait_for
from lab.runtime.queue import OK, Queue, encode_job
from lab.runtime.telemetry import runtime_figures
from lab.runtime.worker import EXCHANGE_SPACING_S
from tests.conftest import StartWorker


def held(queue: Queue, instance: str) -> int:
    """Jobs the instance holds: claimed (running or prefetched) and not yet acked."""
    return int(queue.client.hlen(queue.keys.processing(instance))) + int(
        queue.client.llen(queue.keys.inbox(instance))
    )


def most_held_while_draining(queue: Queue, instance: str) -> int:
    most = 0
    deadline = time.monotonic() + 60
    while queue.outstanding() and time.monotonic() < deadline:
        most = max(most, held(queue, instance))
        time.sleep(0.002)
    return most


@pytest.mark.parametrize(("prefetch", "limit"), [(0, 3), (2, 5)])
def test_an_instance_claims_only_for_free_slots_plus_prefetch(
    queue: Queue, start_worker: StartWorker, prefetch: int, limit: int
) -> None:
    queue.enqueue_many("tests.handlers:sleep", ({"s": 0.04} for _ in range(60)))
    start_worker("--prefetch", str(prefetch), "--job", "tests.handlers:sleep", num_workers=3)
    assert most_held_while_draining(queue, "w1") == limit  # reached, never passed
    assert len({e.job_id for e in queue.events() if e.outcome == OK}) == 60


def test_the_worker_writes_a_record_of_its_own_cost_at_stop(
    queue: Queue, start_worker: StartWorker
) -> None:
    ids = queue.enqueue_many("noop", ({"items": [i]} for i in range(300)))
    worker = start_worker(num_workers=8)
    wait_for(lambda: queue.outstanding() == 0, what="the queue to drain", timeout_s=60)
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0

    [record] = queue.runtime_stats()
    assert record["instance"] == "w1" and record["slots"] == 8
    assert sum(record["slot_gap"].values()) == len(ids)  # one gap per first attempt
    assert record["claimed"] == len(ids)
    assert 1 <= record["claims"] <= record["exchanges"]
    assert sum(record["exchange_rtt"].values()) == record["exchanges"]
    figures = runtime_figures([record])
    assert all(not math.isnan(v) and v >= 0 for v in figures.values())
    assert figures["exchange_batch_mean"] == len(ids) / record["claims"]


def test_slots_freeing_in_one_long_turn_each_ask_at_once(
    queue: Queue, start_worker: StartWorker
) -> None:
    # Twelve jobs claimed together, ending together: each end burns more CPU than the spacing
    # after the one before, so each freed slot sends its own exchange rather than wait for the
    # turn's end (one exchange for all of them but the first, before the spacing rule).
    n = 12
    burn_ms = 4 * EXCHANGE_SPACING_S * 1000
    args = {"s": 0.05, "ms": burn_ms}
    ids = queue.enqueue_many("tests.handlers:sleep_then_burn", (args for _ in range(n)))
    worker = start_worker("--job", "tests.handlers:sleep_then_burn", num_workers=n)
    wait_for(lambda: queue.outstanding() == 0, what="the queue to drain", timeout_s=60)
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    assert sorted(e.job_id for e in queue.events() if e.outcome == OK) == sorted(ids)
    [record] = queue.runtime_stats()
    assert record["exchanges"] >= n + 1  # the first claim, then one per freed slot


def test_a_killed_broker_connection_is_reopened_and_no_job_is_lost(
    broker: Broker, queue: Queue, start_worker: StartWorker
) -> None:
    ids = queue.enqueue_many("tests.handlers:sleep", ({"s": 0.01} for _ in range(400)))
    worker = start_worker("--job", "tests.handlers:sleep", num_workers=4)
    stop = threading.Event()

    def kill_connections() -> None:  # every client but the killer, a few times while jobs run
        with broker.client() as killer_client:
            while not stop.wait(0.15):
                killer_client.client_kill_filter(_type="normal", skip_me=True)

    def drained() -> bool:  # our own connections get killed too
        try:
            return queue.outstanding() == 0
        except redis.ConnectionError:
            return False

    killer = threading.Thread(target=kill_connections, daemon=True)
    killer.start()
    try:
        wait_for(drained, what="the queue to drain", timeout_s=90)
    finally:
        stop.set()
        killer.join()
        queue.client.connection_pool.disconnect()  # drop connections the killer may have cut
    counts = collections.Counter(e.job_id for e in queue.events() if e.outcome == OK)
    assert set(counts) == set(ids)  # at least once each, none lost
    assert queue.stats()["done"] >= len(ids)
    assert "exchange with the broker failed" in worker.log_tail(200)  # the kill did land


def test_a_job_claimed_by_a_lost_reply_is_taken_back_after_the_reconnect(
    broker: Broker, queue: Queue, start_worker: StartWorker
) -> None:
    worker = start_worker(num_workers=2)
    # As if an exchange had claimed it and its reply had been lost with the connection:
    payload = encode_job("lost-1", "noop", {"items": [1]}, time.time())
    queue.client.hset(queue.keys.processing("w1"), "lost-1", payload)
    with broker.client() as killer:
        killer.client_kill_filter(_type="normal", skip_me=True)
    queue.client.connection_pool.disconnect()

    def ran() -> bool:
        try:
            return any(e.job_id == "lost-1" and e.outcome == OK for e in queue.events())
        except redis.ConnectionError:
            return False

    wait_for(ran, what="the lost job to run", timeout_s=30)
    assert "took back 1 jobs whose claim reply was lost" in worker.log_tail(200)
    wait_for(lambda: queue.outstanding() == 0, what="the ack", timeout_s=30)
