"""Launching: torchrun runs the same script on 2 ranks and gets the single-process engine's
tokens; ranks whose schedulers diverge stop with an error instead of mismatched collectives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.dist import Comm, LocalGroup, RankFailedError
from core.engine import LLM, SamplingParams
from tests.dist.test_parallel_model import CONFIGS

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[1, 7, 42, 9, 3], list(range(20, 41))]
SCRIPT = """
import json, sys
import torch.distributed as dist
from core.engine import LLM, SamplingParams

config = json.loads(sys.argv[1])
llm = LLM(config, seed=0, linear_backend="torch", num_kv_blocks=64, block_size=4,
          tensor_parallel_size=2)
params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
outputs = llm.generate(json.loads(sys.argv[2]), params, use_tqdm=False)
if dist.get_rank() == 0:
    print(json.dumps([o.token_ids for o in outputs]))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_ranks_equal_the_single_process_engine(tmp_path):
    script = tmp_path / "tp_generate.py"
    script.write_text(SCRIPT)
    config = CONFIGS["llama"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run(
        [*cmd, str(script), json.dumps(config), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parallel = json.loads(out.stdout.strip().splitlines()[-1])
    llm = LLM(config, seed=0, linear_backend="torch", num_kv_blocks=64, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    single = [o.token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert parallel == single


def _diverging_ranks(comm: Comm) -> None:
    llm = LLM(CONFIGS["llama"], linear_backend="torch", num_kv_blocks=64, tensor_parallel_size=2)
    prompt = [1, 2, 3] if comm.rank == 0 else [4, 5, 6, 7]  # rank 1 schedules other work
    llm.generate([prompt], SamplingParams(max_tokens=2), use_tqdm=False)


@pytest.mark.slow
def test_ranks_whose_schedules_differ_stop_with_an_error():
    with LocalGroup(2, timeout_s=30) as group:
        with pytest.raises(RankFailedError, match="(?s)rank 1 failed.*ScheduleMismatchError"):
            group.run(_diverging_ranks, timeout_s=300)
