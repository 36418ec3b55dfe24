"""The scheduler's view of KV memory: one interface, two prefix-caching designs.

- :class:`PagedKVBackend`: vLLM-style block hashing over a :class:`KVCacheManager` (dense
  models; supports swapping).
- :class:`RadixKVBackend`: SGLang/Marconi-style radix tree whose pages are the KV blocks, with
  SSM-state slots and checkpoints for hybrid models (dense models work too).

Both are pure bookkeeping. Tensor work the step needs (copying an SSM state slot, moving swapped
blocks) is queued as copies that the runner applies: :meth:`KVBackend.take_copies`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.kv.errors import KVCacheError, OutOfBlocksError
from core.kv.manager import ComputedBlocks, KVCacheManager
from core.kv.policies import AdmissionPolicy, EvictionPolicy
from core.kv.radix import MatchResult, RadixCache
from core.kv.slots import SlotAllocator


class KVRequest(Protocol):
    """What a :class:`KVBackend` reads from a request, which it never changes
    (:class:`~core.sched.request.EngineRequest` is one). ``token_ids``: the prompt and every
    token appended since (``num_tokens`` of them); ``num_computed_tokens``: the leading ones
    whose KV is in the cache, where the next chunk starts."""

    @property
    def request_id(self) -> str: ...

    @property
    def prompt_token_ids(self) -> Sequence[int]: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def num_tokens(self) -> int: ...

    @property
    def num_computed_tokens(self) -> int: ...


def needs_every_logit(req: KVRequest) -> bool:
    """Whether ``req`` asks for prompt logprobs (``sampling.prompt_logprobs``): such a request
    gets no prefix-cache hit, so every prompt position's logits are computed (vLLM's rule);
    its blocks are still offered to the cache for others."""
    return getattr(getattr(req, "sampling", None), "prompt_logprobs", None) is not None


def cache_extra_key(req: KVRequest) -> bytes | None:
    """What a request's KV depends on besides its tokens, mixed into its block hashes (vLLM's
    extra keys): its LoRA adapter (``req.lora``, by int id and name), so requests of one
    adapter share cached prefixes and those of different adapters (or the base model) never
    do. None for the base model."""
    lora = getattr(req, "lora", None)
    return None if lora is None else f"lora:{lora.lora_int_id}:{lora.lora_name}".encode()


@dataclass
class PendingCopies:
    """Tensor copies for the runner: SSM state slots (before / after the forward) and KV
    block moves between device and host (``swap_out``: device->host, ``swap_in``: host->device,
    every block moved this step).

    ``swaps`` holds the same moves in the order they were made, as ``("out" | "in", mapping)``;
    the runner must apply them in that order. A swap-in releases its host blocks and a swap-out
    its device blocks at once, so a later move of the same step may reuse them: applying every
    swap-out before every swap-in would let a swap-out overwrite host blocks a swap-in has not
    read yet (and the reverse order has the mirror problem)."""

    states_before: list[tuple[int, int]] = field(default_factory=list)
    states_after: list[tuple[int, int]] = field(default_factory=list)
    swap_out: dict[int, int] = field(default_factory=dict)
    swap_in: dict[int, int] = field(default_factory=dict)
    swaps: list[tuple[str, dict[int, int]]] = field(default_factory=list)

    def add_swap(self, direction: str, mapping: dict[int, int]) -> None:
        """Queue one request's block moves (``"out"``: device->host, ``"in"``: host->device)."""
        (self.swap_out if direction == "out" else self.swap_in).update(mapping)
        self.swaps.append((direction, dict(mapping)))

    def __bool__(self) -> bool:
        return bool(self.states_before or self.states_after or self.swap_out or self.swap_in)


@dataclass
class Lookup:
    """A prefix-cache hit found for a waiting request, valid until :meth:`KVBackend.allocate`
    or :meth:`KVBackend.cancel` consumes it."""

    num_cached_tokens: int
    handle: Any = None
    stops: tuple[int, ...] = ()  # positions where prefill must stop for an SSM checkpoint


