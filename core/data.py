"""Shipped data and a record of which data files a process has read.

Every loader opens its files through :func:`open_data_file`, which records the file's path and
sha256. The artifact harness collects that record after each sweep point so ``provenance.json``
names every data file a result depends on, even when the point ran in another process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SERVELAB_DATA", REPO_ROOT / "data"))

_files_read: dict[str, str] = {}


def data_path(*parts: str) -> Path:
    """Path of a file shipped under ``data/``; raises FileNotFoundError naming it if absent."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped data file not found (is the checkout complete?)")
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def track_data_file(path: str | os.PathLike[str]) -> Path:
    """Record that this process read ``path`` (hashing it once) and return it resolved."""
    resolved = Path(path).resolve()
    key = str(resolved)
    if key not in _files_read:
        _files_read[key] = sha256_file(resolved)
    return resolved


def open_data_file(path: str | os.PathLike[str], mode: str = "r") -> IO:
    """Open a data file for reading and record it for provenance.

    A missing file raises FileNotFoundError with the path in its message.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    resolved = track_data_file(path)
    if "b" in mode:
        return open(resolved, mode)
    return open(resolved, mode, encoding="utf-8")


def files_read() -> dict[str, str]:
    """Path -> sha256 of every data file this process has read so far."""
    return dict(_files_read)


def reset_files_read() -> None:
    _files_read.clear()
