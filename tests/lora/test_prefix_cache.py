"""LoRA with block prefix caching: the adapter is part of the block hashes, so a prompt cached
under one adapter is a hit for the same adapter only; every output equals a run without
prefix caching."""

import pytest

from core.engine import LLM, LoRARequest, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
PROMPT = [(7 * i + 3) % 500 + 2 for i in range(37)]  # two full blocks of 16 and 5 tokens


@pytest.fixture(scope="module")
def loras(lora_setup):
    return {n: LoRARequest(n, i + 1, str(p)) for i, (n, (p, _)) in enumerate(lora_setup[1].items())}


def serve(base, prefix_caching: bool) -> LLM:
    return LLM(
        base,
        enable_lora=True,
        max_loras=3,
        max_lora_rank=8,
        block_size=16,
        enable_prefix_caching=prefix_caching,
        linear_backend="torch",
    )


def test_adapters_never_share_cached_blocks(lora_setup, loras):
    cached = serve(lora_setup[0], True)
    plain = serve(lora_setup[0], False)
    order = ["a", "b", None, "a", "b", None, "c"]
    want = {
        name: plain.generate([PROMPT], GREEDY, lora_request=loras.get(name), use_tqdm=False)[0]
        for name in set(order)
    }
    got = []
    for name in order:
        lr = None if name is None else loras[name]
        out = cached.generate([PROMPT], GREEDY, lora_request=lr, use_tqdm=False)[0]
        assert out.token_ids == want[name].token_ids, name
        got.append((out.num_cached_tokens, tuple(out.token_ids)))
    # first time per adapter (and for the base model): nothing cached; second time: 32 tokens
    assert [c for c, _ in got] == [0, 0, 0, 32, 32, 32, 0]
    assert len({toks for _, toks in got}) == 4  # the adapters change the outputs


def test_one_adapters_requests_share_within_a_batch(lora_setup, loras):
    cached = serve(lora_setup[0], True)
    a, b = loras["a"], loras["b"]
    warm = cached.generate([PROMPT], GREEDY, lora_request=a, use_tqdm=False)[0]
    outs = cached.generate([PROMPT, PROMPT + [9]], GREEDY, lora_request=[a, b], use_tqdm=False)
    assert outs[0].num_cached_tokens == 32 and outs[0].token_ids == warm.token_ids
    assert outs[1].num_cached_tokens == 0
