"""Per-request sampling parameters and the batched sampler that turns logits into tokens.

:class:`SamplingParams` carries vLLM's field names and meanings, so a request written for vLLM
means the same here. :class:`Sampler` samples one token per row of a ``[N, vocab]`` logits
tensor, each row with its own parameters, on whatever device the logits live on.

Order of operations for one row (vLLM v1 order)
-----------------------------------------------
1. ``logprobs`` (if requested) from the *raw* ``log_softmax`` of the logits, before anything
   below touches them (vLLM v1's default ``logprobs_mode="raw_logprobs"``): they describe the
   model, not the filtered distribution the token was drawn from.
2. ``min_tokens``: stop/EOS ids get ``-inf`` while the row is still short of ``min_tokens``
   (only when the caller passes ``output_lens``; see :func:`apply_min_tokens`).
3. Greedy rows (``temperature < SAMPLING_EPS``): ``argmax``, ties to the lowest token id.
4. Random rows: divide by ``temperature``, keep the top-k logits, keep the top-p nucleus of
   what is left (:func:`apply_top_k_top_p`), then draw with the exponential race (the
   Gumbel-max trick): ``argmax(probs / E)`` with ``E ~ Exp(1)`` i.i.d. per token is an exact
   draw from ``probs``, and needs one batched ``argmax`` instead of a per-row ``multinomial``.

Reproducibility
---------------
A row whose request has a ``seed`` draws its noise from its own ``torch.Generator`` (made by
:meth:`SamplingParams.new_generator`, owned by the caller, advanced by exactly one
``vocab``-sized draw per random sampling step of that request and by nothing else). Every other
operation on a row is row-local, so a seeded request gets the same tokens whichever requests
share its batch and in whatever order. Unseeded rows share one generator per device, seeded
from the sampler's ``seed``, so a whole run is reproducible from the engine seed (given the
same batches). Streams are reproducible per device type: a CPU and a CUDA generator with the
same seed give different numbers.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SAMPLING_EPS",
    "Logprob",
    "PromptLogprobs",
    "SampleLogprobs",
    "Sampler",
    "SamplerOutput",
    "SamplingParams",
    "SamplingType",
    "apply_min_tokens",
    "apply_top_k_top_p",
    "prompt_logprob_entries",
]

SAMPLING_EPS = 1e-5
"""Temperatures below this are greedy (vLLM's ``_SAMPLING_EPS``)."""

_MAX_SEED = 2**64  # torch.Generator.manual_seed accepts [0, 2**64) without wrapping


class SamplingType(enum.IntEnum):
    """How a row is sampled: argmax, random from the shared generator, or from its own."""

    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a token id or a count is always a bug.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request's output tokens (vLLM field names and semantics).

    Attributes:
        temperature: divides the logits before sampling; ``0`` (anything below
            :data:`SAMPLING_EPS`) means greedy, and then ``top_k``/``top_p`` are ignored (they
            are normalized to "disabled", as vLLM does). Finite and ``>= 0``.
        top_p: nucleus sampling: keep the smallest set of most-likely tokens whose probability
            mass (after temperature and top-k) is ``>= top_p``; the most likely token is always
            kept. In ``(0, 1]``; ``1`` disables it.
        top_k: keep only the ``top_k`` highest logits (all tokens tied with the k-th are kept).
            ``0`` disables it; ``-1`` is accepted as vLLM's older spelling of "disabled" and
            normalized to ``0``. Values above the vocabulary size mean the whole vocabulary.
        max_tokens: the most output tokens to generate, ``>= 1``.
        stop_token_ids: extra token ids that end the request (besides the model's EOS); the
            stop token is part of the output. Stored as a tuple of ints ``>= 0``.
        ignore_eos: keep generating after EOS (only ``max_tokens`` or ``stop_token_ids`` stop).
        seed: if set, the request draws from its own generator seeded with it, so its tokens do
            not depend on what else is in the batch. An int in ``[0, 2**64)``.
        logprobs: ``None`` returns no logprobs; ``k >= 0`` returns the sampled token's logprob
            and the ``k`` most likely tokens with theirs (from the raw model distribution).
        min_tokens: EOS and ``stop_token_ids`` cannot be sampled before this many output tokens
            exist. In ``[0, max_tokens]``.
        prompt_logprobs: ``None`` returns none; ``k >= 0`` returns, per prompt token after the
            first, its logprob under the model given the tokens before it and the ``k`` most
            likely tokens there (``-1``: the whole vocabulary), as vLLM does
            (:class:`PromptLogprobs`). Such a request gets no prefix-cache hit: every prompt
            position's logits are computed (vLLM's rule).

    Instances are immutable (validated once, safe to share between requests); derive variants
    with :func:`dataclasses.replace`, which validates again. Bad values raise ``ValueError``
    naming the field and the value.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    min_tokens: int = 0
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if not _is_real(self.temperature) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be 0 or -1 (disabled) or >= 1, got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an int >= 0, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens={self.max_tokens}, got {self.min_tokens!r}"
            )
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or an int >= 0, got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (
            not _is_int(self.prompt_logprobs) or self.prompt_logprobs < -1
        ):
            raise ValueError(
                "prompt_logprobs must be None, -1 (the whole vocabulary) or an int >= 0, "
                f"got {self.prompt_logprobs!r}"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < _MAX_SEED):
            raise ValueError(f"seed must be None or an int in [0, 2**64), got {self.seed!r}")
        if self.ignore_eos not in (True, False):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        stop_ids = self.stop_token_ids
        if isinstance(stop_ids, (str, bytes)) or not isinstance(stop_ids, Iterable):
            raise ValueError(f"stop_token_ids must be a sequence of ints, got {stop_ids!r}")
        stop_ids = list(stop_ids)  # once: it may be an iterator
        if not all(_is_int(t) and t >= 0 for t in stop_ids):
            raise ValueError(f"stop_token_ids must contain only ints >= 0, got {stop_ids!r}")

        # Normalize so downstream code tests one spelling (frozen: bypass __setattr__).
        set_ = object.__setattr__
        set_(self, "stop_token_ids", tuple(int(t) for t in dict.fromkeys(stop_ids)))
        if self.top_k == -1:
            set_(self, "top_k", 0)
        if self.temperature < SAMPLING_EPS:
            set_(self, "top_k", 0)
            set_(self, "top_p", 1.0)

    @property
    def sampling_type(self) -> SamplingType:
        """GREEDY below :data:`SAMPLING_EPS`, else RANDOM_SEED if ``seed`` is set, else RANDOM."""
        if self.temperature < SAMPLING_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM if self.seed is None else SamplingType.RANDOM_SEED

    @property
    def is_greedy(self) -> bool:
        """Whether the request takes the argmax (no randomness, no generator consumed)."""
        return self.sampling_type is SamplingType.GREEDY

    def all_stop_token_ids(self, eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
        """The ids that end this request: ``stop_token_ids`` plus EOS unless ``ignore_eos``.

        ``eos_token_id`` is the model's EOS id, several ids (some models have more than one),
        or ``None``. This is the set :func:`apply_min_tokens` blocks.
        """
        ids = set(self.stop_token_ids)
        if not self.ignore_eos and eos_token_id is not None:
            if isinstance(eos_token_id, Iterable):
                ids.update(eos_token_id)
            elif _is_int(eos_token_id):
                ids.add(eos_token_id)
            else:
                raise TypeError(f"eos_token_id must be an int or ints, got {eos_token_id!r}")
        return frozenset(int(t) for t in ids)

    def new_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A fresh generator on ``device`` seeded with ``seed`` (``None`` if unseeded).

        The caller makes it once per request, keeps it with the request and passes it to
        :meth:`Sampler.sample` at every step; the sampler advances it in place.
        """
        if self.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return generator


@dataclass(frozen=True)
class SampleLogprobs:
    """Logprobs for one sampled token, from the raw model distribution (before temperature).

    Attributes:
        token_id: the sampled token.
        logprob: its log-probability, ``log_softmax(logits)[token_id]``.
        rank: 1 + the number of tokens strictly more likely than it (1 = the argmax).
        top: the ``SamplingParams.logprobs`` most likely ``(token_id, logprob)`` pairs, most
            likely first (length ``min(k, vocab)``); may or may not contain ``token_id``.
    """

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]


@dataclass
class Logprob:
    """One token's log-probability at one position (vLLM's ``Logprob``): ``logprob``, its
    ``rank`` (1 = the most likely; vLLM's count of tokens at least as likely, itself included)
    and ``decoded_token`` (its text, filled in by :class:`~core.engine.LLM` when the model
    has a tokenizer, else None)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[int, Logprob] | None]
