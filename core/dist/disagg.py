"""Attention/expert disaggregation of a Mixtral-family model with ping-pong micro-batches
(MegaScale-Infer).

One process holds the attention side: embedding, attention layers, norms, routers, LM head and
the KV cache. Another holds the expert side: every MoE layer's experts. Each layer of a step
goes attention -> experts -> attention: the attention side routes each token (Mixtral's top-k
router), sends the normed hidden states with the chosen experts and weights, and adds the
combined expert output it gets back to the residual stream. The batch is split into ``m``
micro-batches of whole sequences that alternate: while the experts work on micro-batch ``i``,
the attention side computes micro-batch ``i + 1``.

- :class:`AttentionSide` runs greedy generation over such a split (``generate(prompts, n, m)``);
  :class:`ExpertSide` serves expert requests until told to stop (``serve()``).
- They talk through a :class:`SideLink`: :class:`DistLink` (torch.distributed messages between
  the 2 ranks of a :class:`~core.dist.group.Comm`'s group: gloo on CPU, NCCL on GPUs) or
  :class:`QueueLink` (two threads of one process, for tests).
- Each side records a timeline of :class:`~core.sim.pingpong.Slot` (which side computed which
  micro-batch of which layer, when; ``time.perf_counter``, one clock for all processes of a
  Linux machine).
- :func:`colocated_generate` is the single-process reference the outputs must equal.

The arithmetic of each layer is the colocated model's (same router, same expert loop, same
order of additions), so the outputs equal it up to the rounding of matmuls over fewer rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from core.model.base import CausalLM
from core.model.batch import ForwardBatch, ForwardContext
from core.model.cache import KVCache
from core.model.mixtral import MixtralDecoderLayer, SparseMoE
from core.sim.pingpong import ATTENTION, EXPERT, Slot

from .ep import route
from .group import CollectiveError, Comm

__all__ = [
    "AttentionSide",
    "DistLink",
    "ExpertSide",
    "Generation",
    "QueueLink",
    "SideLink",
    "colocated_generate",
    "micro_batches",
    "run_experts",
]

_WORK, _STOP = 0, 1
_HEADER = 5  # kind, rows, layer, micro-batch, run


def micro_batches(n: int, m: int) -> list[range]:
    """``n`` sequences split into ``min(m, n)`` contiguous groups whose sizes differ by at most
    one (the larger first)."""
    if n < 1 or m < 1:
        raise ValueError(f"need n >= 1 sequences and m >= 1 micro-batches, got n={n}, m={m}")
    m = min(m, n)
    size, extra = divmod(n, m)
    out, start = [], 0
    for i in range(m):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def run_experts(
    experts: nn.ModuleList, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The weighted sum of each token's chosen experts, as :class:`SparseMoE` adds them."""
    out = torch.zeros_like(x)
    for e in chosen.unique().tolist():
        rows, rank = torch.where(chosen == e)
        y = experts[e](x[rows]) * weights[rows, rank, None]
        out.index_add_(0, rows, y.to(x.dtype))
    return out


# --------------------------------------------------------------------------------------------
# Links between the sides
# --------------------------------------------------------------------------------------------


class Pending(Protocol):
    def wait(self) -> list[torch.Tensor]: ...


