"""Pause/resume for tool calls: every KV mode continues with the same tokens."""

from __future__ import annotations

import pytest

from core.engine import LLM, SamplingParams
from core.sched import PauseMode, RequestStatus
from core.workload import Interception

from .conftest import prompts

RETURNED = [7, 8, 9, 10]


def reference(path, prompt, k, n):
    """Greedy k tokens, then the tool's tokens appended, then n - k more: two plain runs."""
    llm = LLM(path, num_kv_blocks=128, enable_prefix_caching=False)
    first = llm.generate(
        [prompt], SamplingParams(temperature=0, max_tokens=k, ignore_eos=True), use_tqdm=False
    )[0].token_ids
    rest = llm.generate(
        [prompt + first + RETURNED],
        SamplingParams(temperature=0, max_tokens=n - k, ignore_eos=True),
        use_tqdm=False,
    )[0].token_ids
    return first + rest


@pytest.mark.parametrize("mode", list(PauseMode))
@pytest.mark.parametrize("arch", ["llama", "bamba"])
def test_pause_resume_matches_uninterrupted_generation(arch, mode, checkpoint):
    _, path = checkpoint(arch)
    prompt = prompts([11], seed=9)[0]
    want = reference(path, prompt, 3, 8)
    kw = {"num_host_blocks": 32, "prefix_cache": "block"} if arch == "llama" else {}
    llm = LLM(path, num_kv_blocks=128, **kw)
    eng = llm.engine
    req = eng.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    while req.num_output_tokens < 3:
        eng.step()
    eng.pause("r", mode)
    assert req.status == RequestStatus.PAUSED
    eng.step()  # other work may run while it waits; it must not
    assert req.num_output_tokens == 3
    eng.resume("r", RETURNED)
    eng.run()
    assert req.output_token_ids == want
    recomputed = req.timeline.recomputed_tokens
    if mode == PauseMode.DISCARD or (mode == PauseMode.SWAP and arch == "bamba"):
        assert recomputed >= len(prompt) + 2  # everything before the pause, again
    else:
        assert recomputed == 0


def test_interceptions_pause_and_resume_by_themselves(checkpoint):
    _, path = checkpoint("llama")
    prompt = prompts([11], seed=9)[0]
    want = reference(path, prompt, 3, 8)
    llm = LLM(path, num_kv_blocks=128)
    now = [0.0]
    llm.engine.clock = lambda: now[0]
    icp = Interception(
        after_output_tokens=3, duration_s=2.0, returned_tokens=4, returned_token_ids=tuple(RETURNED)
    )
    req = llm.engine.add_request(
        "r",
        prompt,
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        interceptions=[icp],
    )

    def sleep(dt):
        now[0] += dt

    llm.engine.run(idle_sleep=sleep)
    assert req.output_token_ids == want
    assert now[0] >= 2.0 and req.timeline.num_pauses == 1
