"""The zoo's trainer: plain torch, AdamW, cosine schedule, our own model modules.

A :class:`Recipe` says everything a training run depends on (architecture, task mix, token
budget, optimizer, seed). Data come in *rounds*: round ``r`` draws its examples from a random
generator seeded with ``(seed, r)``, sorts them by length and cuts them into padded batches of
at most ``batch_tokens`` tokens, so a round is a pure function of the recipe and ``r`` and a
resumed run sees exactly the batches an uninterrupted one would. The learning rate follows the
tokens trained on (linear warm-up, cosine decay to ``min_lr_ratio``). A checkpoint after every
round (written atomically) makes an interrupted run resume where it stopped; with one seed and
one thread count two runs give equal weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from core.model.base import CausalLM
from core.model.checkpoint import build_random_model
from core.model.config import load_config
from core.model.training import dense_forward, dense_logits, train_mode

from .tasks import EOS, Example, make_examples
from .tokenizer import PAD

__all__ = [
    "Batch",
    "Recipe",
    "TrainState",
    "collate",
    "encode_example",
    "round_batches",
    "train",
]


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is trained. ``architecture`` is a Hugging Face ``config.json`` without
    the vocabulary and special-token ids (they come from the tokenizer); ``mix`` the share of
    examples per task; ``tokens`` the budget of tokens processed (prompts and completions, not
    padding); ``arith_step_alpha`` the exponent of the arith problems' long-tailed step counts
    (``P(k) ~ k^-alpha``, see :func:`core.zoo.tasks.long_tailed_steps`)."""

    name: str
    architecture: dict[str, Any]
    mix: dict[str, float]
    tokens: int
    batch_tokens: int = 2048
    round_examples: int = 512
    max_len: int = 384
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_tokens: int = 100_000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every_tokens: int = 1_000_000
    arith_step_alpha: float = 1.6
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def hf_config(self, tokenizer: Tokenizer) -> dict[str, Any]:
        cfg = dict(self.architecture)
        cfg["vocab_size"] = tokenizer.get_vocab_size()
        cfg["pad_token_id"] = tokenizer.token_to_id(PAD)
        cfg["eos_token_id"] = tokenizer.token_to_id(EOS)
        cfg["bos_token_id"] = tokenizer.token_to_id(EOS)
        return cfg


@dataclass
class Batch:
    """``input_ids`` ``[B, L]`` right-padded; ``targets`` ``[B, L]`` the next token of each
    position, ``-100`` where no loss is taken (prompt tokens of task examples, padding);
    ``tokens`` the non-padding tokens (what a budget counts: the compute spent)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    tokens: int

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != -100).sum())


def encode_example(tok: Tokenizer, ex: Example) -> tuple[list[int], int]:
    """Token ids of prompt + completion, each tokenized alone (as at inference, where the
    prompt is tokenized and the completion generated), and the prompt's length. Text
    examples learn from every token: their prompt length is 0."""
    prompt = tok.encode(ex.prompt).ids
    completion = tok.encode(ex.completion).ids
    return prompt + completion, 0 if ex.task == "text" else len(prompt)


def pad_token_id(tok: Tokenizer) -> int:
    pad = tok.token_to_id(PAD)
    if pad is None:
        raise ValueError(f"the tokenizer has no {PAD} token: not a zoo tokenizer")
    return pad


def _groups(
    rows: Sequence[tuple[list[int], int]], batch_tokens: int
) -> list[list[tuple[list[int], int]]]:
    """Consecutive rows (sorted by length) in groups whose padded size, rows x longest,
    stays within ``batch_tokens`` (a longer single row makes a group of its own)."""
    groups: list[list[tuple[list[int], int]]] = []
    current: list[tuple[list[int], int]] = []
    for row in rows:
        if current and (len(current) + 1) * len(row[0]) > batch_tokens:
            groups.append(current)
            current = []
        current.append(row)
    if current:
        groups.append(current)
    return groups


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad ``(token ids, completion start)`` rows into one :class:`Batch`; the loss
    targets are the next tokens from each row's completion start on (-100 elsewhere)."""
    width = max(len(ids) for ids, _ in rows)
    inp = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(rows):
        t = torch.tensor(ids)
        inp[i, : len(ids)] = t
        # position j predicts token j+1; learn from the tokens after the prompt
        first = max(prompt_len - 1, 0)
        tgt[i, first : len(ids) - 1] = t[first + 1 :]
    return Batch(inp, tgt, sum(len(ids) for ids, _ in rows))


def round_batches(
    recipe: Recipe,
    tok: Tokenizer,
    r: int,
    exclude: set[str] | frozenset[str] = frozenset(),
    documents: Sequence[tuple[str, str]] | None = None,
) -> list[Batch]:
    """The batches of round ``r``: ``round_examples`` examples drawn by ``mix`` (prompts in
    ``exclude``, the held-out sets, are skipped), sorted by length and cut into batches of at
    most ``batch_tokens`` padded tokens, in an order shuffled by the round's seed."""
    rng = random.Random(f"{recipe.seed}:round:{r}")
    tasks = sorted(recipe.mix)
    counts = dict.fromkeys(tasks, 0)
    for t in rng.choices(tasks, [recipe.mix[t] for t in tasks], k=recipe.round_examples):
        counts[t] += 1
    rows: list[tuple[list[int], int]] = []
    for t in tasks:
        if counts[t]:
            seed = rng.randrange(2**31)
            examples = make_examples(
                t, seed, counts[t], documents=documents, step_alpha=recipe.arith_step_alpha
            )
            for ex in examples:
                if ex.prompt in exclude:
                    continue
                ids, plen = encode_example(tok, ex)
                rows.append((ids[: recipe.max_len], plen))
    rows.sort(key=lambda row: len(row[0]))
    pad_id = pad_token_id(tok)
    batches = [collate(group, pad_id) for group in _groups(rows, recipe.batch_tokens)]
    rng.shuffle(batches)
    return batches


