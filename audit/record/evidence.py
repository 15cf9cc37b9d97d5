"""Evidence files: a claim's arrays (a counterexample's input and perturbation, a pair of
inputs that refutes a Lipschitz constant) saved next to the record for the report to link."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def save_evidence(report_dir: Path, nodeid: str, arrays: Mapping[str, Any]) -> dict[str, str]:
    """Save ``arrays`` as ``<report>/evidence/<claim>/<name>.npy``; return their paths
    relative to the report folder, so the report links them and the folder moves whole."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")
    folder = report_dir / "evidence" / slug
    folder.mkdir(parents=True, exist_ok=True)
    saved = {}
    for name, array in arrays.items():
        path = folder / f"{name}.npy"
        np.save(path, np.asarray(array))
        saved[name] = str(path.relative_to(report_dir))
    return saved
