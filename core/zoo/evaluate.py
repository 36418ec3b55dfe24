"""Measuring zoo models: greedy answers through the serving engine, checked exactly; step
agreement between a small and a large model; how well a model's own probability of a step
tells right steps from wrong ones (the AUC SpecReason's judge relies on)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from core.model.base import CausalLM
from core.model.checkpoint import save_model
from core.model.training import dense_forward, dense_logits

from .tasks import (
    ANSWER_PREFIX,
    EOS,
    STEP_SEPARATOR,
    Example,
    check_answer,
    check_arith_step,
    split_steps,
)
from .tokenizer import PAD, save_tokenizer

__all__ = [
    "Completion",
    "accuracy_table",
    "auc",
    "export_model",
    "generate",
    "score_examples",
    "sequence_logprobs",
    "step_judgement",
    "token_agreement",
]


@dataclass(frozen=True)
class Completion:
    """A greedy completion: its text (EOS removed) and whether it ended with EOS."""

    text: str
    stopped: bool


def export_model(
    model: CausalLM,
    tok: Tokenizer,
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
    max_len: int = 512,
) -> Path:
    """Write ``model`` in ``dtype`` as a Hugging Face checkpoint folder with the tokenizer
    files and a ``generation_config.json`` (greedy, EOS), loadable by our engine and by
    transformers."""
    d = Path(directory)
    copy = model if dtype == model.dtype else _cast_copy(model, dtype)
    save_model(copy, d)
    save_tokenizer(tok, d, max_len)
    eos = tok.token_to_id(EOS)
    gen = {
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": tok.token_to_id(PAD),
        "do_sample": False,
    }
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return d


def _cast_copy(model: CausalLM, dtype: torch.dtype) -> CausalLM:
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(dtype).requires_grad_(False).eval()


def generate(
    model_dir: str | Path, prompts: Sequence[str], max_tokens: int | Sequence[int]
) -> list[Completion]:
    """Greedy completions of ``prompts`` by the serving engine (:class:`core.engine.LLM`)."""
    from core.engine import LLM, SamplingParams

    limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    llm = LLM(
        str(model_dir), kv_cache_memory=64 * 2**20, max_num_seqs=128, max_num_batched_tokens=4096
    )
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in limits]
    outs = llm.generate(list(prompts), params, use_tqdm=False)
    return [Completion(o.text or "", o.finish_reason == "stop") for o in outs]


def max_tokens_for(example: Example) -> int:
    """A generation limit that fits the reference with room to spare."""
    return {"arith": 16 * example.difficulty + 16, "retrieval": 8, "classify": 4}.get(
        example.task, 64
    )


def score_examples(model_dir: str | Path, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """One row per example: task, difficulty, whether the final answer is right (and the
    completion ended), and for arith the number of steps and of right steps."""
    comps = generate(model_dir, [e.prompt for e in examples], [max_tokens_for(e) for e in examples])
    rows = []
    for e, c in zip(examples, comps, strict=True):
        row = {
            "task": e.task,
            "difficulty": e.difficulty,
            "correct": c.stopped and check_answer(e, c.text + EOS),
        }
        if e.task == "arith":
            steps = split_steps(c.text)
            row["steps_right"] = sum(check_arith_step(e, i, s) for i, s in enumerate(steps))
            row["steps"] = e.difficulty
        rows.append(row)
    return rows


def accuracy_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{task: {difficulty: accuracy}}`` plus an ``"all"`` entry per task."""
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r["task"]][str(r["difficulty"])].append(r["correct"])
        groups[r["task"]]["all"].append(r["correct"])
    return {
        t: {
            d: sum(v) / len(v)
            for d, v in sorted(g.items(), key=lambda kv: (kv[0] == "all", kv[0].zfill(3)))
        }
        for t, g in groups.items()
    }


def evaluate_in_training(
    model: CausalLM, tok: Tokenizer, examples: Sequence[Example]
) -> dict[str, Any]:
    """Accuracy per task and difficulty of the model as it is now (exported to a temporary
    folder in fp32 and run by the engine)."""
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, tok, tmp)
        return {"accuracy": accuracy_table(score_examples(tmp, examples))}


