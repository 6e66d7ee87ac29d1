"""The worker runtime end to end: real redis-server, real worker processes, real signals."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys

import pytest

from lab.infra.procs import env_with_pythonpath, python_module_argv, wait_for
from lab.runtime.queue import DEAD, OK, RETRY, JobEvent, Queue
from tests.conftest import StartWorker

SLEEP = "tests.handlers:sleep"  # a user job: workers run it only when started with --job


def drained(queue: Queue) -> bool:
    return queue.outstanding() == 0


def ok_counts(events: list[JobEvent]) -> collections.Counter[str]:
    return collections.Counter(e.job_id for e in events if e.outcome == OK)


def in_flight(queue: Queue, instance: str) -> int:
    return int(queue.client.hlen(queue.keys.processing(instance)))


def test_every_job_completes_exactly_once_across_two_instances(
    queue: Queue, start_worker: StartWorker
) -> None:
    ids = queue.enqueue_many("noop", ({"items": [i]} for i in range(3000)))
    start_worker(num_workers=8)
    start_worker(num_workers=8)
    wait_for(lambda: drained(queue), what="the queue to drain", timeout_s=60)

    events = queue.events()
    assert ok_counts(events) == collections.Counter(ids)  # each id exactly once, none missing
    assert queue.stats() == {"enqueued": 3000, "done": 3000}
    assert all(e.started_at >= e.enqueued_at and e.finished_at >= e.started_at for e in events)
    assert {e.instance for e in events} <= {"w1", "w2"}


def test_kill_9_loses_no_job(queue: Queue, start_worker: StartWorker) -> None:
    ids = queue.enqueue_many("tests.handlers:sleep", ({"s": 0.3} for _ in range(40)))
    victim = start_worker("--heartbeat-ttl-s", "1", "--job", SLEEP, num_workers=10)
    wait_for(lambda: in_flight(queue, "w1") == 10, what="10 jobs in flight", timeout_s=30)
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    held = in_flight(queue, "w1")
    assert held > 0

    start_worker("--heartbeat-ttl-s", "1", "--job", SLEEP, num_workers=10)
    wait_for(lambda: drained(queue), what="recovery and drain", timeout_s=60)

    counts = ok_counts(queue.events())
    assert set(counts) == set(ids), "a job was lost"
    assert queue.stats()["recovered"] == held
    assert queue.stats()["done"] == sum(counts.values())
    assert queue.client.sismember(queue.keys.instances, "w1") == 0


def test_sigterm_finishes_in_flight_jobs_and_puts_the_rest_back(
    queue: Queue, start_worker: StartWorker
) -> None:
    queue.enqueue_many("tests.handlers:sleep", ({"s": 0.5} for _ in range(30)))
    worker = start_worker("--grace-s", "20", "--job", SLEEP, num_workers=5)
    wait_for(lambda: in_flight(queue, "w1") == 5, what="5 jobs in flight", timeout_s=30)
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0

    finished = ok_counts(queue.events())
    assert len(finished) >= 5  # the in-flight ones finished; none was cut
    assert all(n == 1 for n in finished.values())
    assert queue.client.llen(queue.keys.pending) == 30 - len(finished)
    assert queue.outstanding() == 30 - len(finished)
    assert queue.client.exists(queue.keys.processing("w1"), queue.keys.heartbeat("w1")) == 0
    assert queue.live_instances() == set()


def test_sigterm_lets_a_prefetched_job_finish_in_a_single_slot(
    queue: Queue, start_worker: StartWorker
) -> None:
    """One slot that takes its prefetched job itself, the queue then empty: a stop still waits
    for the job it runs (the slot had been marked idle between the two, and the stop cut it)."""
    queue.enqueue_many("tests.handlers:sleep", ({"s": 1.0} for _ in range(2)))
    worker = start_worker("--grace-s", "20", "--prefetch", "1", "--job", SLEEP, num_workers=1)
    wait_for(lambda: len(ok_counts(queue.events())) == 1, what="the first job done", timeout_s=30)
    worker.signal(signal.SIGTERM)  # while the second, prefetched, one runs
    assert worker.popen.wait(timeout=30) == 0

    finished = ok_counts(queue.events())
    assert len(finished) == 2 and all(n == 1 for n in finished.values())
    assert queue.outstanding() == 0


def test_sigterm_past_the_grace_period_puts_unfinished_jobs_back(
    queue: Queue, start_worker: StartWorker
) -> None:
    ids = queue.enqueue_many("tests.handlers:sleep", ({"s": 60} for _ in range(3)))
    worker = start_worker("--grace-s", "0.2", "--job", SLEEP, num_workers=3)
    wait_for(lambda: in_flight(queue, "w1") == 3, what="3 jobs in flight", timeout_s=30)
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0

    assert queue.events() == []
    assert queue.stats()["released"] == 3
    back = {
        (p.decode() if isinstance(p, bytes) else p).split(" ", 1)[0]
        for p in queue.client.lrange(queue.keys.pending, 0, -1)
    }
    assert back == set(ids)


def test_retries_with_backoff_then_dead_letter(queue: Queue, start_worker: StartWorker) -> None:
    ids = queue.enqueue_many("tests.handlers:fail", ({"key": i} for i in range(5)))
    start_worker("--max-attempts", "3", "--backoff-ms", "1", "--job", "tests.handlers:fail")
    wait_for(lambda: drained(queue), what="retries to run out", timeout_s=60)

    events = sorted(queue.events(), key=lambda e: (e.job_id, e.attempt))
    by_job = collections.defaultdict(list)
    for e in events:
        by_job[e.job_id].append(e)
    assert set(by_job) == set(ids)
    for attempts in by_job.values():
        assert [(e.attempt, e.outcome) for e in attempts] == [(1, RETRY), (2, RETRY), (3, DEAD)]
        assert all("RuntimeError: boom" in (e.error or "") for e in attempts)
        # a retry never starts before the failed attempt ended
        assert attempts[1].started_at >= attempts[0].finished_at
        assert len({e.enqueued_at for e in attempts}) == 1  # latency counts from the first enqueue
    dead = queue.dead_letters()
    assert sorted(job_id for job_id, _ in dead) == sorted(ids)
    assert all("boom" in msg["args"]["_error"] for _, msg in dead)
    assert queue.stats() == {"enqueued": 5, "retried": 10, "dead": 5}


def test_a_retry_that_succeeds(queue: Queue, start_worker: StartWorker) -> None:
    queue.enqueue_many("tests.handlers:fail_times", [{"key": "k", "fail": 2}])
    start_worker(
        "--max-attempts",
        "5",
        "--backoff-ms",
        "1",
        "--job",
        "tests.handlers:fail_times",
        num_workers=1,
    )
    wait_for(lambda: drained(queue), what="the retries", timeout_s=30)
    outcomes = [
        (e.attempt, e.outcome, e.extra) for e in sorted(queue.events(), key=lambda e: e.attempt)
    ]
    assert outcomes == [(1, RETRY, None), (2, RETRY, None), (3, OK, {"calls": 3})]
    assert queue.dead_letters() == []


def test_per_job_timeout(queue: Queue, start_worker: StartWorker) -> None:
    queue.enqueue_many("tests.handlers:sleep", [{"s": 30}])
    start_worker("--job-timeout-s", "0.2", "--max-attempts", "1", "--job", SLEEP)
    wait_for(lambda: drained(queue), what="the timeout", timeout_s=30)
    [event] = queue.events()
    assert (event.outcome, event.error) == (DEAD, "timeout after 0.2s")


def test_unknown_job_in_the_queue_is_dead_lettered_without_retries(
    queue: Queue, start_worker: StartWorker
) -> None:
    queue.enqueue("no.such:job")
    start_worker("--max-attempts", "5")
    wait_for(lambda: drained(queue), what="the dead letter", timeout_s=30)
    [event] = queue.events()
    assert event.outcome == DEAD and event.attempt == 1
    assert "'no.such:job' is not a built-in nor one this worker was started with" in (
        event.error or ""
    )


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            "opensearch.indx",
            "unknown job 'opensearch.indx': expected a built-in (cpu.burn, http.call",
        ),
        ("tests.handlers:missing", "module 'tests.handlers' has no attribute 'missing'"),
        ("tests.nowhere:f", "cannot import module 'tests.nowhere'"),
        ("tests.handlers:not_a_coroutine", "must be an async function"),
    ],
)
def test_bad_handler_name_fails_at_start(
    broker_url_unreachable: str, job: str, message: str
) -> None:
    argv = python_module_argv(
        "lab.runtime.worker", "--broker", broker_url_unreachable, "--job", job
    )
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env_with_pythonpath()
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def broker_url_unreachable() -> str:
    """A bad job name must fail before the worker even tries the broker."""
    return "redis://127.0.0.1:1/0"


def test_worker_cli_help_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lab.runtime.worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--num-workers" in done.stdout
