"""`kind: external` in a sweep, with the lab's own mock playing the real service: it counts
exactly what reached it, which is what the caps and the no-lab-route rule are about."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lab.errors import ConfigError
from lab.mocks.control import MockControl
from lab.mocks.process import mock_process
from lab.mocks.spec import parse_spec
from lab.sweep.external import clip, rate_share
from lab.sweep.runner import run_sweep
from tests.test_calibrate import max_requests_in_a_second


@pytest.fixture
def real(tmp_path: Path) -> Iterator[MockControl]:
    """A 20 ms, 64-wide service: with no caps, 3 instances x 16 slots would put 48 in flight."""
    spec = parse_spec(
        {"kind": "http_api", "capacity": 64, "latency": {"dist": "constant", "ms": 20}}
    )
    with mock_process(spec, workdir=tmp_path / "real") as mock:
        yield mock


def scenario(
    tmp_path: Path, service: dict[str, Any], workload: dict[str, Any], **sweep: Any
) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "ext",
                "services": {"svc": service},
                "workload": {"service": "svc", **workload},
                "sweep": {"trial_timeout_s": 60, **sweep},
            }
        )
    )
    return path


@pytest.mark.timeout(180)
def test_the_caps_hold_over_all_instances_and_no_lab_route_is_sent(
    tmp_path: Path, real: MockControl
) -> None:
    external = {"kind": "external", "url": real.url, "protocol": "http_api", "max_in_flight": 6,
                "max_requests_per_s": 150}  # fmt: skip
    path = scenario(
        tmp_path,
        external,
        {"job": "http.call", "items": 150},
        num_workers=[2, 16],
        instances=[1, 3],
    )
    run = run_sweep(path, out_dir=tmp_path / "results", stream=io.StringIO())
    assert run is not None
    trials = run.trials().set_index("trial_id")
    assert trials.loc["nw16-in1-bs1-r0", "num_workers"] == 6
    assert trials.loc["nw16-in1-bs1-r0", "clipped"] == "num_workers 16 -> 6 (max_in_flight 6)"
    assert (trials.loc["nw16-in3-bs1-r0", ["num_workers", "instances"]] == [2, 3]).all()
    assert pd.isna(trials.loc["nw2-in1-bs1-r0", "clipped"])
    assert (trials["items_done"] == 150).all()
    stats = real.stats()
    assert stats["max"]["in_flight"] <= 6 and stats["max"]["connections"] <= 6
    assert max_requests_in_a_second(stats) <= 150 + 3
    # nothing reset its counters: every attempt of every trial is still counted, and nothing else
    assert stats["requests"] == trials["attempts"].sum()
    unknown = ["service_requests", "service_rejected", "service_max_in_flight", "lost_items",
               "duplicate_items"]  # fmt: skip
    assert trials[unknown].isna().all().all()
    report = (run.path / "report.html").read_text()
    assert f"a real http_api service at {real.url}" in report


@pytest.mark.timeout(120)
def test_opensearch_counts_by_ids_and_puts_deletes_in_place_with_bulk(tmp_path: Path) -> None:
    spec = parse_spec(
        {"kind": "opensearch", "capacity": 8, "latency": {"dist": "constant", "ms": 2}}
    )
    with mock_process(spec, workdir=tmp_path / "real") as mock:
        external = {"kind": "external", "url": mock.url, "protocol": "opensearch", "max_in_flight": 8,
                    "max_requests_per_s": 500}  # fmt: skip
        path = scenario(
            tmp_path, external, {"job": "opensearch.delete", "items": 60}, num_workers=[4]
        )
        run = run_sweep(path, out_dir=tmp_path / "results", stream=io.StringIO())
        stats = mock.stats()
    assert run is not None
    [row] = run.trials().to_dict("records")
    assert row["lost_items"] == 0 and row["not_found"] == 0 and pd.isna(row["duplicate_items"])
    assert stats["items"] == 120  # 60 put in place with one _bulk, then 60 deletes
    assert stats["opensearch"]["indices"] == {}  # the trial's own index was removed at the end
    services = json.loads((run.path / "services" / f"{row['trial_id']}.json").read_text())
    assert services["svc"]["documents"] == 0 and services["svc"]["index_deleted"]


def test_clip_keeps_slots_and_instances_within_the_caps(tmp_path: Path) -> None:
    from lab.scenario.spec import load_scenario

    external = {"kind": "external", "url": "http://127.0.0.1:9", "protocol": "http_api",
                "max_in_flight": 8, "max_requests_per_s": 2.5}  # fmt: skip
    s = load_scenario(scenario(tmp_path, external, {"job": "http.call", "items": 1}))
    assert clip(s, 4, 2) == (4, 2, "")
    assert clip(s, 16, 1) == (8, 1, "num_workers 16 -> 8 (max_in_flight 8)")
    # 2.5 requests/s: at most 2 instances of a whole request/s each; the rate cap made it
    assert clip(s, 4, 5) == (4, 2, "instances 5 -> 2 (max_requests_per_s 2.5)")
    assert clip(s, 16, 5) == (
        4, 2, "instances 5 -> 2 (max_requests_per_s 2.5), num_workers 16 -> 4 (max_in_flight 8)"
    )  # fmt: skip
    assert rate_share(2.5, 2) == 1 and rate_share(300, 7) == 42 and rate_share(0.5, 1) == 0.5


def test_verify_needs_a_fitted_mock(tmp_path: Path) -> None:
    mock = {"kind": "http_api", "capacity": 4}
    path = scenario(tmp_path, mock, {"job": "http.call", "items": 1})
    with pytest.raises(ConfigError, match="no calibrated_from"):
        run_sweep(path, out_dir=tmp_path / "results", verify=True, stream=io.StringIO())
    assert not (tmp_path / "results").exists()  # bad input: nothing written