"""``RequestOutput.prompt_logprobs``: one entry per prompt token, None for the first (nothing
predicts it); entry ``i`` maps token ids to their :class:`Logprob` under the distribution
after tokens ``0 .. i - 1``: the prompt token ``i`` first, then the top-k (vLLM's shape; a
prompt token among the top-k appears once)."""


def prompt_logprob_entries(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> list[dict[int, Logprob]]:
    """For each row of ``logits`` (``[n, vocab]``, the model's output at a prompt position),
    the :class:`PromptLogprobs` entry of the token that follows there (``token_ids`` ``[n]``):
    its raw ``log_softmax`` logprob and rank, then the ``num_top`` most likely tokens
    (``-1``: all of them)."""
    logprobs = logits.float().log_softmax(dim=-1)
    vocab = logprobs.shape[-1]
    chosen = logprobs.gather(1, token_ids.view(-1, 1))
    ranks = (logprobs >= chosen).sum(dim=-1).tolist()
    k = vocab if num_top < 0 else min(num_top, vocab)
    n = token_ids.shape[0]
    if k:
        top_vals, top_ids = logprobs.topk(k, dim=-1)
        tops = zip(top_ids.tolist(), top_vals.tolist(), strict=True)
    else:
        tops = zip([[]] * n, [[]] * n, strict=True)
    entries = []
    mine = zip(token_ids.tolist(), chosen.squeeze(1).tolist(), ranks, strict=True)
    for (tid, lp, rank), (ids, vals) in zip(mine, tops, strict=True):
        entry = {tid: Logprob(lp, rank)}
        for r, (t, v) in enumerate(zip(ids, vals, strict=True), start=1):
            if t != tid:
                entry[t] = Logprob(v, r)
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class SamplerOutput:
    """What :meth:`Sampler.sample` returns for a batch of ``N`` rows.

    Attributes:
        sampled_token_ids: ``[N]`` int64 on the logits' device.
        logprobs: ``N`` entries, :class:`SampleLogprobs` for rows whose params ask for logprobs
            and ``None`` for the others.
    """

    sampled_token_ids: torch.Tensor
    logprobs: list[SampleLogprobs | None]


def _min_tokens_targets(
    params: Sequence[SamplingParams],
    output_lens: Sequence[int],
    eos_token_id: int | Iterable[int] | None,
    vocab_size: int,
) -> tuple[list[int], list[int]]:
    """(row, token) pairs that must be blocked this step for ``min_tokens``."""
    if len(output_lens) != len(params):
        raise ValueError(
            f"output_lens has {len(output_lens)} entries for {len(params)} sampling params"
        )
    rows: list[int] = []
    cols: list[int] = []
    for row, (sp, num_out) in enumerate(zip(params, output_lens, strict=True)):
        if num_out >= sp.min_tokens:
            continue
        # Ids beyond the logits cannot be sampled anyway, so there is nothing to block.
        ids = [t for t in sp.all_stop_token_ids(eos_token_id) if t < vocab_size]
        rows.extend([row] * len(ids))
        cols.extend(ids)
    return rows, cols


def apply_min_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    output_lens: Sequence[int],
    eos_token_id: int | Iterable[int] | None,
) -> torch.Tensor:
    """Set the stop/EOS logits to ``-inf`` for rows with fewer than ``min_tokens`` outputs.

    Row ``i`` is blocked iff ``output_lens[i] < params[i].min_tokens``; the blocked ids are
    :meth:`SamplingParams.all_stop_token_ids` of ``eos_token_id`` (so ``ignore_eos`` rows leave
    EOS alone: it would not stop them). ``output_lens[i]`` counts the row's output tokens so
    far, excluding the one about to be sampled. Ids ``>= vocab`` are skipped. Modifies
    ``logits`` (``[N, vocab]``) in place and returns it.
    """
    rows, cols = _min_tokens_targets(params, output_lens, eos_token_id, logits.shape[-1])
    if rows:
        device = logits.device
        logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = -math.inf
    return logits


