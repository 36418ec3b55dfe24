"""Where a result came from: code version, configuration, seeds, packages, host, data files."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

from core.data import REPO_ROOT

PACKAGES = (
    "servelab",
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "numpy",
    "pandas",
    "matplotlib",
    "seaborn",
    "tqdm",
    "ray",
    "triton",
)


def git_state(root: os.PathLike[str] | str = REPO_ROOT) -> dict[str, Any]:
    """Commit, branch and dirty flag of the checkout at ``root`` (None fields outside git).

    Dirty means tracked files differ from the commit or untracked, unignored files exist; run
    outputs under ``results/`` are ignored by git and never make a checkout dirty.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") if commit else None,
        "dirty": bool(status) if status is not None else None,
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
