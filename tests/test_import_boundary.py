"""The simulation side of the core imports and runs without torch (DESIGN.md: torch loads only
with the engine and the models). Each check runs in a fresh interpreter, with the `engine`
extra's packages blocked by a meta-path finder, or unblocked to see that a plain import does not
load them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE = [
    "core.sim",
    "core.kv",
    "core.sched",
    "core.cluster",
    "core.metrics",
    "core.workload",
    "core.artifact",
    "core.model",
    "core.jobsim",
    "core.alltoall",
]
# Submodules of those packages that are the engine side on purpose: real serving on engine
# replicas (core.cluster's docstring says it is not imported by the package) and the torch
# models and checkpoint I/O of core.model (core.model loads them on first use).
ENGINE_SIDE = re.compile(
    r"core\.cluster\.serving|core\.alltoall\.record|core\.model\.(base|batch|cache|checkpoint|hybrid|layers|llama|"
    r"mixtral|registry|training)$"
)
ENGINE_PACKAGES = ("torch", "transformers", "safetensors", "accelerate", "triton")

BLOCK = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ENGINE_PACKAGES!r}:
            raise ModuleNotFoundError(f"{{name}} is blocked", name=name)
sys.meta_path.insert(0, _Block())
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("package", TORCH_FREE)
def test_package_and_its_submodules_import_with_torch_blocked(package):
    run(
        BLOCK
        + f"""
import importlib, pkgutil, re
pkg = importlib.import_module({package!r})
for info in pkgutil.walk_packages(pkg.__path__, {package!r} + "."):
    if not re.match({ENGINE_SIDE.pattern!r}, info.name):
        importlib.import_module(info.name)
"""
    )


@pytest.mark.parametrize("package", TORCH_FREE)
def test_plain_import_does_not_load_torch(package):
    run(f"""
import importlib, sys
importlib.import_module({package!r})
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {ENGINE_PACKAGES!r})
assert not loaded, loaded
""")


def test_core_model_without_torch_parses_counts_and_names_the_missing_extra():
    run(
        BLOCK
        + """
import pytest
import core.model as m
spec = m.ModelSpec.from_preset("bamba-9b")
assert spec.n_ssm_layers == 29 and m.load_config(m.preset_config("tiny-bamba")).mamba
with pytest.raises(ModuleNotFoundError, match=r"core.model.load_model needs torch.*servelab\\[engine\\]"):
    m.load_model
"""
    )


def test_a_small_simulation_runs_with_torch_blocked():
    """The README's "Simulating a deployment" objects, on the first 200 requests of the trace
    (the example as written runs in a fresh venv without torch: see the next test)."""
    run(
        BLOCK
        + """
from core.metrics import RequestRecord, summarize
from core.sched import SchedulerConfig
from core.sim import ReplicaConfig, Simulator
from core.sim.cost import RooflineCostModel
from core.workload import load_azure

cost = RooflineCostModel("llama-3-8b", "h100-sxm", dtype="bf16", tp=1)
replica = ReplicaConfig(cost, num_kv_blocks=cost.max_kv_blocks(16), prefix_cache="none",
                        scheduler=SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=256,
                                                  max_model_len=16384))
result = Simulator([replica] * 2, router="least-work").run(load_azure(kind="conv", limit=200))
assert summarize([RequestRecord.from_request(r) for r in result.requests])["ttft_p90"] > 0
"""
    )


@pytest.mark.skipif(
    not os.environ.get("SERVELAB_TEST_SIM_INSTALL"),
    reason="set SERVELAB_TEST_SIM_INSTALL=1: installs from PyPI, ~2 min",
)
def test_a_fresh_sim_install_runs_the_readme_simulation(tmp_path):
    """``pip install '.[sim]'`` into a fresh venv installs no torch, and the README's
    "Simulating a deployment" example runs there as written."""
    src = tmp_path / "src"  # a copy: pip builds in the source tree
    for name in ("core", "artifacts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[sim]"],
        check=True,
        timeout=900,
    )
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Simulating a deployment") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {"PATH": os.environ.get("PATH", ""), "SERVELAB_DATA": str(ROOT / "data")}
    out = subprocess.run(
        [str(py), "-c", "import sys\n" + code + "\nassert 'torch' not in sys.modules"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.strip().splitlines()[-1]) > 0
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0