def _pairs(
    tok: Tokenizer, prefixes: Sequence[str], continuations: Sequence[str]
) -> tuple[list[tuple[list[int], list[int]]], torch.Tensor]:
    """Each prefix and continuation tokenized alone, and their concatenations right-padded
    into one ``[B, L]`` tensor."""
    rows = [
        (tok.encode(p).ids, tok.encode(c).ids) for p, c in zip(prefixes, continuations, strict=True)
    ]
    ids = torch.zeros((len(rows), max(len(a) + len(b) for a, b in rows)), dtype=torch.long)
    for j, (a, b) in enumerate(rows):
        ids[j, : len(a) + len(b)] = torch.tensor(a + b)
    return rows, ids


def sequence_logprobs(
    model: CausalLM, tok: Tokenizer, prefixes: Sequence[str], continuations: Sequence[str]
) -> list[list[float]]:
    """Per-token log-probabilities the model gives each continuation after its prefix
    (teacher forced; both tokenized alone and concatenated, as in training)."""
    out: list[list[float]] = []
    for i in range(0, len(prefixes), 32):
        rows, ids = _pairs(tok, prefixes[i : i + 32], continuations[i : i + 32])
        with torch.no_grad():
            logp = F.log_softmax(dense_logits(model, dense_forward(model, ids)).float(), -1)
        for j, (a, b) in enumerate(rows):
            pos = torch.arange(len(a) - 1, len(a) + len(b) - 1)
            out.append(logp[j, pos, torch.tensor(b)].tolist())
    return out


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (ties count half); NaN when
    one class is empty."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    # Mann-Whitney U with average ranks for ties
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2
        rank_sum += avg * sum(y for _, y in ranked[i:j])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def step_judgement(
    small_dir: str | Path,
    large_dir: str | Path,
    large: CausalLM,
    tok: Tokenizer,
    examples: Sequence[Example],
) -> dict[str, Any]:
    """SpecReason's two signals on arith problems. The large model solves each problem
    greedily; at every step the small model proposes the next step from the large model's
    prefix. ``step_agreement``: how often the proposal equals the large model's step;
    ``small_step_accuracy``: how often it is right; ``auc``: how well the large model's mean
    token log-probability of a proposal separates right proposals from wrong ones."""
    large_out = generate(
        large_dir, [e.prompt for e in examples], [max_tokens_for(e) for e in examples]
    )
    prefixes, targets, owners = [], [], []
    for e, c in zip(examples, large_out, strict=True):
        steps = split_steps(c.text)
        for i, step in enumerate(steps[: e.difficulty]):
            prefixes.append(e.prompt + "".join(s + STEP_SEPARATOR for s in steps[:i]))
            targets.append(step)
            owners.append((e, i))
    proposals = generate(small_dir, prefixes, 16)
    proposed = [p.text.split(STEP_SEPARATOR, 1)[0] for p in proposals]
    right = [
        not s.startswith(ANSWER_PREFIX) and check_arith_step(e, i, s)
        for (e, i), s in zip(owners, proposed, strict=True)
    ]
    agree = [p == t for p, t in zip(proposed, targets, strict=True)]
    logps = sequence_logprobs(large, tok, prefixes, [p + STEP_SEPARATOR for p in proposed])
    scores = [sum(lp) / max(len(lp), 1) for lp in logps]
    return {
        "steps": len(prefixes),
        "step_agreement": sum(agree) / max(len(agree), 1),
        "small_step_accuracy": sum(right) / max(len(right), 1),
        "wrong_proposals": len(right) - sum(right),
        "auc": auc(scores, right),
    }


def token_agreement(
    small: CausalLM,
    large: CausalLM,
    tok: Tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
) -> float:
    """Share of completion positions where the small model's greedy next token equals the
    large model's, both teacher forced on the large model's own completions."""
    agree = total = 0
    for i in range(0, len(prompts), 32):
        rows, ids = _pairs(tok, prompts[i : i + 32], completions[i : i + 32])
        big = dense_logits(large, dense_forward(large, ids)).argmax(-1)
        little = dense_logits(small, dense_forward(small, ids)).argmax(-1)
        for j, (a, b) in enumerate(rows):
            span = slice(len(a) - 1, len(a) + len(b) - 1)
            agree += int((big[j, span] == little[j, span]).sum())
            total += len(b)
    return agree / max(total, 1)
