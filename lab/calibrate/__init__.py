"""Calibration: probe a live service within its owner's caps, fit a mock to it, check the fit.

    python -m lab.calibrate http://search:9200 --protocol opensearch --max-in-flight 16 \
        --max-requests-per-s 200 --budget-s 60 --out results/calibrate

writes `service.yaml` (a `services:` block with the fitted twin, ready for a scenario), the raw
measurements and a report. The modules, in the order the data flows: `target` (the URL, the
caps, the requests), `probe` (the capped client), `phases` (which load levels, when to stop),
`latency` and `fit` (the parameters and their evidence), `plots` and `output` (the folder),
`run` (all of it, and the twin check). Importing this package starts nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Calibration", "calibrate"]

if TYPE_CHECKING:
    from lab.calibrate.run import Calibration, calibrate


def __getattr__(name: str) -> Any:
    """Load `lab.calibrate.run` (scipy, matplotlib) on first use, so the CLI checks its
    arguments before paying for them."""
    if name in __all__:
        return getattr(importlib.import_module("lab.calibrate.run"), name)
    raise AttributeError(f"module 'lab.calibrate' has no attribute {name!r}")