def lm_loss(model: CausalLM, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the positions ``batch.targets`` keeps (their mean, or
    their sum with ``reduction="sum"``)."""
    logits = dense_logits(model, dense_forward(model, batch.input_ids)).float()
    return F.cross_entropy(
        logits.view(-1, logits.shape[-1]), batch.targets.view(-1), reduction=reduction
    )


def lr_at(recipe: Recipe, tokens: int) -> float:
    if tokens < recipe.warmup_tokens:
        return recipe.lr * (tokens + 1) / recipe.warmup_tokens
    progress = min(
        1.0, (tokens - recipe.warmup_tokens) / max(1, recipe.tokens - recipe.warmup_tokens)
    )
    floor = recipe.min_lr_ratio
    return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: CausalLM, recipe: Recipe) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


@dataclass
class TrainState:
    """Where a run stands: rounds done, tokens trained on, seconds spent, and the log (one
    dict per optimizer step for losses, one per evaluation)."""

    round: int = 0
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)


def _save(
    path: Path, model: CausalLM, opt: torch.optim.Optimizer, state: TrainState, digest: str
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "state": dataclasses.asdict(state),
            "recipe": digest,
        },
        tmp,
    )
    os.replace(tmp, path)


def train(
    recipe: Recipe,
    tok: Tokenizer,
    out_dir: str | Path,
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    evaluate: Callable[[CausalLM, TrainState], dict[str, Any]] | None = None,
    documents: Sequence[tuple[str, str]] | None = None,
    progress: bool = True,
    max_rounds: int | None = None,
) -> tuple[CausalLM, TrainState]:
    """Train ``recipe`` (resuming from ``out_dir/checkpoint.pt`` when it holds a run of the
    same recipe) and return the fp32 model and the final state. ``evaluate(model, state)`` runs
    every ``eval_every_tokens`` and at the end; its dict goes into the log. ``max_rounds``
    stops early (tests)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    config = load_config(recipe.hf_config(tok))
    model = train_mode(build_random_model(config, torch.float32, "cpu", recipe.seed))
    opt = _optimizer(model, recipe)
    state = TrainState()
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        if saved["recipe"] != recipe.digest():
            raise ValueError(
                f"{ckpt}: a checkpoint of another recipe ({saved['recipe']}, this one is "
                f"{recipe.digest()}); remove it or train into another directory"
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
    torch.manual_seed(recipe.seed)
    next_eval = (state.tokens // recipe.eval_every_tokens + 1) * recipe.eval_every_tokens
    bar = _progress(recipe, state, progress)
    while state.tokens < recipe.tokens and (max_rounds is None or state.round < max_rounds):
        started = time.perf_counter()
        for batch in round_batches(recipe, tok, state.round, exclude, documents):
            lr = lr_at(recipe, state.tokens)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = lm_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            n = batch.tokens
            state.tokens += n
            state.steps += 1
            state.log.append(
                {
                    "kind": "train",
                    "step": state.steps,
                    "tokens": state.tokens,
                    "loss": loss.item(),
                    "lr": lr,
                }
            )
            bar.update(n)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        state.round += 1
        state.seconds += time.perf_counter() - started
        if evaluate is not None and state.tokens >= next_eval:
            state.log.append(
                {"kind": "eval", "tokens": state.tokens, **_eval(evaluate, model, state)}
            )
            next_eval += recipe.eval_every_tokens
        _save(ckpt, model, opt, state, recipe.digest())
    bar.close()
    if evaluate is not None and not any(
        e["kind"] == "eval" and e["tokens"] == state.tokens for e in state.log
    ):
        state.log.append({"kind": "eval", "tokens": state.tokens, **_eval(evaluate, model, state)})
        _save(ckpt, model, opt, state, recipe.digest())
    return model.requires_grad_(False).eval(), state


def _eval(
    evaluate: Callable[[CausalLM, TrainState], dict[str, Any]], model: CausalLM, state: TrainState
) -> dict[str, Any]:
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model, state)
    finally:
        model.train()


def _progress(recipe: Recipe, state: TrainState, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=recipe.tokens,
        initial=state.tokens,
        unit="tok",
        unit_scale=True,
        desc=f"train {recipe.name}",
        disable=not enabled,
    )


def heldout_loss(model: CausalLM, tok: Tokenizer, examples: Sequence[Example]) -> float:
    """Mean next-token loss per kept token over ``examples`` (teacher forced), in padded
    batches of examples of similar length."""
    rows = sorted((encode_example(tok, e) for e in examples), key=lambda row: len(row[0]))
    pad_id = pad_token_id(tok)
    total, count = 0.0, 0
    for group in _groups(rows, 8192):
        batch = collate(group, pad_id)
        total += lm_loss(model, batch, reduction="sum").item()
        count += batch.loss_tokens
    return total / max(count, 1)
