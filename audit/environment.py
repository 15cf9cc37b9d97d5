"""What the audit ran on and with: libraries, hardware, operating system, threads and the
determinism switches, for the record's provenance and the report's tool-confidence section.

Everything here only reads the process and the machine; nothing is changed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions, version
from pathlib import Path
from typing import Any

import torch

#: the libraries a result depends on, always listed (``None``: not installed); a baseline
#: comparison flags a change in any of them
VERSIONED = ("torch", "torchvision", "numpy", "pytest", "foolbox", "torchattacks", "jinja2")
_DIST = "pytest-segaudit"
_GIT_TIMEOUT_S = 5


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on (``None`` when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (_DIST, *VERSIONED):
        try:
            out["segaudit" if dist == _DIST else dist] = version(dist)
        except PackageNotFoundError:
            out["segaudit" if dist == _DIST else dist] = None
    return out


def libraries_loaded() -> dict[str, str]:
    """Every installed distribution whose code this process imported, name -> version.

    Read at the end of a run, so it names what actually ran (adv-lib for an ``advlib:``
    attack, orthogonium for a Lipschitz network), not what happens to be installed.
    """
    owners = packages_distributions()
    names = {
        dist
        for module in list(sys.modules)
        if "." not in module and not module.startswith("_")
        for dist in owners.get(module, ())
    }
    out = {}
    for name in sorted(names, key=str.lower):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return gpus


def source_commit() -> dict[str, Any] | None:
    """The commit SegAudit's code came from: pip's record of a VCS install, else the git
    checkout the package sits in (with whether it had uncommitted changes); ``None`` when
    neither says."""
    try:
        direct = distribution(_DIST).read_text("direct_url.json")
    except PackageNotFoundError:
        direct = None
    if direct:
        try:
            vcs = json.loads(direct).get("vcs_info") or {}
        except json.JSONDecodeError:
            vcs = {}
        if vcs.get("commit_id"):
            return {"commit": vcs["commit_id"], "dirty": None, "from": "pip install record"}
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip()), "from": "git checkout"}


def environment() -> dict[str, Any]:
    """Hardware, operating system, threads and determinism switches of this process."""
    cudnn = torch.backends.cudnn
    return {
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpus": _gpus(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "cudnn_benchmark": bool(cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "segaudit_source": source_commit(),
    }
