"""A mock's control routes need the run's token; specs of any size reach a mock through a file;
a delete workload's ids and a large bulk fit the mock's body limits."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from lab import limits
from lab.infra.procs import Child, env_with_pythonpath, python_module_argv, spawn, wait_for
from lab.mocks import parse_spec, run_mock, spec_to_json
from lab.mocks.control import TOKEN_ENV, MockControl, control_headers

TOKEN = "run-token"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["opensearch", "http_api", "database"])
async def test_control_routes_need_the_token_service_routes_do_not(kind: str) -> None:
    spec = parse_spec({"kind": kind, "latency": {"dist": "constant", "ms": 0}})
    names = ["stats", "reset", "health"] + (["seed", "docs"] if kind == "opensearch" else [])
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as s:
        for name in names:
            for headers in ({}, control_headers("wrong"), {"X-Lab-Token": ""}):
                async with s.post(f"{url}/_lab/{name}", json={}, headers=headers) as r:
                    assert r.status == 401, (name, headers)
        async with s.post(f"{url}/_lab/reset", headers=control_headers(TOKEN)) as r:
            assert r.status == 200
        async with s.get(f"{url}/_lab/stats", headers=control_headers(TOKEN)) as r:
            assert r.status == 200 and (await r.json())["kind"] == kind
        path = {"opensearch": "/", "http_api": "/call", "database": "/query"}[kind]
        async with s.post(f"{url}{path}", json={"sql": "select 1"}) as r:
            assert r.status < 500  # the service itself answers without the token


@pytest.mark.asyncio
async def test_without_a_token_given_nobody_can_reset_an_in_process_mock() -> None:
    spec = parse_spec({"kind": "http_api"})
    async with (
        run_mock(spec) as url,
        aiohttp.ClientSession() as s,
        s.post(f"{url}/_lab/reset", headers=control_headers("")) as r,
    ):
        assert r.status == 401


@contextlib.contextmanager
def mock_process(tmp_path: Path, *args: str, token: str | None = TOKEN) -> Iterator[Child]:
    ready = tmp_path / "mock.ready.json"
    ready.unlink(missing_ok=True)
    env = env_with_pythonpath() | ({TOKEN_ENV: token} if token else {})
    argv = python_module_argv("lab.mocks", *args, "--ready-file", str(ready))
    with spawn(argv, name="mock", log_path=tmp_path / "mock.log", env=env) as child:
        wait_for(ready.exists, what="the mock", timeout_s=30, children=[child])
        yield child


def _ready(tmp_path: Path) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "mock.ready.json").read_text()))


def test_a_mock_process_takes_its_token_from_the_environment_not_argv(tmp_path: Path) -> None:
    with mock_process(tmp_path, "http_api") as child:
        info = _ready(tmp_path)
        assert info["token"] == TOKEN
        assert TOKEN not in " ".join(psutil.Process(child.pid).cmdline())
        assert MockControl(info["url"], TOKEN).stats()["kind"] == "http_api"
    with mock_process(tmp_path, "http_api", token=None):  # none given: its own, in the file
        info = _ready(tmp_path)
        assert len(info["token"]) > 20 and MockControl(info["url"], info["token"]).reset()


def test_a_spec_larger_than_any_command_line_argument_goes_through_a_file(tmp_path: Path) -> None:
    windows = [{"start_s": i, "duration_s": 0.5} for i in range(limits.BROWNOUTS_MAX)]
    spec = parse_spec({"kind": "http_api", "brownouts": windows})
    text = spec_to_json(spec)
    padded = text[:-1] + " " * 200_000 + "}"  # over Linux's 128 KiB limit on one argv string
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(padded)
    with mock_process(tmp_path, "http_api", "--spec-file", str(spec_file)):
        stats = MockControl(_ready(tmp_path)["url"], TOKEN).stats()
    assert len(stats["spec"]["brownouts"]) == limits.BROWNOUTS_MAX


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{nope", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"capacity": true}', "capacity: must be an integer in [1, 1,000,000]"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_bad_spec_file_is_exit_2_and_one_message(
    tmp_path: Path, content: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lab.mocks.__main__ import main

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(content)
    assert main(["http_api", "--spec-file", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.asyncio
async def test_a_delete_workload_of_any_size_is_seeded_in_chunks_and_a_large_bulk_fits() -> None:
    spec = parse_spec(
        {"kind": "opensearch", "capacity": 4, "latency": {"dist": "constant", "ms": 0}}
    )
    ids = [str(i) for i in range(150_000)]  # ~1.3 MB of JSON: over a 1 MiB body in one request
    async with run_mock(spec, token=TOKEN) as url, aiohttp.ClientSession() as s:
        control = MockControl(url, TOKEN)
        assert await asyncio.to_thread(control.seed, "lab", ids) == len(ids)
        async with s.get(f"{url}/lab/_count") as r:
            assert (await r.json())["count"] == len(ids)
        lines = [
            line
            for i in range(20_000)
            for line in (json.dumps({"index": {"_index": "b", "_id": str(i)}}), '{"title": "x"}')
        ]
        body = ("\n".join(lines) + "\n").encode()
        assert len(body) > limits.BODY_BYTES_MAX
        headers = {"Content-Type": "application/x-ndjson"}
        async with s.post(f"{url}/_bulk", data=io.BytesIO(body), headers=headers) as r:
            assert r.status == 200 and not (await r.json())["errors"]
        async with s.put(f"{url}/b/_doc/big", data=io.BytesIO(body), headers=headers) as r:
            assert r.status == 413  # other routes keep the 1 MiB limit
    assert os.environ.get(TOKEN_ENV) is None
