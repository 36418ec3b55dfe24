"""Block hashes with an extra key (vLLM's extra keys: the LoRA adapter): equal tokens under
different keys never share blocks; under the same key they do; the backend takes the key from
the request's adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.kv import KVCacheManager
from core.kv.backend import PagedKVBackend, cache_extra_key
from core.kv.block_pool import hash_token_blocks
from core.lora.request import LoRARequest

BS = 4
PROMPT = list(range(10, 23))  # 3 full blocks + 1 token


def admit(kv: KVCacheManager, rid: str, prompt: list[int], key: bytes | None):
    hit = kv.get_computed_blocks(prompt, key)
    kv.allocate_slots(rid, len(prompt) - hit.num_tokens, hit, token_ids=prompt, extra_key=key)
    return hit.num_tokens


def test_hash_chain_depends_on_the_key():
    plain = hash_token_blocks(PROMPT, BS)
    a, b = (
        hash_token_blocks(PROMPT, BS, extra_key=b"a"),
        hash_token_blocks(PROMPT, BS, extra_key=b"b"),
    )
    assert len({*plain, *a, *b}) == 9  # no block hash in common
    assert a == hash_token_blocks(PROMPT, BS, extra_key=b"a")


def test_same_key_shares_other_keys_do_not():
    kv = KVCacheManager(32, BS)
    assert admit(kv, "a1", PROMPT, b"lora-a") == 0
    kv.free("a1")
    assert admit(kv, "b1", PROMPT, b"lora-b") == 0  # another adapter: recomputed
    assert admit(kv, "base", PROMPT, None) == 0  # the base model: recomputed
    assert admit(kv, "a2", PROMPT, b"lora-a") == 12  # the same adapter: three blocks hit
    assert admit(kv, "b2", PROMPT + [7], b"lora-b") == 12  # b's blocks were cached too
    assert kv.block_ids("a2")[:3] != kv.block_ids("b2")[:3]
    kv.check_integrity()


@dataclass
class _Req:
    request_id: str
    prompt_token_ids: list[int]
    lora: LoRARequest | None = None
    num_computed_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def test_backend_keys_blocks_by_the_requests_adapter():
    sql, sql_again = LoRARequest("sql", 1, "/x"), LoRARequest("sql", 1, "/elsewhere")
    other = LoRARequest("chat", 2, "/x")
    assert cache_extra_key(_Req("r", PROMPT, sql)) == cache_extra_key(_Req("s", PROMPT, sql_again))
    assert cache_extra_key(_Req("r", PROMPT)) is None
    kv = PagedKVBackend(32, BS)

    def run(rid: str, lora: LoRARequest | None) -> int:
        req = _Req(rid, PROMPT, lora)
        found = kv.lookup(req, 0.0)
        assert kv.allocate(req, req.num_tokens - found.num_cached_tokens, found, 0.0)
        kv.free(req, 0.0, cache=True)
        return found.num_cached_tokens

    assert [run("1", sql), run("2", other), run("3", None)] == [0, 0, 0]
    assert [run("4", sql_again), run("5", other), run("6", None)] == [12, 12, 12]
