"""Building the zoo from scratch: the shared tokenizer, the held-out sets, each recipe's
training run, its export as a Hugging Face folder and its model card.

Layout under the output folder ``OUT`` (``data/models`` for the shipped zoo)::

    OUT/tokenizer/            tokenizer.json (+ the two files transformers reads)
    OUT/<model>/              config.json, model.safetensors (bf16), tokenizer files,
                              generation_config.json, recipe.json, metrics.json,
                              training_log.json, curves.png, README.md (the model card)
    OUT/.runs/<model>/        checkpoint.pt of the training run (resumable; not shipped)
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from .recipes import EVAL_SEED, RECIPES, TOKENIZER_SEED, TOKENIZER_VOCAB
from .tasks import Example, make_examples, text_documents
from .tokenizer import save_tokenizer, train_tokenizer

__all__ = [
    "HELDOUT_DOCUMENT",
    "build_tokenizer",
    "final_eval_set",
    "heldout_prompts",
    "load_zoo_tokenizer",
    "progress_eval_set",
    "train_documents",
    "train_recipe",
]

HELDOUT_DOCUMENT = "Assassination of Shinzo Abe"
"""The LooGLE document no model trains on: held-out text for losses and acceptance rates."""


def train_documents() -> list[tuple[str, str]]:
    return [d for d in text_documents() if d[0] != HELDOUT_DOCUMENT]


def heldout_documents() -> list[tuple[str, str]]:
    return [d for d in text_documents() if d[0] == HELDOUT_DOCUMENT]


def build_tokenizer(out: Path) -> Tokenizer:
    """Train the shared tokenizer on task texts of its own seed and the training documents
    (deterministic), save it under ``out/tokenizer`` and return it."""
    texts: list[str] = []
    for task, n in (("arith", 4000), ("retrieval", 1500), ("classify", 1000)):
        texts += [e.text for e in make_examples(task, TOKENIZER_SEED, n)]
    texts += [
        e.text for e in make_examples("text", TOKENIZER_SEED, 1500, documents=train_documents())
    ]
    tok = train_tokenizer(texts, TOKENIZER_VOCAB)
    save_tokenizer(tok, out / "tokenizer", 512)
    return tok


def load_zoo_tokenizer(out: Path) -> Tokenizer:
    return Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))


def _buckets(task: str, counts: dict[int, int], seed: int) -> list[Example]:
    out: list[Example] = []
    for d, n in counts.items():
        out += make_examples(task, seed * 1000 + d, n, difficulty=d)
    return out


def final_eval_set(scale: float = 1.0) -> list[Example]:
    """The held-out problems of the model cards: arith 100 per step count 1-4 and 40 per
    step count 5-12, retrieval 50 per hop count, classify 40 per margin (times ``scale``)."""

    def n(k: int) -> int:
        return max(1, round(k * scale))

    arith = {s: n(100) for s in range(1, 5)} | {s: n(40) for s in range(5, 13)}
    return (
        _buckets("arith", arith, EVAL_SEED)
        + _buckets("retrieval", {h: n(50) for h in range(1, 5)}, EVAL_SEED)
        + _buckets("classify", {m: n(40) for m in (1, 3, 5, 7, 9)}, EVAL_SEED)
    )


def progress_eval_set() -> list[Example]:
    """A small held-out set evaluated during training (the curves)."""
    return (
        _buckets("arith", {1: 16, 2: 16, 3: 16, 4: 16, 6: 8, 8: 8}, EVAL_SEED + 1)
        + _buckets("retrieval", {h: 8 for h in range(1, 5)}, EVAL_SEED + 1)
        + _buckets("classify", {m: 8 for m in (1, 5, 9)}, EVAL_SEED + 1)
    )


def heldout_text(n: int = 64) -> list[Example]:
    return make_examples("text", EVAL_SEED, n, documents=heldout_documents())


def heldout_prompts() -> frozenset[str]:
    """Prompts of every held-out set: training skips an example with one of them."""
    return frozenset(e.prompt for e in final_eval_set() + progress_eval_set())


def train_recipe(name: str, out: Path, tok: Tokenizer, progress: bool = True) -> tuple[Any, Any]:
    """Train (or resume) recipe ``name`` under ``out/.runs/<name>``, evaluating on the
    progress set every ``eval_every_tokens``; returns the model and the training state."""
    from .evaluate import evaluate_in_training
    from .train import heldout_loss, train

    recipe = RECIPES[name]
    prog = progress_eval_set()
    text = heldout_text(32)
    task_losses = {
        t: [e for e in prog if e.task == t][:24] for t in ("arith", "retrieval", "classify")
    }

    def evaluate(model: Any, state: Any) -> dict[str, Any]:
        out = evaluate_in_training(model, tok, prog)
        out["heldout_loss"] = {t: heldout_loss(model, tok, ex) for t, ex in task_losses.items()}
        out["heldout_loss"]["text"] = heldout_loss(model, tok, text)
        return out

    return train(
        recipe,
        tok,
        out / ".runs" / name,
        exclude=heldout_prompts(),
        evaluate=evaluate,
        documents=train_documents(),
        progress=progress,
    )


def machine() -> dict[str, Any]:
    from core.sim.profiled import cpu_model_name

    return {
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def measure(model_dir: Path, tok: Tokenizer, scale: float = 1.0) -> dict[str, Any]:
    """Accuracy of the exported folder ``model_dir`` on the held-out problems (through the
    engine) and its held-out losses (teacher forced), as the model card reports them."""
    from core.model.checkpoint import load_model

    from .evaluate import accuracy_table, score_examples
    from .train import heldout_loss

    examples = final_eval_set(scale)
    rows = score_examples(model_dir, examples)
    arith = [r for r in rows if r["task"] == "arith"]

    def share(rs: list[dict[str, Any]]) -> float:
        return sum(r["correct"] for r in rs) / max(len(rs), 1)

    model, _ = load_model(model_dir)
    with torch.no_grad():
        losses = {
            t: heldout_loss(model, tok, [e for e in examples if e.task == t][:200])
            for t in ("arith", "retrieval", "classify")
        }
        losses["text"] = heldout_loss(model, tok, heldout_text(64))
    return {
        "accuracy": accuracy_table(rows),
        "arith_up_to_4": share([r for r in arith if r["steps"] <= 4]),
        "arith_5_to_12": share([r for r in arith if r["steps"] > 4]),
        "arith_step_accuracy": sum(r["steps_right"] for r in arith)
        / sum(r["steps"] for r in arith),
        "heldout_loss": losses,
        "eval_problems": len(examples),
    }


def finish(name: str, out: Path, tok: Tokenizer, model: Any, state: Any) -> dict[str, Any]:
    """Export a trained model to ``out/<name>`` (bf16), measure it and write its metrics,
    recipe, log, curves and model card; returns the metrics."""
    from .card import draw_curves, render_card
    from .evaluate import export_model

    recipe = RECIPES[name]
    d = out / name
    export_model(model, tok, d, torch.bfloat16)
    metrics = {
        "recipe": recipe.to_json(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tok.get_vocab_size(),
        "dtype": "bfloat16",
        "heldout_document": HELDOUT_DOCUMENT,
        "machine": machine(),
        "training": {
            "tokens": state.tokens,
            "steps": state.steps,
            "seconds": state.seconds,
            "final_loss": sum(e["loss"] for e in state.log[-50:] if e["kind"] == "train")
            / max(1, sum(1 for e in state.log[-50:] if e["kind"] == "train")),
        },
        **measure(d, tok),
    }
    write_json(d / "recipe.json", recipe.to_json())
    # every 10th step's loss is plenty for a curve; the whole log is in the run's checkpoint
    write_json(
        d / "training_log.json",
        [e for e in state.log if e["kind"] == "eval" or e["step"] % 10 == 0],
    )
    draw_curves(state.log, d / "curves.png", name)
    write_json(d / "metrics.json", metrics)
    (d / "README.md").write_text(render_card(metrics))
    return metrics


def compare_pair(
    out: Path,
    tok: Tokenizer,
    small: str = "zoo-small",
    large: str = "zoo-large",
    n_per_bucket: int = 25,
) -> dict[str, Any]:
    """SpecReason's signals between ``small`` and ``large`` (see
    :func:`core.zoo.evaluate.step_judgement`) on held-out arith problems of 1-8 steps, added
    to both models' metrics and cards."""
    from core.model.checkpoint import load_model

    from .card import render_card
    from .evaluate import generate, max_tokens_for, step_judgement, token_agreement

    examples = _buckets("arith", {s: n_per_bucket for s in range(1, 9)}, EVAL_SEED + 2)
    large_model, _ = load_model(out / large)
    small_model, _ = load_model(out / small)
    with torch.no_grad():
        result = step_judgement(out / small, out / large, large_model, tok, examples)
        comps = generate(
            out / large, [e.prompt for e in examples], [max_tokens_for(e) for e in examples]
        )
        result["token_agreement"] = token_agreement(
            small_model, large_model, tok, [e.prompt for e in examples], [c.text for c in comps]
        )
    result["problems"] = len(examples)
    for name in (small, large):
        path = out / name / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["speculation"] = {"small": small, "large": large, **result}
        write_json(path, metrics)
        (out / name / "README.md").write_text(render_card(metrics))
    return result
