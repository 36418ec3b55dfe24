"""The zoo models behind SpecReason's loop, each in its own serving engine with prefix caching:
greedy step writing (:class:`EngineModel`) and the large model's step likelihood read from the
judge's one prefill (:class:`StepScorer`).

The engine's prompt log-probabilities (``SamplingParams(prompt_logprobs=...)``) recompute the
whole prompt, as vLLM's do: such a request gets no prefix-cache hit, which would make every
judge prefill recompute the history. So :class:`StepScorer` taps the runner instead: it keeps
the hidden states of the chunks of the requests it scores and turns only their rows into
log-probabilities. The judge request is an ordinary one-token request, so its history is read
from (and its step written to) the prefix cache.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.data import REPO_ROOT, track_data_file
from core.engine import LLM, SamplingParams
from core.engine.engine import RequestOutput

from .reason import Event, Generation

SMALL_ENV, LARGE_ENV = "SPECREASON_SMALL", "SPECREASON_LARGE"
NEWLINE = "\n"


def model_dirs() -> tuple[Path, Path]:
    """The small and large zoo model folders: ``data/models/zoo-{small,large}`` unless
    ``$SPECREASON_SMALL`` / ``$SPECREASON_LARGE`` name others."""
    small = os.environ.get(SMALL_ENV) or REPO_ROOT / "data" / "models" / "zoo-small"
    large = os.environ.get(LARGE_ENV) or REPO_ROOT / "data" / "models" / "zoo-large"
    return Path(small), Path(large)


def missing_models() -> str:
    """Why the trained models cannot be used ('' when both folders hold a checkpoint)."""
    missing = [str(d) for d in model_dirs() if not (d / "config.json").is_file()]
    if not missing:
        return ""
    return (
        f"no trained zoo model at {', '.join(missing)} (ship data/models/zoo-small and "
        f"zoo-large, or point ${SMALL_ENV} / ${LARGE_ENV} at checkpoint folders)"
    )


def track_model(directory: Path) -> None:
    """Record the checkpoint's files in the provenance."""
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if (directory / name).is_file():
            track_data_file(directory / name)


def make_llm(
    model: str | Path | dict[str, Any], draft: str | Path | None = None, k: int = 4
) -> LLM:
    """An engine for batch-size-one reasoning: prefix caching on, and token-level speculation
    with ``draft`` (a draft model folder) proposing ``k`` tokens when given."""
    spec = {"model": str(draft), "num_speculative_tokens": k} if draft is not None else None
    return LLM(
        str(model) if isinstance(model, Path) else model,
        kv_cache_memory=32 * 2**20,
        max_num_seqs=4,
        max_num_batched_tokens=1024,
        enable_prefix_caching=True,
        speculative_config=spec,
    )


_ids = itertools.count()


def _run(llm: LLM, ids: Sequence[int], params: SamplingParams, rid: str) -> RequestOutput:
    """One request through ``llm``'s engine under our own id (the scorer finds it by id)."""
    engine = llm.engine
    engine.add_request(rid, list(ids), params, eos_token_id=llm.eos_token_id)
    while not engine.request(rid).is_finished:
        engine.step()
    out = RequestOutput.from_request(engine.request(rid))
    engine.drop(rid)
    if out.finish_reason == "error":
        raise ValueError(f"request {rid}: {out.error}")
    return out


class EngineModel:
    """A :class:`~.reason.StepModel` over an :class:`LLM`: greedy, a step ends at the newline
    token (or EOS). Events come from the engine's own accounting (prefix-cache hit, draft and
    accepted token counts)."""

    def __init__(self, name: str, llm: LLM, newline_id: int) -> None:
        self.name = name
        self.llm = llm
        self.newline_id = newline_id
        self.eos_ids = set(
            [llm.eos_token_id] if isinstance(llm.eos_token_id, int) else llm.eos_token_id or []
        )

    def write(self, ids: Sequence[int], max_tokens: int, *, step: bool) -> Generation:
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            stop_token_ids=(self.newline_id,) if step else (),
        )
        out = _run(self.llm, ids, params, f"{self.name}-{next(_ids)}")
        n, cached = len(out.token_ids), out.num_cached_tokens
        events = [Event(self.name, "prefill", len(ids) - cached, cached)]
        drafts = int(out.metrics.get("num_draft_tokens", 0) or 0)
        accepted = int(out.metrics.get("num_accepted_tokens", 0) or 0)
        if n > 1:
            if drafts:
                # each verify step yields its accepted drafts plus one token of the target
                steps = max(n - 1 - accepted, 1)
                events.append(
                    Event(self.name, "verify", steps, len(ids) + n // 2, round(drafts / steps))
                )
            else:
                events.append(Event(self.name, "decode", n - 1, len(ids)))
        finished = bool(out.token_ids) and out.token_ids[-1] in self.eos_ids
        return Generation(list(out.token_ids), events, finished, drafts, accepted)


class StepScorer:
    """The large model's log-probability of each token of a step after a history, from one
    prefill of ``history + step`` in ``llm``'s engine (the history's cached blocks are reused;
    positions inside a cache hit are not recomputed, so the step's first token is scored only
    when the hit ends before it; a step a previous request already cached is scored on the
    positions the prefill recomputes only)."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        runner = llm.engine.runner
        self._model = runner.model
        self._chunks: list[Any] = []
        self._wanted: dict[str, tuple[list[int], int]] = {}
        self._got: dict[str, dict[int, float]] = {}
        execute = runner.execute

        def tapped_execute(out: Any) -> Any:
            self._chunks = list(out.chunks)
            return execute(out)

        runner.execute = tapped_execute
        runner.model = _HiddenTap(self._model, self)

    def logprobs(self, history: Sequence[int], step: Sequence[int]) -> tuple[list[float], int]:
        """Log-probabilities of ``step``'s tokens (those the prefill computed) and the number
        of cached tokens the prefill skipped."""
        ids = list(history) + list(step)
        rid = f"judge-{next(_ids)}"
        self._wanted[rid] = (ids, len(history))
        self._got[rid] = {}
        try:
            out = _run(self.llm, ids, SamplingParams(temperature=0.0, max_tokens=1), rid)
        finally:
            self._wanted.pop(rid)
        got = self._got.pop(rid)
        return [got[p] for p in sorted(got)], out.num_cached_tokens

    def collect(self, batch: Any, hidden: torch.Tensor) -> None:
        starts = batch.query_start_loc.tolist()
        for i, chunk in enumerate(self._chunks):
            want = self._wanted.get(chunk.request.request_id)
            if want is None:
                continue
            ids, first = want
            lo, n = starts[i], starts[i + 1] - starts[i]
            # row r holds position chunk.start + r, whose logits predict token position + 1
            rows = [r for r in range(n) if first <= chunk.start + r + 1 < len(ids)]
            if not rows:
                continue
            logits = self._model.compute_logits(hidden[[lo + r for r in rows]]).float()
            logp = torch.log_softmax(logits, -1)
            targets = torch.tensor([ids[chunk.start + r + 1] for r in rows])
            picked = logp[torch.arange(len(rows)), targets].tolist()
            for r, lp in zip(rows, picked, strict=True):
                self._got[chunk.request.request_id][chunk.start + r + 1] = lp


class _HiddenTap:
    """The runner's model, passing the hidden states of each forward to the scorer."""

    def __init__(self, model: Any, scorer: StepScorer) -> None:
        self._inner = model
        self._scorer = scorer

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden = self._inner(batch, *args, **kwargs)
        if self._scorer._wanted:
            self._scorer.collect(batch, hidden)
        return hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
