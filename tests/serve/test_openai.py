"""The official openai client against the server: greedy outputs equal LLM.generate's, streamed
or not, alone or among concurrent clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from core.engine import SamplingParams
from tests.serve.conftest import MODEL, client_for

PROMPTS = ["The quick brown fox", "Serving systems batch", "Numbers like 12 and"]
ID_PROMPTS = [[5, 17, 300, 42], [7] * 20, list(range(3, 40))]


def greedy(offline, prompts, max_tokens):
    outs = offline.generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False
    )
    return [(o.token_ids, o.text) for o in outs]


def extra(choice, key="token_ids"):
    return choice.model_extra[key]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    import httpx

    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize("prompts", [PROMPTS, ID_PROMPTS], ids=["text", "token-ids"])
def test_completions_equal_llm_generate(client, offline, prompts):
    want = greedy(offline, prompts, 12)
    for prompt, (ids, text) in zip(prompts, want, strict=True):
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        (choice,) = r.choices
        assert extra(choice) == ids
        assert choice.text == text
        assert choice.finish_reason in ("length", "stop")
        assert r.usage.completion_tokens == len(ids)
        n_prompt = len(prompt) if isinstance(prompt, list) else len(offline._encode(prompt))
        assert r.usage.prompt_tokens == n_prompt


def test_completions_stream_equals_non_stream(client, offline):
    want = greedy(offline, PROMPTS, 12)
    for prompt, (ids, text) in zip(PROMPTS, want, strict=True):
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        *tokens, usage = chunks
        assert "".join(c.choices[0].text for c in tokens) == text
        assert [t for c in tokens for t in extra(c.choices[0])] == ids
        assert tokens[-1].choices[0].finish_reason in ("length", "stop")
        assert all(c.choices[0].finish_reason is None for c in tokens[:-1])
        assert usage.choices == [] and usage.usage.completion_tokens == len(ids)


def test_batch_prompt_and_n(client, offline):
    want = greedy(offline, ID_PROMPTS[:2], 6)
    r = client.completions.create(
        model=MODEL, prompt=ID_PROMPTS[:2], max_tokens=6, temperature=0, n=2
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    # choice i * n + j is sample j of prompt i; greedy samples of one prompt are equal
    assert [extra(c) for c in r.choices] == [want[0][0]] * 2 + [want[1][0]] * 2


def test_chat_uses_the_template_and_equals_llm_generate(client, offline, model_dir):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
    ]
    hf = AutoTokenizer.from_pretrained(model_dir)
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("### SYSTEM: You are terse.")
    ((ids, text),) = greedy(offline, [rendered], 10)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text
    assert extra(r.choices[0]) == ids
    assert r.usage.prompt_tokens == len(hf(rendered)["input_ids"])
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_stop_strings_cut_the_text(client, offline):
    ((ids, text),) = greedy(offline, [PROMPTS[0]], 24)
    stop = text[5:8]
    assert stop and text.find(stop) == 5, "pick a stop string that occurs once, mid-text"
    for stream in (False, True):
        r = client.completions.create(
            model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop], stream=stream
        )
        got = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert got == text[:5]


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=MODEL, prompt=ID_PROMPTS[0], max_tokens=8, temperature=1.0, seed=7)
    a = extra(client.completions.create(**kw).choices[0])
    b = extra(client.completions.create(**kw).choices[0])
    assert a == b


def test_concurrent_clients_each_get_their_own_answer_once(server, offline):
    """24 requests from 8 threads, streamed and not: each answer equals the request alone."""
    prompts = [[3 + i, 40 + 2 * i, 100 + 3 * i] * (1 + i % 4) for i in range(24)]
    want = [ids for ids, _ in greedy(offline, prompts, 10)]

    def ask(i):
        c = client_for(server)
        if i % 2:
            r = c.completions.create(model=MODEL, prompt=prompts[i], max_tokens=10, temperature=0)
            return r.id, extra(r.choices[0])
        chunks = list(
            c.completions.create(
                model=MODEL, prompt=prompts[i], max_tokens=10, temperature=0, stream=True
            )
        )
        return chunks[0].id, [t for ch in chunks for t in extra(ch.choices[0])]

    before = server.cfg.metrics.finished.copy()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(24)))
    assert [ids for _, ids in got] == want
    assert len({rid for rid, _ in got}) == 24
    after = server.cfg.metrics.finished
    assert sum(after.values()) - sum(before.values()) == 24
    assert server.engine.num_outstanding == 0


def test_prefix_cache_hits_show_in_usage(start_server):
    prompt = list(range(10, 90))  # five 16-token blocks
    for caching, want in ((True, 64), (False, 0)):
        with start_server(engine={"enable_prefix_caching": caching}) as s:
            c = client_for(s)
            first = c.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
            again = c.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
            assert first.usage.prompt_tokens_details.cached_tokens == 0
            # whole blocks are cached; the last prompt token is always computed
            assert again.usage.prompt_tokens_details.cached_tokens == want
            assert extra(again.choices[0]) == extra(first.choices[0])
