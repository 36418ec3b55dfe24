"""Cached virtual environments for the peer systems, one per system and version.

``<peers dir>/<name>-<version>/venv`` is created once by :func:`ensure_env` and reused by every
later run; ``READY`` beside it holds the key of the recipe that built it (system, version,
recipe revision, interpreter). A venv without a matching ``READY`` (first run, a crashed
install, a changed recipe) gets the recipe run again: each step is a ``pip`` call, so steps
already done cost seconds. The peers dir is ``$SERVELAB_PEERS_DIR`` or
``~/.cache/servelab/peers``. Nothing is installed into the project's own environment.

Torch in a peer venv is the project's pin, installed the way ``noxfile.py`` installs it (the
wheel on this machine if pip finds one offline, else the CPU index when there is no NVIDIA GPU),
and then frozen with a constraints file so no later step swaps it for a CUDA build.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NOXFILE = ROOT / "noxfile.py"
LOG_TAIL_LINES = 25


class PeerUnavailable(RuntimeError):
    """A peer system cannot be installed or run here; the message says why."""


def peers_dir() -> Path:
    """Where the peer venvs live: ``$SERVELAB_PEERS_DIR`` or ``~/.cache/servelab/peers``."""
    env = os.environ.get("SERVELAB_PEERS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "servelab" / "peers"


def noxfile_constant(name: str, noxfile: Path = NOXFILE) -> str:
    """A module-level string constant of ``noxfile.py`` (``TORCH_PIN``, ``TORCH_CPU_INDEX``),
    read without importing nox, so the peer venvs follow the project's own torch pin."""
    tree = ast.parse(noxfile.read_text(), filename=str(noxfile))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise KeyError(f"{noxfile}: no string constant {name}")


@dataclass
class Installer:
    """Runs the install steps of one venv and logs them to ``log``.

    ``pip(*args, env=...)`` runs ``<venv python> -m pip install <args>`` (``-c`` the torch
    constraints once torch is in); a failing step raises :class:`PeerUnavailable` with the
    command and the last lines of its output.
    """

    python: Path
    log: Path
    constraints: Path | None = None
    runner: Callable[..., subprocess.CompletedProcess[str]] = field(default=subprocess.run)

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        started = time.perf_counter()
        proc = self.runner(
            list(argv),
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})},
            capture_output=True,
            text=True,
        )
        out = (proc.stdout or "") + (proc.stderr or "")
        with self.log.open("a") as f:
            f.write(
                f"$ {' '.join(argv)}  ({time.perf_counter() - started:.0f} s, rc={proc.returncode})\n"
            )
            f.write(out + "\n")
        if proc.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-LOG_TAIL_LINES:])
            raise PeerUnavailable(f"`{' '.join(argv)}` failed (rc {proc.returncode}):\n{tail}")
        return proc.stdout or ""

    def pip(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        extra = ["-c", str(self.constraints)] if self.constraints else []
        return self.run([str(self.python), "-m", "pip", "install", *extra, *args], env)

    def uninstall(self, *packages: str) -> str:
        return self.run([str(self.python), "-m", "pip", "uninstall", "-y", *packages])

    def python_out(self, code: str) -> str:
        return self.run([str(self.python), "-c", code]).strip()

    def install_torch(self) -> str:
        """The project's torch pin as ``noxfile.py`` installs it; then constrain torch to the
        installed version. Returns that version."""
        pin = noxfile_constant("TORCH_PIN")
        override = os.environ.get("SERVELAB_TORCH", "")
        if override:
            self.pip(*override.split())
        else:
            try:  # a wheel on this machine (pip's find-links); its dependencies from the index
                self.pip("--no-index", "--no-deps", pin)
                self.pip(pin)
            except PeerUnavailable:
                if shutil.which("nvidia-smi") is not None:
                    self.pip(pin)
                else:
                    self.pip(pin, "--index-url", noxfile_constant("TORCH_CPU_INDEX"))
        version = self.python_out("import importlib.metadata as m; print(m.version('torch'))")
        self.constraints = self.log.parent / "constraints.txt"
        self.constraints.write_text(f"torch=={version}\n")
        return version


@dataclass(frozen=True)
class EnvSpec:
    """How to build one peer venv: ``install(installer, env_dir)`` runs the steps; ``probe`` is
    Python code that must exit 0 in the finished venv (it imports the system). Bump
    ``revision`` when the recipe changes, so cached venvs are rebuilt."""

    name: str
    version: str
    install: Callable[[Installer, Path], None]
    probe: str
    revision: int = 1

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"

    def key(self) -> str:
        text = json.dumps(
            [self.name, self.version, self.revision, sys.version_info[:2], self.probe]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two runs never build one venv at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def venv_python(env_dir: Path) -> Path:
    return env_dir / "venv" / "bin" / "python"


def ensure_env(
    spec: EnvSpec,
    base: Path | None = None,
    log: Callable[[str], None] = print,
    runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> Path:
    """The python of ``spec``'s venv, built first if it is not ready; raises
    :class:`PeerUnavailable` (with the failing step's output) if it cannot be built."""
    env_dir = (base or peers_dir()) / spec.dirname
    python, ready = venv_python(env_dir), env_dir / "READY"
    with _locked(env_dir / ".lock"):
        if ready.exists() and ready.read_text().strip() == spec.key() and python.exists():
            return python
        log(f"peers: building {spec.dirname} in {env_dir} (once; log: {env_dir / 'install.log'})")
        started = time.perf_counter()
        inst = Installer(python, env_dir / "install.log", runner=runner)
        if not python.exists():
            inst.run([sys.executable, "-m", "venv", str(env_dir / "venv")])
        spec.install(inst, env_dir)
        inst.run([str(python), "-c", spec.probe])
        ready.write_text(spec.key() + "\n")
        log(f"peers: {spec.dirname} ready after {time.perf_counter() - started:.0f} s")
    return python
