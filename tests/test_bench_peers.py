"""`python -m lab.bench peers`: the table's arithmetic, and one tiny real run of the harness."""

from __future__ import annotations

import subprocess
import sys

from lab.bench.peers import Row, format_table
from lab.infra.procs import env_with_pythonpath


def row(runtime: str, scenario: str, conc: int, rate: float, repeat: int = 0) -> Row:
    bound = conc / 0.05 if scenario == "io" else None
    return Row(
        repeat=repeat, runtime=runtime, scenario=scenario, conc=conc, jobs=100, completed=100,
        timed_out=False, rate_steady=rate, bound=bound,
        efficiency=rate / bound if bound else None, cpu_us_per_job=100.0, worker_cores=0.5,
        mock_max_in_flight=conc, mock_cores=0.1, redis_cores=0.1, load_1m=0.5,
        slot_gap_p50_ms=0.5 if runtime == "lab" else float("nan"),
        slot_gap_p99_ms=1.5 if runtime == "lab" else float("nan"),
    )  # fmt: skip


def test_the_table_shows_medians_and_each_runtime_as_a_ratio_of_the_bare_loop() -> None:
    rows = [
        row("bare", "noop", 50, 1000, 0), row("bare", "noop", 50, 3000, 1),
        row("bare", "noop", 50, 2000, 2), row("bare", "io", 10, 190),
        row("lab", "noop", 50, 1800), row("lab", "io", 10, 171),
    ]  # fmt: skip
    table = format_table(rows, levels=(10,), noop_conc=50)
    lines = table.splitlines()
    assert "| bare | 2,000 | 0.950 | 100 | - |" in lines  # the median of three repeats
    assert "| lab | 1,800 | 0.855 | 100 | 0.50 / 1.50 |" in lines
    assert "| lab / bare | 0.900 | 0.900 |" in lines  # 1800/2000 and 0.855/0.950


def test_a_tiny_real_run_prints_the_table() -> None:
    argv = [
        sys.executable, "-m", "lab.bench", "peers", "--repeats", "1", "--runtimes", "bare,lab",
        "--io-levels", "4", "--min-jobs", "24", "--jobs-per-slot", "6", "--noop-jobs", "300",
        "--noop-conc", "4",
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env_with_pythonpath()
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| runtime | no-op jobs/s (C=4) | eff C=4 |" in out
    assert "| runtime / reference | no-op jobs/s | C=4 |" in out
    assert "| lab / bare | " in out
    lab_row = next(line for line in out.splitlines() if line.startswith("| lab | "))
    assert " / " in lab_row  # the lab worker reported its slot gap


def test_an_unknown_runtime_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lab.bench", "peers", "--runtimes", "bare,celery"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_pythonpath(),
    )
    assert done.returncode == 2 and "unknown runtime, peer or scenario: celery" in done.stderr