class KVBackend(ABC):
    """KV memory as the scheduler sees it.

    Contract: a request is *admitted* by its first successful :meth:`allocate` (with the
    :class:`Lookup` from :meth:`lookup`), grows by later calls, and leaves by :meth:`free`.
    ``allocate`` returns False and changes nothing when memory is short (after evicting
    unlocked cache entries); the scheduler then preempts someone or waits. Requests are keyed by
    ``request_id``; what else is read from them is :class:`KVRequest`.
    """

    block_size: int
    hybrid: bool = False
    supports_swap: bool = False
    mergeable_decode_calls = False
    """Whether, while a request decodes one token per step, only the steps that start or fill
    one of its blocks matter here: the 1-token :meth:`allocate` calls between them change
    nothing but its slot count and :meth:`on_scheduled` does nothing for them. A decode run
    (:mod:`core.sched.decode_run`) then merges those calls into the next one; otherwise it
    makes every call a step loop would. Not inherited: each class that can declares it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.mergeable_decode_calls = bool(cls.__dict__.get("mergeable_decode_calls", False))

    def __init__(self) -> None:
        self._copies = PendingCopies()

    @abstractmethod
    def lookup(self, req: KVRequest, now: float) -> Lookup: ...

    @abstractmethod
    def peek_prefix(self, token_ids: Sequence[int]) -> int:
        """Tokens of ``token_ids`` a request would find cached now, changing nothing (for
        routers comparing replicas' caches)."""

    def cancel(self, lookup: Lookup) -> None:  # noqa: B027 - optional hook
        """Give up a lookup that was not used (releases any lock it holds)."""

    @abstractmethod
    def allocate(
        self, req: KVRequest, num_new_tokens: int, lookup: Lookup | None, now: float
    ) -> bool: ...

    @abstractmethod
    def free(self, req: KVRequest, now: float, *, cache: bool) -> None:
        """Release the request's KV; ``cache`` offers its computed tokens to the prefix cache."""

    def truncate(self, req: KVRequest, num_tokens: int) -> None:
        """Keep KV slots for the request's first ``num_tokens`` positions only and free the
        blocks past them (speculative tokens that were rejected). The request keeps its place;
        its next :meth:`allocate` grows from ``num_tokens``."""
        raise KVCacheError(f"{type(self).__name__} cannot truncate a request's KV")

    @abstractmethod
    def block_table(self, req: KVRequest) -> list[int]: ...

    @abstractmethod
    def slot_mapping(self, req: KVRequest, start: int, end: int) -> list[int]: ...

    def state_slot(self, req: KVRequest) -> int | None:
        return None

    def next_stop(self, req: KVRequest) -> int | None:
        """The next position where the request's prefill chunk must end (a checkpoint)."""
        return None

    def on_scheduled(  # noqa: B027
        self,
        req: KVRequest,
        start: int,
        num_tokens: int,
        now: float,
    ) -> None:
        """Called when a chunk ``[start, start + num_tokens)`` of ``req`` is scheduled; a hybrid
        backend queues the checkpoint copies due at its end (applied after this forward)."""

    def swap_out(self, req: KVRequest) -> None:
        raise KVCacheError(f"{type(self).__name__} cannot swap")

    def swap_in(self, req: KVRequest) -> bool:
        raise KVCacheError(f"{type(self).__name__} cannot swap")

    def can_swap_out(self, req: KVRequest) -> bool:
        return False

    def swapped_blocks(self, req: KVRequest) -> int:
        """Blocks the request holds in the host pool (0 when it is not swapped out)."""
        return 0

    def take_copies(self) -> PendingCopies:
        """The tensor copies queued since the last call, for the runner to apply."""
        out, self._copies = self._copies, PendingCopies()
        return out

    @property
    @abstractmethod
    def num_free_blocks(self) -> int: ...

    @property
    @abstractmethod
    def num_blocks(self) -> int: ...

    @property
    def capacity_tokens(self) -> int:
        """Tokens the device KV can hold at all: a request needing more can never run."""
        return self.num_blocks * self.block_size

    @property
    @abstractmethod
    def usage(self) -> float: ...

    @property
    @abstractmethod
    def hit_rate(self) -> float: ...


class PagedKVBackend(KVBackend):
    """Block-hash prefix caching (vLLM v1) on a :class:`KVCacheManager`; dense models only.
    A request's LoRA adapter is part of its block hashes (:func:`cache_extra_key`).
    The manager keys requests by id and returns block moves; this adapter reads them from the
    request (:class:`KVRequest`) and queues the moves as copies."""

    supports_swap = True
    mergeable_decode_calls = True

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        kv_bytes_per_token: int = 0,
        num_host_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.manager = KVCacheManager(
            num_blocks,
            block_size,
            enable_prefix_caching=enable_prefix_caching,
            kv_bytes_per_token=kv_bytes_per_token,
            num_host_blocks=num_host_blocks,
        )

    def lookup(self, req: KVRequest, now: float) -> Lookup:
        if needs_every_logit(req):
            return Lookup(0, ComputedBlocks(num_query_tokens=req.num_tokens))
        hit = self.manager.get_computed_blocks(req.token_ids, cache_extra_key(req))
        return Lookup(hit.num_tokens, hit)

    def peek_prefix(self, token_ids: Sequence[int]) -> int:
        return self.manager.get_computed_blocks(token_ids).num_tokens

    def allocate(
        self, req: KVRequest, num_new_tokens: int, lookup: Lookup | None, now: float
    ) -> bool:
        computed: ComputedBlocks | None = lookup.handle if lookup is not None else None
        got = self.manager.allocate_slots(
            req.request_id,
            num_new_tokens,
            computed,
            token_ids=req.token_ids,
            extra_key=cache_extra_key(req),
        )
        return got is not None

    def free(self, req: KVRequest, now: float, *, cache: bool) -> None:
        # finished blocks stay hashed in the pool's free queue: that *is* the prefix cache
        if self.manager.has_request(req.request_id):
            self.manager.free(req.request_id)

    def truncate(self, req: KVRequest, num_tokens: int) -> None:
        self.manager.truncate(req.request_id, num_tokens)

    def block_table(self, req: KVRequest) -> list[int]:
        return self.manager.block_ids(req.request_id)

    def slot_mapping(self, req: KVRequest, start: int, end: int) -> list[int]:
        return self.manager.slot_mapping(req.request_id, start, end)

    def can_swap_out(self, req: KVRequest) -> bool:
        return self.manager.can_swap_out(req.request_id)

    def swap_out(self, req: KVRequest) -> None:
        self._copies.add_swap("out", self.manager.swap_out(req.request_id))

    def swapped_blocks(self, req: KVRequest) -> int:
        return self.manager.host.num_blocks_of(req.request_id)

    def swap_in(self, req: KVRequest) -> bool:
        mapping = self.manager.swap_in(req.request_id)
        if mapping is None:
            return False
        self._copies.add_swap("in", mapping)
        return True

    @property
    def num_free_blocks(self) -> int:
        return self.manager.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.manager.num_blocks

    @property
    def usage(self) -> float:
        return self.manager.usage

    @property
    def hit_rate(self) -> float:
        return self.manager.stats.hit_rate


RequestObserver = Callable[[RadixCache, Sequence[int], Sequence[int], float], Any]
"""Called by :class:`RadixKVBackend` after a finished request's tokens were inserted into its
cache: ``(cache, prompt_ids, output_ids, now)``, e.g. Marconi's ``AlphaTuner.observe`` (in its
artifact: the alpha tuning watches the requests the engine serves)."""


@dataclass
class _RadixHold:
    match: MatchResult
    own_blocks: list[int] = field(default_factory=list)
    state: int | None = None
    stops: list[int] = field(default_factory=list)
    captured: dict[int, int] = field(default_factory=dict)


class RadixKVBackend(KVBackend):
    """A radix prefix cache whose pages are the KV blocks (``page_size == block_size``), with
    SSM-state slots for hybrid models.

    - Hits are page-aligned; a hybrid hit stops at the deepest cached SSM checkpoint and the
      request resumes from a *copy* of it (the copy is queued before the forward).
    - Prefill chunks end at the admission policy's checkpoint positions; when a request reaches
      one, its live state is copied into a new slot after the forward and offered to the tree
      when the request finishes. Token-level checkpoints (Marconi) need ``block_size = 1``.
    - Memory: ``num_blocks`` KV blocks and ``num_state_slots`` SSM-state slots (live states of
      running requests plus cached checkpoints); unlocked tree entries are evicted on demand.
      A checkpoint that finds no slot even after eviction is skipped (counted in
      ``skipped_checkpoints``); a request that finds no slot for its live state waits, as
      for blocks.
    - No swapping (hybrid SSM states have no host pool); preemption is by recompute.
    - ``request_observer`` (optional, settable): called after each finished request's tokens
      are inserted into the cache (:data:`RequestObserver`); not for preempted or aborted ones.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        hybrid: bool = False,
        num_state_slots: int = 0,
        kv_bytes_per_token: int = 0,
        ssm_state_bytes: int = 0,
        eviction: EvictionPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        enable_prefix_caching: bool = True,
        request_observer: RequestObserver | None = None,
    ) -> None:
        super().__init__()
        if hybrid and num_state_slots <= 0:
            raise ValueError("a hybrid model needs num_state_slots > 0")
        self.block_size = block_size
        self.hybrid = hybrid
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = SlotAllocator(
            num_blocks, bytes_per_slot=kv_bytes_per_token * block_size, name="KV block"
        )
        self.states = SlotAllocator(
            num_state_slots, bytes_per_slot=ssm_state_bytes, name="SSM state slot"
        )
        self.cache = RadixCache(
            page_size=block_size,
            hybrid=hybrid,
            kv_bytes_per_token=kv_bytes_per_token,
            ssm_state_bytes=ssm_state_bytes,
            eviction=eviction,
            admission=admission,
            free_kv=self._free_values,
            free_checkpoints=self.states.free,
            copy_checkpoint=self._copy_state,
        )
        self.request_observer = request_observer
        self._held: dict[str, _RadixHold] = {}
        self.skipped_checkpoints = 0  # wanted but dropped for lack of a free state slot
        self._query_tokens = 0
        self._hit_tokens = 0

    # -- memory ---------------------------------------------------------------------------------

    def _free_values(self, values: Sequence[int]) -> None:
        self.blocks.free(sorted({v // self.block_size for v in values}))

    def _copy_state(self, src: int) -> int:
        dst = self._alloc_states(1)[0]
        self._copies.states_before.append((src, dst))
        return dst

    def _alloc_blocks(self, n: int, now: float) -> list[int] | None:
        if n > self.blocks.num_free:
            self.cache.evict(num_tokens=(n - self.blocks.num_free) * self.block_size, now=now)
        if n > self.blocks.num_free:
            return None
        return self.blocks.alloc(n)

    def _alloc_states(self, n: int, now: float | None = None) -> list[int]:
        if n > self.states.num_free:
            self.cache.evict(num_checkpoints=n - self.states.num_free, now=now)
        if n > self.states.num_free:
            raise OutOfBlocksError(
                f"no free SSM state slot ({self.states.num_slots} in all): raise num_state_slots"
            )
        return self.states.alloc(n)

    # -- the interface --------------------------------------------------------------------------

    def lookup(self, req: KVRequest, now: float) -> Lookup:
        ids = req.token_ids
        if self.enable_prefix_caching and not needs_every_logit(req):
            m = self.cache.match_prefix(ids[:-1], now)  # leave >= 1 token to compute
        else:
            m = self.cache.match_prefix([], now, record=False)
        self.cache.lock(m.hit_node)
        stops = tuple(
            p for p in self.cache.checkpoint_positions(ids, m) if m.hit_len < p < len(ids)
        )
        return Lookup(m.hit_len, m, stops)

    def cancel(self, lookup: Lookup) -> None:
        self.cache.unlock(lookup.handle.hit_node)

    def peek_prefix(self, token_ids: Sequence[int]) -> int:
        if not self.enable_prefix_caching or not token_ids:
            return 0
        return self.cache.peek(token_ids[:-1])[1]

    def allocate(
        self, req: KVRequest, num_new_tokens: int, lookup: Lookup | None, now: float
    ) -> bool:
        rid = req.request_id
        hold = self._held.get(rid)
        if hold is None:
            if lookup is None:
                raise KVCacheError(f"request {rid!r}: first allocate needs its lookup")
            m: MatchResult = lookup.handle
            hold = _RadixHold(m, stops=list(lookup.stops))
            start = m.hit_len
        else:
            start = req.num_computed_tokens
        have = (len(hold.match.hit_values) // self.block_size) + len(hold.own_blocks)
        need = max(0, -(-(start + num_new_tokens) // self.block_size) - have)
        new = self._alloc_blocks(need, now)
        if new is None:
            return False
        if rid not in self._held and self.hybrid:
            m = hold.match
            try:
                hold.state = (
                    self.cache.fork_checkpoint(m)
                    if m.checkpoint is not None
                    else self._alloc_states(1, now)[0]
                )
            except OutOfBlocksError:
                # every slot is a live state or a checkpoint a running request captured: the
                # request waits (like a lack of blocks) until one finishes and frees its own
                self.blocks.free(new)
                return False
        hold.own_blocks.extend(new)
        if rid not in self._held:
            self._held[rid] = hold
            self._query_tokens += req.num_tokens
            self._hit_tokens += hold.match.hit_len
        return True

    def _hold(self, req: KVRequest) -> _RadixHold:
        hold = self._held.get(req.request_id)
        if hold is None:
            raise KVCacheError(f"request {req.request_id!r} holds no KV")
        return hold

    def block_table(self, req: KVRequest) -> list[int]:
        hold = self._hold(req)
        hit = hold.match.hit_values[:: self.block_size]
        return [v // self.block_size for v in hit] + hold.own_blocks

    def slot_mapping(self, req: KVRequest, start: int, end: int) -> list[int]:
        table, bs = self.block_table(req), self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def truncate(self, req: KVRequest, num_tokens: int) -> None:
        hold = self._hold(req)
        hit_blocks = len(hold.match.hit_values) // self.block_size
        keep = max(0, -(-num_tokens // self.block_size) - hit_blocks)
        if num_tokens < hold.match.hit_len:
            raise KVCacheError(
                f"request {req.request_id!r}: cannot truncate to {num_tokens} tokens, below "
                f"its cached prefix of {hold.match.hit_len}"
            )
        dropped, hold.own_blocks = hold.own_blocks[keep:], hold.own_blocks[:keep]
        self.blocks.free(dropped)

    def state_slot(self, req: KVRequest) -> int | None:
        return self._hold(req).state

    def next_stop(self, req: KVRequest) -> int | None:
        stops = self._held[req.request_id].stops if req.request_id in self._held else ()
        return next((p for p in stops if p > req.num_computed_tokens), None)

    def on_scheduled(self, req: KVRequest, start: int, num_tokens: int, now: float) -> None:
        hold = self._hold(req)
        end = start + num_tokens
        while hold.stops and hold.stops[0] <= end:
            pos = hold.stops.pop(0)
            if pos == end and self.hybrid and hold.state is not None:
                # the live state after this step's forward is the state at ``pos``: copy it then.
                # A checkpoint is optional: with every slot taken by live states and locked
                # checkpoints (e.g. one per 32 tokens of a long running prompt), skip it.
                if self.states.num_free == 0:
                    self.cache.evict(num_checkpoints=1, now=now)
                if self.states.num_free == 0:
                    self.skipped_checkpoints += 1
                    continue
                ckpt = self.states.alloc(1)[0]
                self._copies.states_after.append((hold.state, ckpt))
                hold.captured[pos] = ckpt

    def free(self, req: KVRequest, now: float, *, cache: bool) -> None:
        hold = self._held.pop(req.request_id, None)
        if hold is None:
            return
        bs = self.block_size
        n = req.num_computed_tokens
        seq: Sequence[int] | None = None
        if cache and self.enable_prefix_caching and n > 0:
            seq = req.token_ids[:n]
            table = [v // bs for v in hold.match.hit_values[::bs]] + hold.own_blocks
            values = [table[p // bs] * bs + p % bs for p in range(n)]
            ckpts = dict(hold.captured)
            offered_live = False
            if (
                self.hybrid
                and hold.state is not None
                and self.cache.admit_leaf(seq)
                and n not in ckpts
            ):
                ckpts[n] = hold.state
                offered_live = True
            r = self.cache.insert(seq, values, now, checkpoints=ckpts)
            kept = {v // bs for v in values} - {v // bs for v in r.unused_values}
            self.blocks.free([b for b in hold.own_blocks if b not in kept])
            self.states.free(list(r.unused_checkpoints))
            if self.hybrid and hold.state is not None and not offered_live:
                self.states.free([hold.state])
        else:
            self.blocks.free(hold.own_blocks)
            self.states.free(list(hold.captured.values()))
            if hold.state is not None:
                self.states.free([hold.state])
        self.cache.unlock(hold.match.hit_node)
        if seq is not None and self.request_observer is not None:
            p = min(n, len(req.prompt_token_ids))
            self.request_observer(self.cache, seq[:p], seq[p:], now)

    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free

    @property
    def num_blocks(self) -> int:
        return self.blocks.num_slots

    @property
    def usage(self) -> float:
        return 1.0 - self.blocks.num_free / max(1, self.blocks.num_slots)

    @property
    def hit_rate(self) -> float:
        return self._hit_tokens / self._query_tokens if self._query_tokens else 0.0