def apply_top_k_top_p(
    logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None
) -> torch.Tensor:
    """Mask ``logits`` (``[N, vocab]``) to each row's top-k, then to its top-p nucleus.

    ``k`` is ``[N]`` int64 (``<= 0`` or ``>= vocab`` disables the row's top-k); ``p`` is ``[N]``
    float (``>= 1`` disables). ``None`` disables a filter for every row. Filtered tokens become
    ``-inf``. Top-k keeps every logit ``>=`` the row's k-th largest (ties at the cut survive,
    as in vLLM, so the kept set depends only on the row's values). Top-p is applied to the
    softmax of what top-k kept and keeps token ``j`` (in descending order) iff the mass of the
    tokens before it is ``< p``: the smallest prefix with mass ``>= p``, never empty. Ties in
    probability at the nucleus edge are broken by token id (stable sort), so the result is a
    function of the row alone. May modify ``logits`` in place; returns the masked tensor.
    """
    if p is None:
        return logits if k is None else _apply_top_k_only(logits, k)
    vocab = logits.shape[-1]
    # One stable descending sort serves both filters; scattered back at the end. (A cheaper
    # topk(k)-then-sort shortcut for rows with both filters would break ties differently from
    # rows without top-k, and so make a seeded row depend on its batch neighbours.)
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    if k is not None:
        k = torch.where((k <= 0) | (k > vocab), vocab, k).to(torch.long)
        kth = sorted_logits.gather(1, (k - 1).unsqueeze(1))
        sorted_logits.masked_fill_(sorted_logits < kth, -math.inf)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # p == 1 rows are skipped outright: fp32 cumsum can exceed 1 and clip a real tail token.
    drop = (mass_before >= p.unsqueeze(1)) & (p < 1).unsqueeze(1)
    drop[:, 0] = False
    sorted_logits.masked_fill_(drop, -math.inf)
    return logits.scatter_(1, order, sorted_logits)


