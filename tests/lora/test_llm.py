"""vLLM's LoRA API on our engine: a mixed-adapter batch gives each request what it gets alone
with its adapter, under every LoRA scheduler; peft's greedy output is the reference."""

import pytest
import torch

from core.engine import LLM, LoRARequest, SamplingParams
from core.lora.adapter import AdapterFormatError

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
PROMPTS = [[5, 17, 99, 3], [250, 41, 7, 300, 12, 8], [11, 12, 13], [400, 2, 33, 90, 91]]


def requests(lora_setup):
    return {n: LoRARequest(n, i + 1, str(p)) for i, (n, (p, _)) in enumerate(lora_setup[1].items())}


@pytest.fixture(scope="module")
def llm(lora_setup):
    return LLM(
        lora_setup[0], enable_lora=True, max_loras=3, max_lora_rank=8, linear_backend="torch"
    )


def alone(llm, prompt, lora):
    return llm.generate([prompt], GREEDY, lora_request=lora, use_tqdm=False)[0].token_ids


def test_matches_peft_greedy(lora_setup, llm):
    reqs = requests(lora_setup)
    _, peft_model = lora_setup[1]["a"]
    with torch.no_grad():
        want = peft_model.generate(
            input_ids=torch.tensor([PROMPTS[1]]), max_new_tokens=6, do_sample=False, pad_token_id=0
        )[0, len(PROMPTS[1]) :].tolist()
    assert alone(llm, PROMPTS[1], reqs["a"]) == want


@pytest.mark.parametrize(
    "scheduler",
    [
        "unmerged",
        pytest.param("merged", marks=pytest.mark.slow),
        pytest.param("single", marks=pytest.mark.slow),
    ],
)
def test_mixed_batch_equals_each_alone(lora_setup, llm, scheduler):
    reqs = requests(lora_setup)
    loras = [reqs["a"], reqs["b"], None, reqs["c"]]
    want = [alone(llm, p, lr) for p, lr in zip(PROMPTS, loras, strict=True)]
    assert len({tuple(w) for w in want}) == 4  # the adapters change the outputs
    server = (
        llm
        if scheduler == "unmerged"
        else LLM(
            lora_setup[0],
            enable_lora=True,
            max_loras=2,
            max_lora_rank=8,
            lora_scheduler=scheduler,  # the default linear backend: merges repack its weights
        )
    )
    outs = server.generate(PROMPTS * 2, GREEDY, lora_request=loras * 2, use_tqdm=False)
    assert [o.token_ids for o in outs] == want * 2
    if scheduler == "merged":
        assert server.lora.stats.merges >= 3  # a, b and c each ran merged


@pytest.mark.slow
def test_more_adapters_than_slots_wait_their_turn(lora_setup):
    reqs = requests(lora_setup)
    small = LLM(
        lora_setup[0], enable_lora=True, max_loras=1, max_lora_rank=8, linear_backend="torch"
    )
    loras = [reqs["a"], reqs["b"], reqs["c"], reqs["a"]]
    outs = small.generate(PROMPTS, GREEDY, lora_request=loras, use_tqdm=False)
    want = [alone(small, p, lr) for p, lr in zip(PROMPTS, loras, strict=True)]
    assert [o.token_ids for o in outs] == want
    assert small.lora.stats.slot_evictions >= 2


def test_bad_calls_fail_before_running(lora_setup, llm, tmp_path):
    reqs = requests(lora_setup)
    with pytest.raises(ValueError, match="2 LoRA requests for 4 prompts"):
        llm.generate(PROMPTS, GREEDY, lora_request=[reqs["a"], None], use_tqdm=False)
    with pytest.raises(AdapterFormatError, match="adapter_config.json: missing"):
        llm.generate(PROMPTS[:1], GREEDY, lora_request=LoRARequest("x", 7, str(tmp_path)))
    plain = LLM(lora_setup[0])
    with pytest.raises(ValueError, match="enable_lora=True"):
        plain.generate(PROMPTS[:1], GREEDY, lora_request=reqs["a"], use_tqdm=False)
    with pytest.raises(ValueError, match="unknown LoRA scheduler"):
        LLM(lora_setup[0], enable_lora=True, lora_scheduler="nope")
