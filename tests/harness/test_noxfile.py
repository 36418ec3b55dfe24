"""The nox front door: a mistyped artifact session names the ones that exist."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _nox() -> list[str] | None:
    # nox lives beside the interpreter that runs it (CI's python3), not in the project's venv
    for python in ("python3", "python"):
        exe = shutil.which(python)
        if (
            exe
            and subprocess.run([exe, "-m", "nox", "--version"], capture_output=True).returncode == 0
        ):
            return [exe, "-m", "nox"]
    return None


def test_unknown_artifact_session_lists_the_artifacts():
    nox = _nox()
    if nox is None:
        pytest.skip("nox is not installed for any python on PATH")
    out = subprocess.run(
        [*nox, "-f", str(ROOT / "noxfile.py"), "-s", "artifact-doesnotexist"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode != 0
    artifacts = sorted(p.parent.name for p in (ROOT / "artifacts").glob("*/__main__.py"))
    line = next(x for x in out.stderr.splitlines() if "no artifact 'doesnotexist'" in x)
    assert all(f"artifact-{name}" in line for name in artifacts), line
