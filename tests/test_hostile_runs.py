"""Run folders received from someone else: `lab.report RUN_DIR` and `--resume` never write
through a planted link, never hang on a planted FIFO, and a folder they cannot trust is exit
status 2 with one message. Plus the file rules underneath (`lab.infra.files`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.bounds import JSON_BYTES_MAX
from lab.errors import ConfigError
from lab.infra.files import UnsafePath, atomic_write, directory, refuse_links
from lab.infra.procs import env_with_pythonpath
from lab.report.html import main as report_main
from lab.results import SCHEMA_VERSION, RunFolder
from lab.sweep.runner import main as sweep_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "results" / "examples" / "quickstart"
SECRET = "the victim's own file\n"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A copy of the committed quickstart example, free to tamper with."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "run"))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the run folder (think ~/.bashrc) that a planted link points at."""
    path = tmp_path / "victim"
    path.write_text(SECRET)
    return path


def refused(
    entry: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """Exit status 2 and one message on stderr, no traceback."""
    assert entry(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def report(run_dir: Path) -> list[str]:
    return [str(run_dir)]


def resume(run_dir: Path) -> list[str]:
    return ["--resume", str(run_dir)]


ENTRIES = {"lab.report": (report_main, report), "lab.sweep --resume": (sweep_main, resume)}

# -- planted links and special files ------------------------------------------------------------

PLANTS = {
    "report.html.tmp": "report.html.tmp",
    "report.html": "report.html",
    "manifest.json.tmp": "manifest.json.tmp",
    "trials.csv": "trials.csv",
    "a trial's log": "logs/nw1-in1-bs1-r0/worker-0.log",
    "a services file": "services/nw1-in1-bs1-r0.json",
}


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRIES.keys())
@pytest.mark.parametrize("name", PLANTS.values(), ids=PLANTS.keys())
def test_a_planted_link_is_refused_and_never_followed(
    run_dir: Path, victim: Path, entry: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    link = run_dir / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    main, argv = ENTRIES[entry]
    err = refused(main, argv(run_dir), capsys)
    assert f"{link}: is a symbolic link" in err
    assert victim.read_text() == SECRET and link.is_symlink()


def test_a_planted_directory_link_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "logs").symlink_to(elsewhere, target_is_directory=True)
    assert "is a symbolic link" in refused(sweep_main, resume(run_dir), capsys)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["manifest.json", "trials.csv", "scenario.yaml"])
def test_a_planted_fifo_never_hangs_a_reader(
    run_dir: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / name).unlink()
    os.mkfifo(run_dir / name)
    err = refused(report_main, report(run_dir), capsys)
    assert f"{run_dir / name}: not a regular file" in err