def _apply_top_k_only(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Top-k without a full sort: ``topk(max k)`` on the rows that use it (vocab >> k)."""
    vocab = logits.shape[-1]
    rows = ((k > 0) & (k < vocab)).nonzero().squeeze(1)
    if rows.numel() == 0:
        return logits
    row_k = k[rows].to(torch.long)
    sub = logits[rows]
    kth = sub.topk(int(row_k.max()), dim=-1).values.gather(1, (row_k - 1).unsqueeze(1))
    logits[rows] = sub.masked_fill(sub < kth, -math.inf)
    return logits


class Sampler:
    """Samples one token per row of a ``[N, vocab]`` logits batch, each with its own params.

    See the module docstring for the order of operations and the reproducibility contract.
    Greedy-only batches take one ``argmax`` (no per-row Python work beyond reading params);
    random rows are filtered with per-row ``k``/``p``/temperature tensors in one vectorized
    pass, and only the noise draw loops, over rows that bring their own generator.

    Args:
        seed: seeds the generator shared by unseeded random rows (one per device, made on first
            use), normally the engine's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        if not _is_int(seed) or not 0 <= seed < _MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The shared generator for unseeded rows on ``device`` (created on first use)."""
        device = torch.device(device)
        if device not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return self._generators[device]

    @torch.no_grad()
    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None] | None = None,
        *,
        output_lens: Sequence[int] | None = None,
        eos_token_id: int | Iterable[int] | None = None,
    ) -> SamplerOutput:
        """Sample a token for every row of ``logits``.

        Args:
            logits: ``[N, vocab]``, any device; cast to float32 if needed. Not modified.
            params: ``N`` sampling params, row ``i`` sampled with ``params[i]``.
            generators: ``N`` entries (or ``None`` for all-``None``): row ``i``'s own generator,
                on the logits' device, or ``None`` to use :meth:`generator`. Every random row
                whose params have a ``seed`` must bring one (else ``ValueError``), normally
                ``params[i].new_generator(device)`` kept across steps. Greedy rows never
                touch theirs.
            output_lens: if given, row ``i``'s output length so far, for ``min_tokens``
                (:func:`apply_min_tokens`, applied after the raw logprobs are taken).
            eos_token_id: the model's EOS id(s), blocked by ``min_tokens`` with the stop ids.

        Returns:
            A :class:`SamplerOutput` with ``[N]`` int64 token ids on the logits' device.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be [N, vocab], got shape {tuple(logits.shape)}")
        num_rows, vocab = logits.shape
        if len(params) != num_rows:
            raise ValueError(f"got {len(params)} sampling params for {num_rows} logits rows")
        if generators is None:
            generators = [None] * num_rows
        elif len(generators) != num_rows:
            raise ValueError(f"got {len(generators)} generators for {num_rows} logits rows")
        logits = logits.float()  # no copy when already fp32; we never write into it

        want_logprobs = [i for i, sp in enumerate(params) if sp.logprobs is not None]
        raw_logprobs = logits[want_logprobs].log_softmax(dim=-1) if want_logprobs else None

        if output_lens is not None:
            rows, cols = _min_tokens_targets(params, output_lens, eos_token_id, vocab)
            if rows:
                logits = logits.clone()
                rows_t = torch.tensor(rows, device=logits.device)
                logits[rows_t, torch.tensor(cols, device=logits.device)] = -math.inf

        random_rows = [i for i, sp in enumerate(params) if not sp.is_greedy]
        for i in random_rows:
            if params[i].seed is not None and generators[i] is None:
                raise ValueError(
                    f"row {i} has seed={params[i].seed} but no generator; pass "
                    "params.new_generator(device) and keep it with the request"
                )
        if len(random_rows) == num_rows:
            sampled = self._sample_random(logits, params, generators)
        else:
            sampled = logits.argmax(dim=-1)
            if random_rows:
                idx = torch.tensor(random_rows, device=logits.device)
                sampled[idx] = self._sample_random(
                    logits[idx],
                    [params[i] for i in random_rows],
                    [generators[i] for i in random_rows],
                )

        out_logprobs: list[SampleLogprobs | None] = [None] * num_rows
        if raw_logprobs is not None:
            num_top = [params[i].logprobs or 0 for i in want_logprobs]
            entries = _gather_logprobs(raw_logprobs, sampled[want_logprobs], num_top)
            for i, entry in zip(want_logprobs, entries, strict=True):
                out_logprobs[i] = entry
        return SamplerOutput(sampled_token_ids=sampled, logprobs=out_logprobs)

    __call__ = sample

    def _sample_random(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        """Temperature, top-k, top-p, then a Gumbel-max draw; all rows are random rows."""
        device = logits.device
        vocab = logits.shape[-1]
        temps = torch.tensor([sp.temperature for sp in params], dtype=torch.float32, device=device)
        scaled = logits / temps.unsqueeze(1)  # a fresh tensor: the filters may write into it
        # Pass a filter only if some row uses it: a sort over the vocabulary is the cost here.
        k = p = None
        if any(0 < sp.top_k < vocab for sp in params):
            k = torch.tensor([sp.top_k for sp in params], dtype=torch.long, device=device)
        if any(sp.top_p < 1.0 for sp in params):
            p = torch.tensor([sp.top_p for sp in params], dtype=torch.float32, device=device)
        scaled = apply_top_k_top_p(scaled, k, p)

        noise = torch.empty_like(scaled)
        own = [i for i, g in enumerate(generators) if g is not None]
        if len(own) < len(generators):
            shared = self.generator(device)
            if not own:
                noise.exponential_(generator=shared)
            else:
                own_set = set(own)
                rest = [i for i in range(len(generators)) if i not in own_set]
                noise[rest] = torch.empty((len(rest), vocab), device=device).exponential_(
                    generator=shared
                )
        for i in own:
            # Each seeded row draws exactly `vocab` numbers from its own stream per step.
            noise[i].exponential_(generator=generators[i])
        # argmax(p / E) with E ~ Exp(1) is an exact draw from p (the exponential race). It
        # stays in probability space on purpose: softmax is computed row by row and division
        # is correctly rounded everywhere, whereas an elementwise log over the whole batch may
        # round a row's last elements differently (scalar tail vs SIMD body) depending on where
        # the row sits, which would break the batch-invariance of seeded rows. Masked tokens
        # have p == 0 exactly and E is clamped away from 0, so they can never win.
        probs = scaled.softmax(dim=-1)
        noise.clamp_min_(torch.finfo(noise.dtype).tiny)
        return probs.div_(noise).argmax(dim=-1)


def _gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> list[SampleLogprobs]:
    """Per-row :class:`SampleLogprobs` from ``[M, vocab]`` logprobs, one device sync."""
    vocab = logprobs.shape[-1]
    chosen = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    ranks = (logprobs > chosen.unsqueeze(1)).sum(dim=-1) + 1
    max_top = min(max(num_top), vocab)
    if max_top > 0:
        top_vals, top_ids = logprobs.topk(max_top, dim=-1)
        top_vals_l, top_ids_l = top_vals.tolist(), top_ids.tolist()
    else:
        top_vals_l = top_ids_l = [[] for _ in num_top]
    out = []
    for row, (tid, lp, rank, n) in enumerate(
        zip(token_ids.tolist(), chosen.tolist(), ranks.tolist(), num_top, strict=True)
    ):
        top = tuple(zip(top_ids_l[row][:n], top_vals_l[row][:n], strict=True))
        out.append(SampleLogprobs(token_id=tid, logprob=lp, rank=rank, top=top))
    return out
