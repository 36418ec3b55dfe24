"""Servelab sessions. ``nox -l`` lists them; ``nox -s NAME -- ARGS`` runs one.

Every session runs in one shared virtual environment, ``.nox/servelab``, so torch is installed
once, not per session. It is (re)installed only when ``pyproject.toml`` changes.

Torch is installed before the project so that no dependency pulls an unpinned (CUDA, multi-GB)
build: ``torch==2.13.0`` from a wheel already on the machine if pip can find one offline, else
the CPU-only build from PyTorch's CPU index when the machine has no NVIDIA GPU, else the
default (CUDA) build. ``SERVELAB_TORCH="<pip arguments>"`` overrides all of this, e.g.
``SERVELAB_TORCH="torch==2.13.0 --index-url <PyTorch CUDA 12.x index>"``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".nox" / "servelab"
BIN = VENV / ("Scripts" if sys.platform == "win32" else "bin")
PY = BIN / "python"
STAMP = VENV / ".servelab-installed"
TORCH_PIN = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_OVERRIDE = os.environ.get("SERVELAB_TORCH", "")

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _install_key() -> str:
    return hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + TORCH_OVERRIDE.encode()
    ).hexdigest()


def _env(session: nox.Session) -> None:
    """Create or update the shared environment; cheap when nothing changed."""
    if not PY.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if STAMP.exists() and STAMP.read_text() == _install_key():
        return
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if TORCH_OVERRIDE:
        session.run(*pip, *shlex.split(TORCH_OVERRIDE), external=True)
    elif subprocess.run([str(PY), "-c", "import torch"], capture_output=True).returncode != 0:
        _install_torch(session, pip)
    session.run(*pip, "-e", ".[engine,test,ray,triton]", external=True)
    STAMP.write_text(_install_key())


def _install_torch(session: nox.Session, pip: list[str]) -> None:
    # a wheel already on this machine (pip's find-links) holds torch only, not its dependencies
    offline = subprocess.run([*pip, "--no-index", "--no-deps", TORCH_PIN], capture_output=True)
    if offline.returncode == 0:
        session.log(f"installed {TORCH_PIN} from a wheel on this machine")
        session.run(*pip, TORCH_PIN, external=True)  # its dependencies, from the index
    elif shutil.which("nvidia-smi") is None:
        session.log(f"no NVIDIA GPU found: installing the CPU build of {TORCH_PIN}")
        session.run(*pip, TORCH_PIN, "--index-url", TORCH_CPU_INDEX, external=True)
    else:
        session.run(*pip, TORCH_PIN, external=True)


def _py(session: nox.Session, *args: str, **kwargs) -> None:
    env = {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", **kwargs.pop("env", {})}
    session.run(str(PY), *args, external=True, env=env, **kwargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole pytest suite; pass pytest options after --. CI runs `nox -s lint tests`."""
    _env(session)
    _py(session, "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check and mypy (the packages pyproject.toml lists); what CI
    and the pre-commit hooks run."""
    _env(session)
    _py(session, "-m", "ruff", "check", ".")
    _py(session, "-m", "ruff", "format", "--check", ".")
    _py(session, "-m", "mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run a benchmark (nox -s bench -- engine); results in results/bench/."""
    _env(session)
    _py(session, "-m", "scripts.bench", *(session.posargs or ["--help"]))


@nox.session
def calibrate(session: nox.Session) -> None:
    """Calibrate the simulator's profiled cost model on this device (data/profiles/)."""
    _env(session)
    _py(session, "-m", "scripts.calibrate", *session.posargs)


@nox.session
def zoo(session: nox.Session) -> None:
    """Retrain the model zoo from scratch with its recipes (results/zoo/, resumable; the large
    model alone took 40 minutes on 2 cores) and print the metrics beside the shipped model
    cards' (data/models/). ``nox -s zoo -- zoo-small`` rebuilds one model."""
    _env(session)
    _py(session, "-m", "core.zoo", "build", "--out", "results/zoo", *session.posargs)
    _py(session, "-m", "core.zoo", "compare", "results/zoo", "data/models")


def _artifact_names() -> list[str]:
    base = ROOT / "artifacts"
    return sorted(
        p.name
        for p in base.iterdir()
        if p.is_dir() and (p / "__main__.py").exists() and not p.name.startswith("_")
    )


def _title(name: str) -> str:
    readme = ROOT / "artifacts" / name / "README.md"
    if readme.exists():
        for line in readme.read_text().splitlines():
            if line.startswith("# "):
                return re.sub(r"\s+", " ", line[2:]).strip()
    return name


def _make_artifact_session(name: str) -> None:
    def run(session: nox.Session) -> None:
        _env(session)
        _py(session, "-m", f"artifacts.{name}", *session.posargs)

    run.__doc__ = f"Reproduce {_title(name)}; options after -- (--scale, --trace, --out, --jobs)."
    nox.session(name=f"artifact-{name}")(run)


for _name in _artifact_names():
    _make_artifact_session(_name)


def _requested_sessions(argv: list[str]) -> list[str]:
    """Session names given to nox with -s/--session/--sessions/-e (nox reads them itself; this
    only looks, to help with a mistyped artifact)."""
    names: list[str] = []
    taking = False
    for arg in argv:
        if arg == "--":
            break
        if arg in ("-s", "-e", "--session", "--sessions"):
            taking = True
            continue
        for flag in ("--sessions=", "--session=", "-s=", "-e="):
            if arg.startswith(flag):
                names += [x for x in arg[len(flag) :].split(",") if x]
                break
        else:
            if taking and not arg.startswith("-"):
                names += [x for x in arg.split(",") if x]
                continue
        taking = False
    return names


def _explain_unknown_artifacts(argv: list[str]) -> None:
    known = _artifact_names()
    for name in _requested_sessions(argv):
        if name.startswith("artifact-") and name[len("artifact-") :] not in known:
            sys.stderr.write(
                f"nox: no artifact {name[len('artifact-') :]!r}; the artifacts are: "
                + ", ".join(f"artifact-{n}" for n in known)
                + "\n"
            )


_explain_unknown_artifacts(sys.argv[1:])


@nox.session
def dev(session: nox.Session) -> None:
    """Build the shared environment where `import core` works; `-- CMD ...` runs CMD in it."""
    _env(session)
    if session.posargs:
        cmd, *args = session.posargs
        if (BIN / cmd).exists():  # nox resolves a bare name on its own PATH, not the env's
            cmd = str(BIN / cmd)
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        session.run(cmd, *args, external=True, env={"PATH": path, "PYTHONHASHSEED": "0"})
        return
    session.log(
        f"ready: run `source {VENV.relative_to(ROOT)}/bin/activate`; its python imports "
        "core (the project is installed there in editable mode)"
    )


@nox.session
def artifacts(session: nox.Session) -> None:
    """Run every artifact at its default scale (options after -- go to each artifact)."""
    _env(session)
    for name in _artifact_names():
        session.log(f"artifact {name}")
        _py(session, "-m", f"artifacts.{name}", *session.posargs)


@nox.session
def checklist(session: nox.Session) -> None:
    """Gather every artifact's latest claims into results/CHECKLIST.md."""
    _env(session)
    _py(session, "-m", "core.artifact.checklist", *session.posargs)


@nox.session
def site(session: nox.Session) -> None:
    """Build the static results site in results/site/ from what artifact runs and benchmarks
    wrote; open results/site/index.html or serve it with `python -m http.server -d results/site`.
    Options after -- go to `python -m core.site` (--results, --out, ...)."""
    _env(session)
    _py(session, "-m", "core.site", *session.posargs)