def test_the_folder_itself_may_be_a_link_the_user_chose(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = tmp_path / "latest"
    latest.symlink_to(run_dir, target_is_directory=True)
    assert RunFolder.open(latest).manifest["status"] == "complete"


# -- a manifest that is not what the lab wrote --------------------------------------------------

MANIFESTS: dict[str, tuple[bytes | None, str]] = {
    "not JSON": (b"{nope", "manifest.json: not valid JSON"),
    "a list": (b"[1, 2]", "manifest.json: must be a JSON object, got [1, 2]"),
    "not UTF-8": (b'{"a": "\xff"}', "manifest.json: not UTF-8 text"),
    "nested without end": (b"[" * 100_000 + b"]" * 100_000, "manifest.json: not valid JSON"),
    "a 5,000-digit number": (b'{"seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
    "schema_version true": (
        b'{"schema_version": true, "status": "complete"}',
        "schema_version: must be an integer >= 1, got true",
    ),
    'quick "yes"': (
        b'{"schema_version": 2, "status": "complete", "quick": "yes"}',
        "quick: must be true or false, got 'yes'",
    ),
    "an unknown status": (
        b'{"schema_version": 2, "status": "done"}',
        "status: must be one of 'running', 'complete', 'interrupted', 'failed', got 'done'",
    ),
    "no status": (b'{"schema_version": 2}', "status: required"),
    "a later layout": (
        b'{"schema_version": 99, "status": "complete"}',
        f"results layout version 99, this lab reads up to {SCHEMA_VERSION}",
    ),
    "NaN": (b'{"schema_version": 2, "status": "complete", "updated_at": NaN}', "updated_at"),
    "a directory": (None, "manifest.json: not a regular file"),
}


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRIES.keys())
@pytest.mark.parametrize(("content", "fragment"), MANIFESTS.values(), ids=MANIFESTS.keys())
def test_a_bad_manifest_is_one_message_and_exit_2(
    run_dir: Path,
    entry: str,
    content: bytes | None,
    fragment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = run_dir / "manifest.json"
    manifest.unlink()
    if content is None:
        manifest.mkdir()
    else:
        manifest.write_bytes(content)
    main, argv = ENTRIES[entry]
    err = refused(main, argv(run_dir), capsys)
    assert fragment in err
    assert not (run_dir / "report.html").exists()


# -- tables that are not what the lab wrote -----------------------------------------------------


def _edit_trials(run_dir: Path, column: str, value: str) -> None:
    lines = (run_dir / "trials.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index(column)] = value
    lines[1] = ",".join(cells)
    (run_dir / "trials.csv").write_text("\n".join(lines) + "\n")


TABLES: dict[str, tuple[Callable[[Path], object], str]] = {
    "a word for num_workers": (
        lambda d: _edit_trials(d, "num_workers", "many"),
        "trials.csv: row 2, column num_workers: must be an integer in [1, 4,096] or auto, got 'many'",
    ),
    "an infinite throughput": (
        lambda d: _edit_trials(d, "items_per_s", "inf"),
        "column items_per_s: must be a number of magnitude at most 1e+15, or empty",
    ),
    "a fractional instance count": (
        lambda d: _edit_trials(d, "instances", "1.5"),
        "column instances: must be an integer in [1, 256]",
    ),
    "a number too long for int64": (
        lambda d: _edit_trials(d, "num_workers", "9" * 30),
        "column num_workers: must be an integer in [1, 4,096]",
    ),
    "an unknown placement": (
        lambda d: _edit_trials(d, "placement", "moon"),
        "column placement: must be one of separate, colocated, got 'moon'",
    ),
    "a trial id that climbs out": (
        lambda d: _edit_trials(d, "trial_id", "../../../etc/passwd"),
        "column trial_id: must be a trial id",
    ),
    "services that are not a mapping": (
        lambda d: next((d / "services").iterdir()).write_text("[1, 2]"),
        ".json: must be a JSON object, got [1, 2]",
    ),
    "a verification that is not a mapping": (
        lambda d: (d / "verification.json").write_text("[1, 2]"),
        "verification.json: must be a JSON object, got [1, 2]",
    ),
    "a verification too large to read": (
        lambda d: (d / "verification.json").write_bytes(b" " * (JSON_BYTES_MAX + 1)),
        "verification.json: larger than 16,777,216 bytes; refusing to read it",
    ),
    "service statistics of the wrong type": (
        lambda d: next((d / "services").iterdir()).write_text(
            '{"search": {"served": "many", "samples": {"service_ms": [1, 2]}}}'
        ),
        "served: must be an integer in [0, 1,000,000,000,000,000], got 'many'",
    ),
    "a flag that is not a flag": (
        lambda d: _edit_trials(d, "timed_out", "maybe"),
        "column timed_out: must be True or False, got 'maybe'",
    ),
    "binary garbage": (
        lambda d: (d / "trials.csv").write_bytes(b"\x00\xff" * 100),
        "trials.csv: not UTF-8 text",
    ),
    "no trial_id": (
        lambda d: (d / "trials.csv").write_text("a,b\n1,2\n"),
        "not a trials table (no trial_id column)",
    ),
    "a parquet that is not one": (
        lambda d: next((d / "jobs.parquet").iterdir()).write_bytes(b"PAR1 not really"),
        "not a jobs table",
    ),
    "a scenario bomb": (
        lambda d: (d / "scenario.yaml").write_text(
            'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
            + "".join(
                f"b{i}: &b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n"
                for i in range(8)
            )
        ),
        "more than 20,000 values",
    ),
}


@pytest.mark.parametrize(("tamper", "fragment"), TABLES.values(), ids=TABLES.keys())
def test_tables_are_type_checked_on_read(
    run_dir: Path,
    tamper: Callable[[Path], object],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tamper(run_dir)
    assert fragment in refused(report_main, report(run_dir), capsys)


def test_the_command_line_of_a_tampered_folder_exits_2_without_a_traceback(
    run_dir: Path, victim: Path
) -> None:
    (run_dir / "report.html.tmp").symlink_to(victim)
    done = subprocess.run(  # as a user runs it (the in-process tests above cover --resume too)
        [sys.executable, "-m", "lab.report", str(run_dir)],
        capture_output=True, text=True, env=env_with_pythonpath(), timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is a symbolic link" in done.stderr
    assert victim.read_text() == SECRET


# -- the file rules underneath --------------------------------------------------------------------


def test_an_atomic_write_replaces_a_link_instead_of_following_it(
    tmp_path: Path, victim: Path
) -> None:
    target = tmp_path / "report.html"
    target.symlink_to(victim)
    atomic_write(target, "report")
    assert not target.is_symlink() and target.read_text() == "report"
    assert victim.read_text() == SECRET
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_temporary_names_are_fresh_so_a_planted_one_is_never_written(
    tmp_path: Path, victim: Path
) -> None:
    for guess in ("report.html.tmp", ".report.html.tmp", f".report.html.{os.getpid()}.tmp"):
        (tmp_path / guess).symlink_to(victim)
    atomic_write(tmp_path / "report.html", "report")
    assert victim.read_text() == SECRET


def test_appends_and_reads_refuse_links_hard_links_and_fifos(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "soft.csv").symlink_to(victim)
    os.link(victim, tmp_path / "hard.csv")
    os.mkfifo(tmp_path / "fifo.csv")
    with directory(tmp_path) as d:
        for name in ("soft.csv", "hard.csv", "fifo.csv"):
            with pytest.raises(UnsafePath):
                d.append(name, b"row\n")
        with pytest.raises(UnsafePath, match="symbolic link"):
            d.read("soft.csv", limit=100)
        with pytest.raises(UnsafePath, match="not a regular file"):
            d.read("fifo.csv", limit=100)  # returns at once: opened non-blocking
        with pytest.raises(UnsafePath, match="larger than 3 bytes"):
            d.read("hard.csv", limit=3)
    assert victim.read_text() == SECRET


def test_a_link_below_the_root_is_never_entered(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "run"
    root.mkdir()
    (root / "services").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath, match="symbolic link"), directory(root, "services", create=True):
        pass
    with pytest.raises(ConfigError, match="symbolic link"):
        refuse_links(root)
    assert list(elsewhere.iterdir()) == []


def test_a_trial_gets_a_fresh_log_folder_on_resume(run_dir: Path, victim: Path) -> None:
    """Whatever an interrupted attempt (or someone else) left in a trial's logs is moved
    aside; the children write into a folder this process just made."""
    old = run_dir / "logs" / "nw1-in1-bs1-r0"
    old.mkdir(parents=True)
    (old / "worker-0.log").write_text("old")
    logs = RunFolder.open(run_dir).trial_logs("nw1-in1-bs1-r0")
    assert logs == old and list(logs.iterdir()) == []
    assert (run_dir / "logs" / "nw1-in1-bs1-r0.1" / "worker-0.log").read_text() == "old"


def test_resume_reads_quick_as_a_real_boolean(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert RunFolder.open(run_dir).manifest["quick"] is manifest["quick"] is False


def test_general_rule_any_cell_is_read_and_analysed_or_refused(run_dir: Path) -> None:
    """A sample of columns x hostile cells: the analysis runs, or a ConfigError names the cell;
    nothing else escapes (the rule is per type of column, so it holds for the others too)."""
    from lab.analysis.configs import analyze, load_run

    outcomes = {"ok": 0, "refused": 0}
    original = (run_dir / "trials.csv").read_text()
    for column in ("num_workers", "items_per_s", "timed_out"):
        for value in ("", "abc", "-1", "9" * 30):
            (run_dir / "trials.csv").write_text(original)
            _edit_trials(run_dir, column, value)
            try:
                analyze(load_run(run_dir)).recommendation.to_json()
            except ConfigError as exc:
                assert f"column {column}" in str(exc)
                outcomes["refused"] += 1
            else:
                outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0


def test_a_name_is_one_path_component(tmp_path: Path) -> None:
    with directory(tmp_path) as d:
        for name in ("../x", "a/b", "..", "", "."):
            with pytest.raises(UnsafePath, match="is not a file name"):
                d.write(name, b"x")
    with pytest.raises(UnsafePath, match="is not a file name"), directory(tmp_path, ".."):
        pass


def test_a_child_log_is_never_written_through_a_link(tmp_path: Path, victim: Path) -> None:
    from lab.infra.procs import python_module_argv, spawn

    (tmp_path / "worker-0.log").symlink_to(victim)
    argv = python_module_argv("lab.runtime.worker", "--help")
    with (
        pytest.raises(UnsafePath, match="symbolic link"),
        spawn(argv, name="worker-0", log_path=tmp_path / "worker-0.log"),
    ):
        pass
    assert victim.read_text() == SECRET
