"""The notebooks run top to bottom, in a real kernel, against committed example runs.

Parameters are injected papermill-style: a cell tagged `injected-parameters` right after the
cell tagged `parameters` overrides its values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, **parameters: Any) -> nbformat.NotebookNode:
    """Run a notebook in a python3 kernel (this interpreter's ipykernel), from its own folder."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    [at] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if parameters:
        source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
        nb.cells.insert(at + 1, new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the notebook printed or displayed, and how many PNG images it showed."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


@pytest.mark.timeout(300)
def test_01_quickstart_runs_the_sweep_and_shows_the_answer(tmp_path: Path) -> None:
    nb = execute("01_quickstart.ipynb", out_dir=str(tmp_path))
    text, images = outputs(nb)
    assert "recommended: num_workers=" in text and "why:" in text
    assert "items/s): held by " in text  # what held each configuration, in words
    assert images == 5
    [report] = tmp_path.glob("quickstart/*/report.html")
    assert str(report) in text


@pytest.mark.timeout(180)
def test_02_explore_a_run_shows_every_figure_of_any_run_folder() -> None:
    run_dir = str(NOTEBOOKS.parent / "results" / "examples" / "opensearch_delete")
    nb = execute("02_explore_a_run.ipynb", run_dir=run_dir)
    text, images = outputs(nb)
    assert "opensearch_delete:" in text and "why:" in text
    assert "nw16-in1-bs1 (831 items/s): held by the service's capacity" in text
    assert images == 5


@pytest.mark.timeout(180)
def test_03_loco_case_measures_the_speedups() -> None:
    text, images = outputs(execute("03_loco_opensearch_case.ipynb"))
    assert "× nw1-in1-bs1" in text  # a measured speed-up over the default
    assert "nw1-in1-bs1: held by concurrency: 1 slot at" in text
    assert images == 5  # two comparisons, throughput x 2, the heatmap


@pytest.mark.timeout(180)
def test_06_dynamic_policies_compares_each_with_the_best_fixed_setting() -> None:
    text, images = outputs(execute("06_dynamic_policies.ipynb"))
    assert "dynamic num_workers=auto, instances=1" in text  # a verdict, in words
    assert "best fixed" in text and "instance-seconds" in text
    assert images == 1  # the policies over time


@pytest.mark.timeout(180)
def test_04_search_and_model_shows_the_path_and_the_model() -> None:
    text, images = outputs(execute("04_search_and_model.ipynb"))
    assert "recommended: num_workers=" in text and "refine" in text
    assert "median absolute error" in text and "service_capacity" in text
    assert images == 2  # the search path, the model's curves with the measured points


@pytest.mark.timeout(420)
def test_05_calibrates_a_stand_in_sweeps_its_twin_and_verifies(tmp_path: Path) -> None:
    """Against a local stand-in (the lab's mock, with settings the calibrator is not told)."""
    nb = execute("05_calibrate_a_service.ipynb", out_dir=str(tmp_path), budget_s=10)
    text, images = outputs(nb)
    assert "capacity: throughput stopped growing" in text and "calibrated_from:" in text
    assert "recommended: num_workers=" in text and "predicted" in text
    assert images == 2
    [verification] = tmp_path.glob("calibrated-twin/*/verification.json")
    configs = json.loads(verification.read_text())["configs"]  # the pick, rerun on the real one
    assert configs and all(c["real"]["items_per_s"] > 0 for c in configs)