class SideLink(Protocol):
    """A point-to-point, in-order message channel to the other side.

    ``send(tensors)`` may return before the data left (the tensors must not change until the
    next :meth:`flush`); ``recv(specs)`` posts a receive of tensors of the given ``(shape,
    dtype)`` and returns a handle whose ``wait()`` gives them. Messages arrive in send order.
    """

    def send(self, tensors: Sequence[torch.Tensor]) -> None: ...

    def recv(self, specs: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> Pending: ...

    def flush(self) -> None: ...


@dataclass
class _DistPending:
    comm: Comm
    works: list[Any]
    out: list[torch.Tensor]

    def wait(self) -> list[torch.Tensor]:
        for w in self.works:
            _checked(self.comm, "recv", w.wait)
        return self.out


def _checked(comm: Comm, what: str, fn: Any) -> Any:
    try:
        return fn()
    except (RuntimeError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CollectiveError(
            f"rank {comm.rank} of {comm.world_size}: disaggregated {what} failed: {first}. The "
            f"other side died or did not answer within {comm.timeout_s:g} s"
        ) from e


class DistLink:
    """:class:`SideLink` between the 2 ranks of ``comm``'s group over torch.distributed.

    Each message is an asynchronous ``broadcast`` from its sender (both ranks issue the same
    sequence of sends and receives, so the collectives match): on gloo over loopback TCP a
    broadcast round trip took ~2 ms here where ``isend``/``irecv`` took ~50 ms. The group's
    timeout bounds every wait; failures raise :class:`~core.dist.group.CollectiveError`.
    """

    def __init__(self, comm: Comm, peer: int) -> None:
        if comm.world_size != 2:
            raise ValueError(f"DistLink joins the 2 ranks of a group, got {comm.world_size}")
        if peer != 1 - comm.rank:
            raise ValueError(f"peer {peer} is not the other rank of rank {comm.rank}")
        self.comm, self.peer = comm, peer
        self._sent: list[tuple[Any, torch.Tensor]] = []

    def _broadcast(self, t: torch.Tensor, src: int, what: str) -> Any:
        group = self.comm.group
        return _checked(
            self.comm, what, lambda: dist.broadcast(t, src=src, group=group, async_op=True)
        )

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        for t in tensors:
            t = t.contiguous()
            self._sent.append((self._broadcast(t, self.comm.rank, "send"), t))

    def recv(self, specs: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> Pending:
        out = [torch.empty(shape, dtype=dtype, device=self.comm.device) for shape, dtype in specs]
        works = [self._broadcast(t, self.peer, "recv") for t in out]
        return _DistPending(self.comm, works, out)

    def flush(self) -> None:
        for work, _ in self._sent:
            _checked(self.comm, "send", work.wait)
        self._sent.clear()


@dataclass
class _QueuePending:
    box: queue.Queue[list[torch.Tensor]]
    specs: list[tuple[tuple[int, ...], torch.dtype]]
    timeout_s: float

    def wait(self) -> list[torch.Tensor]:
        try:
            got = self.box.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TimeoutError(
                f"no message from the other side within {self.timeout_s:g} s"
            ) from None
        shapes = [(tuple(t.shape), t.dtype) for t in got]
        if shapes != [(tuple(s), d) for s, d in self.specs]:
            raise ValueError(f"expected tensors {self.specs}, got {shapes}")
        return got


class QueueLink:
    """:class:`SideLink` between two threads of one process; :meth:`pair` makes both ends."""

    def __init__(
        self,
        inbox: queue.Queue[list[torch.Tensor]],
        outbox: queue.Queue[list[torch.Tensor]],
        timeout_s: float = 60.0,
    ) -> None:
        self.inbox, self.outbox, self.timeout_s = inbox, outbox, timeout_s

    @classmethod
    def pair(cls, timeout_s: float = 60.0) -> tuple[QueueLink, QueueLink]:
        a: queue.Queue[list[torch.Tensor]] = queue.Queue()
        b: queue.Queue[list[torch.Tensor]] = queue.Queue()
        return cls(a, b, timeout_s), cls(b, a, timeout_s)

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        self.outbox.put([t.clone() for t in tensors])

    def recv(self, specs: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> Pending:
        # one message per send: a header, a request or a reply
        return _QueuePending(self.inbox, [(tuple(s), d) for s, d in specs], self.timeout_s)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# The sequences of a greedy generation
# --------------------------------------------------------------------------------------------


class _Sequences:
    """Token lists, block tables and cached counts of a batch of sequences on one KV cache."""

    def __init__(self, model: CausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.block_size = 16
        longest = max(len(p) for p in prompts) + max_new_tokens
        if longest > model.config.max_position_embeddings:
            raise ValueError(
                f"a prompt of {longest - max_new_tokens} tokens + {max_new_tokens} new ones is "
                f"longer than the model's context ({model.config.max_position_embeddings})"
            )
        per = -(-longest // self.block_size)
        self.kv: KVCache = model.allocate_kv_cache(len(prompts) * per, self.block_size)
        self.tables = [list(range(i * per, (i + 1) * per)) for i in range(len(prompts))]
        self.tokens = [list(p) for p in prompts]
        self.cached = [0] * len(prompts)
        self.device = model.device

    def batch(self, rows: range) -> ForwardBatch:
        """The new tokens of sequences ``rows`` (the prompt, or the last token)."""
        return ForwardBatch.build(
            [self.tokens[r][self.cached[r] :] for r in rows],
            [self.cached[r] for r in rows],
            [self.tables[r] for r in rows],
            self.block_size,
            device=self.device,
        )

    def advance(self, rows: range, next_tokens: list[int]) -> None:
        for r, tok in zip(rows, next_tokens, strict=True):
            self.cached[r] = len(self.tokens[r])
            self.tokens[r].append(tok)


@dataclass
class Generation:
    """What a greedy generation produced: the new tokens of each sequence, the logits of every
    step ``[steps][B, vocab]``, the decode time (steps after the prefill) and, for the
    disaggregated run, the attention side's timeline."""

    tokens: list[list[int]]
    logits: list[torch.Tensor]
    decode_s: float
    decode_tokens: int
    timeline: list[Slot] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


def _greedy(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    step: Callable[[_Sequences], torch.Tensor],
) -> Generation:
    """Greedy generation: ``step(seqs)`` gives each sequence's next-token logits ``[B, V]``;
    the decode time counts every step after the first (the prefill)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    seqs = _Sequences(model, prompts, max_new_tokens)
    rows = range(len(prompts))
    logits_per_step: list[torch.Tensor] = []
    decode_start = 0.0
    with torch.inference_mode():
        for i in range(max_new_tokens):
            if i == 1:
                decode_start = time.perf_counter()
            logits = step(seqs)
            logits_per_step.append(logits)
            seqs.advance(rows, logits.argmax(dim=-1).tolist())
    decode_s = time.perf_counter() - decode_start if max_new_tokens > 1 else 0.0
    return Generation(
        [s[len(p) :] for s, p in zip(seqs.tokens, prompts, strict=True)],
        logits_per_step,
        decode_s,
        (max_new_tokens - 1) * len(prompts),
    )


def colocated_generate(
    model: CausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> Generation:
    """Greedy generation with the whole model in this process (the reference)."""

    def step(seqs: _Sequences) -> torch.Tensor:
        fb = seqs.batch(range(len(prompts)))
        hidden = model(fb, seqs.kv)
        return model.compute_logits(hidden[fb.last_token_rows()])

    return _greedy(model, prompts, max_new_tokens, step)


# --------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------


def _moe_layers(model: CausalLM) -> list[MixtralDecoderLayer]:
    layers = [layer for layer in model.layers if isinstance(layer, MixtralDecoderLayer)]
    if len(layers) != len(model.layers) or not all(
        isinstance(layer.moe, SparseMoE) for layer in layers
    ):
        raise TypeError(
            f"{type(model).__name__}: disaggregation needs every layer to be a Mixtral layer "
            "with a SparseMoE (a Mixtral-family model)"
        )
    return layers


class AttentionSide:
    """The attention side of a disaggregated Mixtral-family ``model``: runs everything but
    the experts, and asks the expert side behind ``link`` for each layer's expert output.

    ``generate(prompts, n, m)`` greedily generates ``n`` tokens per prompt with the batch split
    into ``m`` micro-batches (the prefill too); ``stop()`` ends the expert side's loop. The
    experts of ``model`` are not used here (they may be dropped).
    """

    def __init__(self, model: CausalLM, link: SideLink) -> None:
        self.model, self.link = model, link
        self.layers = _moe_layers(model)
        self.top_k = self.layers[0].moe.top_k
        self.runs = 0

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, m: int) -> Generation:
        groups = micro_batches(len(prompts), m)
        run, self.runs = self.runs, self.runs + 1
        timeline: list[Slot] = []
        out = _greedy(
            self.model,
            prompts,
            max_new_tokens,
            lambda seqs: self._step(seqs, groups, run, timeline),
        )
        out.timeline = timeline
        return out

    def _step(
        self, seqs: _Sequences, groups: list[range], run: int, timeline: list[Slot]
    ) -> torch.Tensor:
        model, d = self.model, self.model.config.hidden_size
        batches = [seqs.batch(g) for g in groups]
        ctxs = [
            ForwardContext(
                fb, seqs.kv, None, model.attention_backend(), rope=model.rotary_emb(fb.positions)
            )
            for fb in batches
        ]
        hidden = [model.embed_tokens(fb.input_ids) for fb in batches]
        pending: list[Pending | None] = [None] * len(groups)
        for li, layer in enumerate(self.layers):
            for i, ctx in enumerate(ctxs):
                h, reply = hidden[i], pending[i]
                if reply is not None:
                    h = h + reply.wait()[0]
                start = time.perf_counter()
                h = h + layer.self_attn(layer.input_layernorm(h), ctx)
                x = layer.post_attention_layernorm(h)
                weights, chosen = route(layer.moe.gate, x, self.top_k)
                timeline.append(Slot(ATTENTION, li, i, start, time.perf_counter()))
                hidden[i] = h
                rows = x.shape[0]
                header = torch.tensor([_WORK, rows, li, i, run], dtype=torch.long)
                self.link.send([header])
                self.link.send([x, chosen, weights])
                pending[i] = self.link.recv([((rows, d), x.dtype)])
        logits = []
        for i, fb in enumerate(batches):
            reply = pending[i]
            assert reply is not None  # every micro-batch went through the last layer
            h = hidden[i] + reply.wait()[0]
            logits.append(model.compute_logits(model.norm(h)[fb.last_token_rows()]))
        self.link.flush()
        return torch.cat(logits)

    def stop(self) -> None:
        """Tell the expert side to return from :meth:`ExpertSide.serve`."""
        self.link.send([torch.tensor([_STOP, 0, 0, 0, 0], dtype=torch.long)])
        self.link.flush()


class ExpertSide:
    """The expert side of a disaggregated Mixtral-family ``model``: holds every layer's
    experts and answers the attention side's requests in arrival order until it sends stop.

    ``timeline[run]`` lists the :class:`~core.sim.pingpong.Slot` of each expert computation
    of the attention side's ``run``-th generation. Only the experts of ``model`` are used.
    """

    def __init__(self, model: CausalLM, link: SideLink) -> None:
        self.link = link
        self.experts = [layer.moe.experts for layer in _moe_layers(model)]
        self.hidden_size, self.dtype = model.config.hidden_size, model.dtype
        self.top_k = _moe_layers(model)[0].moe.top_k
        self.timeline: dict[int, list[Slot]] = {}

    def serve(self) -> None:
        k, d = self.top_k, self.hidden_size
        with torch.inference_mode():
            while True:
                (header,) = self.link.recv([((_HEADER,), torch.long)]).wait()
                kind, rows, layer, mb, run = header.tolist()
                if kind == _STOP:
                    self.link.flush()
                    return
                x, chosen, weights = self.link.recv(
                    [((rows, d), self.dtype), ((rows, k), torch.long), ((rows, k), torch.float32)]
                ).wait()
                start = time.perf_counter()
                out = run_experts(self.experts[layer], x, chosen, weights)
                self.timeline.setdefault(run, []).append(
                    Slot(EXPERT, layer, mb, start, time.perf_counter())
                )
                self.link.send([out])
                self.link.flush()


def serve_in_thread(side: ExpertSide) -> threading.Thread:
    """Run ``side.serve()`` on a daemon thread (with a :class:`QueueLink`, for tests)."""
    thread = threading.Thread(target=side.serve, daemon=True, name="expert-side")
    thread.start()
    return thread


def disaggregated_benchmark(
    comm: Comm,
    config: dict[str, Any],
    seed: int,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    ms: Sequence[int],
    rounds: int = 1,
) -> dict[str, Any]:
    """One rank of the real-mode benchmark on a 2-rank group (run it with
    ``LocalGroup.run``): both ranks build the same random Mixtral-family model from the HF
    ``config`` dict and ``seed``; rank 1 serves the experts, rank 0 runs, in each of ``rounds``
    rounds, the colocated reference and then the disaggregated generation with each ``m`` of
    ``ms`` (interleaved, so load changes hit all alike).

    Rank 0 returns ``{"rows": [...], "timeline": [...]}``: per run its round, ``m`` (0 for
    colocated), decode tokens/s, whether its tokens equal the colocated ones of the same round
    and the largest logit difference; its attention slots as dicts with a ``run`` key. Rank 1
    returns ``{"timeline": [...]}``, its expert slots alike.
    """
    from dataclasses import asdict

    from core.model.checkpoint import build_random_model
    from core.model.config import config_from_hf

    if comm.world_size != 2:
        raise ValueError(f"the disaggregated benchmark runs on 2 ranks, got {comm.world_size}")
    model = build_random_model(config_from_hf(dict(config)), seed=seed)
    if comm.rank == 1:
        expert = ExpertSide(model, DistLink(comm, 0))
        expert.serve()
        slots = [asdict(s) | {"run": run} for run, ss in expert.timeline.items() for s in ss]
        return {"timeline": slots}
    side = AttentionSide(model, DistLink(comm, 1))
    rows: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            ref = colocated_generate(model, prompts, max_new_tokens)
            rows.append(
                {"round": r, "m": 0, "run": -1, "tokens_per_s": ref.decode_tokens_per_s,
                 "tokens_equal": True, "max_logit_diff": 0.0}
            )  # fmt: skip
            for m in ms:
                run = side.runs
                got = side.generate(prompts, max_new_tokens, m)
                diff = max(
                    (a - b).abs().max().item() for a, b in zip(got.logits, ref.logits, strict=True)
                )
                rows.append(
                    {"round": r, "m": m, "run": run, "tokens_per_s": got.decode_tokens_per_s,
                     "tokens_equal": got.tokens == ref.tokens, "max_logit_diff": diff}
                )  # fmt: skip
                timeline += [asdict(s) | {"run": run} for s in got.timeline]
    finally:
        side.stop()
    return {"rows": rows, "timeline": timeline}
