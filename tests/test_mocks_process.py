"""A mock in its own process, as the sweep runs it: ready file, sync client, clean stop."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import NotFoundError, OpenSearch
from opensearchpy.helpers import BulkIndexError, bulk

from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.infra.sockets import LISTEN_BACKLOG, listening_socket, served_argv
from lab.mocks import parse_spec, spec_to_json
from lab.mocks.control import control_headers
from lab.sweep.placement import mock_args


@contextlib.contextmanager
def start(tmp_path: Path, kind: str, *args: str) -> Iterator[tuple[Child, str, str]]:
    """`python -m lab.mocks KIND ...` as the sweep starts it; ready once the ready file exists."""
    ready = tmp_path / f"{kind}.ready.json"
    argv = python_module_argv(
        "lab.mocks", kind, "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), *args
    )
    with spawn(
        argv, name=f"mock-{kind}", log_path=tmp_path / f"{kind}.log", env=env_with_pythonpath()
    ) as child:
        wait_for(ready.exists, what=f"the {kind} mock's ready file", timeout_s=30, children=[child])
        info: dict[str, Any] = json.loads(ready.read_text())
        assert info["pid"] == child.pid and info["kind"] == kind
        assert info["url"].startswith("http://127.0.0.1:")
        assert ready.stat().st_mode & 0o077 == 0  # it holds the control token
        yield child, info["url"], info["token"]


@pytest.fixture
def opensearch_mock(tmp_path: Path) -> Iterator[tuple[Child, str, str]]:
    spec = parse_spec(
        {
            "kind": "opensearch",
            "capacity": 1,
            "queue": 0,
            "shards": 4,
            "latency": {"dist": "constant", "ms": 1},
        }
    )
    args = ("--spec-json", spec_to_json(spec), "--per-item-ms", "0")
    with start(tmp_path, "opensearch", *args) as running:
        yield running


def test_sync_client_indexes_bulk_indexes_and_deletes(
    opensearch_mock: tuple[Child, str, str],
) -> None:
    child, url, token = opensearch_mock
    control = control_headers(token)
    client = OpenSearch(hosts=[url], max_retries=0)
    try:
        assert client.index(index="docs", id="x", body={"n": 1})["result"] == "created"
        assert client.delete(index="docs", id="x")["result"] == "deleted"
        with pytest.raises(NotFoundError):
            client.delete(index="docs", id="x")
        # One write slot, no queue, four shards: the parts of one bulk compete for the slot,
        # so some items come back 429 and the helper raises, as against a busy cluster.
        with pytest.raises(BulkIndexError) as partial:
            bulk(client, ({"_index": "docs", "_id": str(i)} for i in range(40)))
        rejected = partial.value.errors
        assert 0 < len(rejected) < 40 and {e["index"]["status"] for e in rejected} == {429}
        assert client.count(index="docs")["count"] == 40 - len(rejected)
        stats = client.transport.perform_request("GET", "/_lab/stats", headers=control)
        assert stats["rejected_items"] == len(rejected) and stats["max"]["in_flight"] == 1
        reset = {"clear_docs": True}
        client.transport.perform_request("POST", "/_lab/reset", body=reset, headers=control)
        stats = client.transport.perform_request("GET", "/_lab/stats", headers=control)
        assert stats["requests"] == 0 and stats["opensearch"]["totals"]["docs"] == 0
    finally:
        client.close()
    assert child.alive()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_standalone_mock_stops_cleanly_on_signal(tmp_path: Path, signum: int) -> None:
    with start(tmp_path, "http_api", "--capacity", "4", "--latency", "constant:ms=0") as (
        child,
        _,
        _,
    ):
        child.signal(signum)
        assert child.popen.wait(timeout=10) == 0
    assert "listening on" in (tmp_path / "http_api.log").read_text()


def test_non_loopback_host_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        python_module_argv("lab.mocks", "database", "--host", "0.0.0.0"),
        env=env_with_pythonpath(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "loopback address only" in done.stderr


def test_a_mock_on_an_inherited_socket_queues_a_burst_of_connections(tmp_path: Path) -> None:
    """As the sweep starts it (`--listen-fd`), a mock keeps LISTEN_BACKLOG connections waiting
    while it is busy, not asyncio's 100-128: 400 slots connecting at once would overflow that,
    and each SYN the kernel drops waits TCP's 1-s retransmit, a second the service never took.
    The mock is stopped (SIGSTOP) so that nothing is accepted: what gets in is what the queue
    holds."""
    burst = 300
    spec_file, ready = tmp_path / "spec.json", tmp_path / "ready.json"
    spec_file.write_text(spec_to_json(parse_spec({"kind": "http_api", "capacity": 4})))
    with listening_socket() as sock:
        argv = served_argv("lab.mocks", mock_args("http_api", spec_file), sock, ready)
        log_path = tmp_path / "mock.log"
        with spawn(
            argv,
            name="mock",
            log_path=log_path,
            env=env_with_pythonpath(),
            pass_fds=(sock.fileno(),),
        ) as child:
            wait_for(ready.exists, what="the mock's ready file", timeout_s=30, children=[child])
            address = sock.getsockname()[:2]
            child.signal(signal.SIGSTOP)
            clients = [socket.socket() for _ in range(burst)]
            try:
                for client in clients:
                    client.setblocking(False)
                    client.connect_ex(address)
                deadline = time.monotonic() + 5.0
                pending = set(clients)
                while pending and time.monotonic() < deadline:  # SYN_SENT ones never get done
                    _, done, _ = select.select([], list(pending), [], 0.2)
                    pending -= set(done)
                connected = [
                    c for c in clients
                    if c not in pending and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                ]  # fmt: skip
            finally:
                child.signal(signal.SIGCONT)
                for client in clients:
                    client.close()
    assert len(connected) == burst < LISTEN_BACKLOG
