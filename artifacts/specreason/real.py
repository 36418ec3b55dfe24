"""Real mode: the zoo's small and large models on this CPU over held-out arith problems, every
method on every problem (in a rotated order, so no method always runs first), one row per
problem and method, with the run's work priced at paper scale beside its measured time.

Methods: the large model alone, the small model alone, token-level speculative decoding (the
large model verifying the small model's drafts, ``core.spec``), SpecReason with the likelihood
judge at each tau, SpecReason with the oracle judge, and SpecReason + token-level speculation
(the large model's judging and rewriting in an engine with the small model as its drafter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from core.artifact import RunContext, Scale
from core.data import sha256_file
from core.zoo.build import final_eval_set
from core.zoo.evaluate import max_tokens_for
from core.zoo.tasks import Example, check_answer

from .judges import OracleJudge
from .paper_scale import HARDWARE, priced_seconds
from .reason import Solution, solve, spec_reason

METHODS = ("large", "small", "spec-decode", "specreason", "specreason-oracle", "specreason+spec")
BASELINES = ("large", "small", "spec-decode")

SCALES: dict[Scale, dict[str, Any]] = {
    Scale.SMOKE: {"difficulties": (1, 2), "problems": 1, "taus": (8.0,)},
    Scale.DEFAULT: {
        "difficulties": (1, 2, 3, 4, 6, 8),
        "problems": 6,
        "taus": (5.0, 7.0, 8.0, 8.5, 8.8),
    },
    Scale.FULL: {
        "difficulties": (1, 2, 3, 4, 5, 6, 8),
        "problems": 12,
        "taus": (5.0, 6.0, 7.0, 7.5, 8.0, 8.5, 8.8),
    },
}
COMBINED_TAU = 8.0  # SpecReason + token-level speculation runs at this tau (and the sweep's)
NUM_SPECULATIVE_TOKENS = 4


def problems(difficulty: int, n: int) -> list[Example]:
    """The first ``n`` held-out arith problems of ``difficulty`` steps (the model cards' set)."""
    pool = [e for e in final_eval_set() if e.task == "arith" and e.difficulty == difficulty]
    return pool[:n]


def points(ctx: RunContext) -> list[dict[str, Any]]:
    from .engines import missing_models, model_dirs

    why = missing_models()
    if why:
        raise FileNotFoundError(why)
    small, large = model_dirs()
    cfg = SCALES[ctx.scale]
    taus = sorted({*cfg["taus"], COMBINED_TAU})
    return [
        {
            "difficulty": d,
            "problems": cfg["problems"],
            "taus": ",".join(f"{t:g}" for t in taus),
            "combined_tau": COMBINED_TAU,
            "k": NUM_SPECULATIVE_TOKENS,
            "small": str(small),
            "large": str(large),
            # a changed checkpoint is a new point, not a stored one
            "small_sha": sha256_file(small / "model.safetensors")[:16],
            "large_sha": sha256_file(large / "model.safetensors")[:16],
        }
        for d in cfg["difficulties"]
    ]


Runner = Callable[[Example, list[int]], Solution]


def _runs(config: dict[str, Any]) -> tuple[list[tuple[str, str, float, Runner]], Any]:
    """(method, judge, tau, run) for every run of a problem, and the small model's tokenizer."""
    from pathlib import Path

    from .engines import EngineModel, StepScorer, make_llm, track_model
    from .judges import LikelihoodJudge

    small_dir, large_dir = Path(config["small"]), Path(config["large"])
    track_model(small_dir)
    track_model(large_dir)
    small_llm = make_llm(small_dir)
    large_llm = make_llm(large_dir)
    if small_llm.tokenizer is None or large_llm.tokenizer is None:
        raise ValueError(f"{small_dir} and {large_dir} both need a tokenizer.json")
    if small_llm.tokenizer.get_vocab() != large_llm.tokenizer.get_vocab():
        raise ValueError(
            f"{small_dir} and {large_dir} have different tokenizers: SpecReason passes token "
            "ids between the two models, so they must share one"
        )
    spec_llm = make_llm(large_dir, draft=small_dir, k=config["k"])
    tok = small_llm.tokenizer
    newline = tok.token_to_id("\u010a")  # the byte-level BPE token of "\n"
    small = EngineModel("small", small_llm, newline)
    large = EngineModel("large", large_llm, newline)
    spec = EngineModel("large", spec_llm, newline)
    judge = LikelihoodJudge(StepScorer(large_llm))
    spec_judge = LikelihoodJudge(StepScorer(spec_llm))
    engines = (small_llm, large_llm, spec_llm)

    def fresh() -> None:
        # each run starts from empty prefix caches: no run reuses another run's KV
        for llm in engines:
            llm.engine.scheduler.kv.manager.reset_prefix_cache()

    def reasoner(model: EngineModel, j: Any, tau: float) -> Runner:
        def run(e: Example, ids: list[int]) -> Solution:
            fresh()
            jj = j if j is not None else OracleJudge(e, tok.decode)
            return spec_reason(
                ids, small, model, jj, tau, newline=newline, max_steps=e.difficulty + 3
            )

        return run

    def alone(model: EngineModel) -> Runner:
        def run(e: Example, ids: list[int]) -> Solution:
            fresh()
            return solve(model, ids, max_tokens_for(e))

        return run

    taus = [float(t) for t in str(config["taus"]).split(",")]
    runs: list[tuple[str, str, float, Runner]] = [
        ("large", "", float("nan"), alone(large)),
        ("small", "", float("nan"), alone(small)),
        ("spec-decode", "", float("nan"), alone(spec)),
        ("specreason-oracle", "oracle", 9.0, reasoner(large, None, 9.0)),
        *[("specreason", "likelihood", t, reasoner(large, judge, t)) for t in taus],
        (
            "specreason+spec",
            "likelihood",
            config["combined_tau"],
            reasoner(spec, spec_judge, config["combined_tau"]),
        ),
    ]
    return runs, tok


def _row(e: Example, index: int, sol: Solution, decode: Callable[[Sequence[int]], str]) -> dict:
    text = decode(sol.token_ids)
    steps = sol.steps
    oracle = OracleJudge(e, decode)
    return {
        "problem": index,
        "correct": bool(sol.finished and check_answer(e, text)),
        "seconds": sol.seconds,
        "cpu_seconds": sol.cpu_seconds,
        **{f"{hw}_s": priced_seconds(sol.events, hw) for hw in HARDWARE},
        "tokens": len(sol.token_ids),
        "steps": len(steps),
        "accepted_steps": sum(s.accepted for s in steps),
        # by step position: accepted ("a") or rewritten ("r"), and whether the small model's
        # proposal was right ("y"/"n", by the exact checker): the judge's quality
        "accepted_by_position": "".join("a" if s.accepted else "r" for s in steps),
        "right_by_position": "".join(
            "y" if oracle.right(s.proposal, s.position) else "n" for s in steps
        ),
        "scores": ",".join(f"{s.score:.3f}" for s in steps),
        "draft_tokens": sol.draft_tokens,
        "accepted_tokens": sol.accepted_tokens,
    }


def run_point(config: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all compute on this thread, so its CPU clock sees it all
    try:
        runs, tok = _runs(config)
        warm = problems(1, 1)[0]
        for _, _, _, run in runs:  # first calls pay for lazy initialization
            run(warm, tok.encode(warm.prompt).ids)
        rows = []
        for i, e in enumerate(problems(config["difficulty"], config["problems"])):
            ids = tok.encode(e.prompt).ids
            order = runs[i % len(runs) :] + runs[: i % len(runs)]
            for method, judge, tau, run in order:
                sol = run(e, ids)
                rows.append(
                    {"method": method, "judge": judge, "tau": tau, **_row(e, i, sol, tok.decode)}
                )
        return rows
    finally:
        torch.set_num_threads(threads)
