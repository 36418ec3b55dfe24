"""Speculative decoding: tokens/s with and without drafting, greedy, in one process.

``python -m scripts.bench spec [--quick] [--zoo | --target DIR --draft DIR] [--prompts KIND]
[--rounds R] [--out DIR]``

Systems, all on the same target weights and the same prompts, their order rotating from round
to round (interleaved A/B/C/D): the target alone; n-gram prompt lookup; the suffix drafter;
a draft model. Greedy with EOS ignored, so every system must produce the very same tokens
(checked: ``lossless``).

Models. ``--zoo`` runs the shipped trained pair (``data/models/zoo-large`` drafted by
``zoo-small``) on held-out ``arith`` problems of 1-8 steps (``--prompts arith``, the default
with trained models) or passages of the held-out LooGLE document (``--prompts text``), EOS
honoured; ``--target``/``--draft`` take any other pair of checkpoint directories. Without them this is a *mechanism* benchmark on random weights: the target is the
``tiny-llama-125m`` preset (12 layers, seed 0) whose layers from ``--draft-layers`` on have their
output projections (attention ``o_proj``, MLP ``down_proj``) scaled by ``--damp``, and the
draft is that target truncated to its first ``--draft-layers`` layers (same embeddings, norm and
head). The damping makes the truncated draft agree with the target often, as a trained draft
would; acceptance, the cost ratio and the speedup are then measured, not assumed, but they say
how the machinery performs, not how well a real draft predicts.

Reported per system: tokens/s (median over rounds), the speedup over the target alone (median
of per-round ratios), the acceptance rate (accepted / drafted tokens), tokens per verify step,
and the speedup expected from those: ``T / (k_d * c + v)`` with ``T`` the measured tokens per
step, ``k_d`` the mean drafts per step, ``c`` the draft's decode-step time over the target's
and ``v`` the target's verify-step time (``1 + k_d`` tokens per sequence, interpolated between
steps of 1 .. k + 1 tokens) over its decode-step time, all timed here on the batch's shape in
interleaved repetitions (Leviathan et al.'s ``1 / (c + (1 - a))`` family).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from scripts.bench import report as rep

PRESET = "tiny-llama-125m"


@dataclass(frozen=True)
class Scale:
    name: str
    prompts: int
    prompt_len: int
    max_tokens: int
    rounds: int
    k: int


SCALES = {
    "quick": Scale("quick", prompts=2, prompt_len=12, max_tokens=12, rounds=1, k=3),
    "default": Scale("default", prompts=4, prompt_len=32, max_tokens=64, rounds=3, k=4),
}


def _damped_pair(workdir: Path, quick: bool, draft_layers: int, damp: float) -> tuple[Path, Path]:
    """A random target whose upper layers are damped, and its truncation as the draft."""
    import torch

    from core.model.checkpoint import build_random_model, save_model
    from core.model.config import load_config
    from core.model.presets import preset_config

    cfg = preset_config(PRESET)
    if quick:
        cfg.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    if not 0 < draft_layers < cfg["num_hidden_layers"]:
        raise SystemExit(
            f"--draft-layers must be in [1, {cfg['num_hidden_layers'] - 1}], got {draft_layers}"
        )
    target = build_random_model(load_config(cfg), seed=0)
    with torch.no_grad():
        for name, p in target.named_parameters():
            parts = name.split(".")
            if "layers" in parts and int(parts[parts.index("layers") + 1]) >= draft_layers:
                if parts[-2] in ("o_proj", "down_proj"):
                    p.mul_(damp)
    small_cfg = dict(cfg, num_hidden_layers=draft_layers)
    draft = build_random_model(load_config(small_cfg), seed=1)
    params = dict(target.named_parameters())
    with torch.no_grad():
        for name, p in draft.named_parameters():
            p.copy_(params[name])
    return save_model(target, workdir / "target"), save_model(draft, workdir / "draft")


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


def _task_prompts(kind: str, n: int, encode: Any) -> list[list[int]]:
    """``n`` held-out prompts of the zoo's tasks, token ids: ``arith`` spread evenly over the
    card's problems of 1-8 steps; ``text`` the first words of passages of the document no zoo
    model trained on."""
    import random

    from core.zoo.build import final_eval_set, heldout_documents
    from core.zoo.tasks import text_examples

    if kind == "arith":
        pool = [e for e in final_eval_set() if e.task == "arith" and e.difficulty <= 8]
        chosen = [pool[i * len(pool) // n] for i in range(n)]
    elif kind == "text":
        chosen = text_examples(random.Random(0), heldout_documents(), n)
    else:
        raise ValueError(f"--prompts {kind!r}: trained models take 'arith' or 'text'")
    return [list(encode(e.prompt)) for e in chosen]


def _systems(draft: Path, k: int) -> dict[str, dict[str, Any] | None]:
    return {
        "target": None,
        "ngram": {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3},
        "suffix": {"method": "suffix", "num_speculative_tokens": k},
        "draft-model": {"model": str(draft), "num_speculative_tokens": k},
    }


def _step_times(
    shapes: dict[str, tuple[Any, Any, int]], block_size: int, batch: int, ctx: int, reps: int = 7
) -> dict[str, float]:
    """Median seconds of one forward per shape ``name -> (model, kv_cache, q)``: ``batch``
    sequences of ``q`` new tokens after ``ctx`` cached ones (the cache's first blocks serve as
    scratch). The shapes are timed in interleaved rounds, so a stall hits all of them."""
    import torch

    from core.model import ForwardBatch

    batches = {}
    for name, (_, _, q) in shapes.items():
        per = -(-(ctx + q) // block_size)
        tables = [list(range(b * per, (b + 1) * per)) for b in range(batch)]
        batches[name] = ForwardBatch.build([[5] * q] * batch, [ctx] * batch, tables, block_size)
    times: dict[str, list[float]] = {name: [] for name in shapes}
    with torch.inference_mode():
        for _ in range(reps + 1):
            for name, (model, kv_cache, q) in shapes.items():
                # as a speculating runner does for its verify steps: q new tokens in place
                model.attention_backend().max_decode_query_len = q
                t0 = time.perf_counter()
                model(batches[name], kv_cache)
                times[name].append(time.perf_counter() - t0)
    return {name: median(t[1:]) for name, t in times.items()}


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear ``y(x)`` through the points (clamped at the ends)."""
    if x <= xs[0]:
        return ys[0]
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from core.engine import LLM, SamplingParams

    t_start = time.perf_counter()
    scale = SCALES["quick" if args.quick else "default"]
    rounds = args.rounds or scale.rounds
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.zoo:
            if args.target is not None or args.draft is not None:
                raise SystemExit("--zoo names the pair: leave out --target and --draft")
            from core.data import data_path

            args.target = str(data_path("models", "zoo-large"))
            args.draft = str(data_path("models", "zoo-small"))
        if (args.target is None) != (args.draft is None):
            raise SystemExit("give both --target and --draft, or neither")
        kind = args.prompts or ("random" if args.target is None else "arith")
        if args.target is None:
            target, draft = _damped_pair(Path(tmp), args.quick, args.draft_layers, args.damp)
            models = f"random {PRESET} (upper layers damped x{args.damp}) and its first {args.draft_layers} layers"
        else:
            target, draft = Path(args.target), Path(args.draft)
            models = f"{target} and {draft}"
        opts = dict(
            seed=0,
            enable_prefix_caching=False,
            max_num_seqs=scale.prompts,
            block_size=16,
            kv_cache_memory=64 * 2**20,
        )
        systems = _systems(draft, scale.k)
        llms = {name: LLM(target, speculative_config=sc, **opts) for name, sc in systems.items()}
        vocab = llms["target"].config.vocab_size
        if kind == "random":
            prompts = _prompts(scale.prompts, scale.prompt_len, vocab)
        else:
            tok = llms["target"].tokenizer
            if tok is None:
                raise SystemExit(f"--prompts {kind} needs a tokenizer.json in {target}")
            prompts = _task_prompts(kind, scale.prompts, lambda text: tok.encode(text).ids)
        # random prompts have no natural end; task prompts stop where the model's answer does
        sp = SamplingParams(temperature=0, max_tokens=scale.max_tokens, ignore_eos=kind == "random")
        names = list(llms)
        for name in names:  # warm-up, untimed: first passes over new shapes
            llms[name].generate(
                prompts[:1],
                SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                use_tqdm=False,
            )
        tps: dict[str, list[float]] = {n: [] for n in names}
        counts: dict[str, dict[str, int]] = {}
        tokens: dict[str, list[list[int]]] = {}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                outs = llms[name].generate(prompts, sp, use_tqdm=False)
                dt = time.perf_counter() - t0
                tps[name].append(sum(len(o.token_ids) for o in outs) / dt)
                tokens[name] = [o.token_ids for o in outs]
                counts[name] = {
                    key: sum(int(o.metrics[key]) for o in outs)
                    for key in ("num_spec_steps", "num_draft_tokens", "num_accepted_tokens")
                }
        lossless = all(tokens[n] == tokens["target"] for n in names)
        # cost ratios on this batch's shape, at the mean context of the run: the target's step
        # with q = 1 .. k + 1 tokens per sequence and the draft's one-token step
        base = llms["target"]
        runner = base.engine.runner
        drafter = llms["draft-model"].engine.runner.drafter  # type: ignore[attr-defined]
        ctx = sum(map(len, prompts)) // len(prompts) + scale.max_tokens // 2
        qs = list(range(1, scale.k + 2))
        shapes = {f"q{q}": (base.model, runner.kv_cache, q) for q in qs}
        shapes["draft"] = (drafter.model, drafter.kv_cache, 1)
        t = _step_times(shapes, 16, scale.prompts, ctx)
        v_of_q = [t[f"q{q}"] / t["q1"] for q in qs]
        c = t["draft"] / t["q1"]

    results: dict[str, Any] = {
        "models": models,
        "prompts": kind,
        "lossless": lossless,
        "cost": {
            "step_s": t,
            "c": c,
            "v_by_tokens_per_seq": dict(zip(qs, v_of_q, strict=True)),
        },
        "systems": {},
    }
    for name in names:
        row: dict[str, Any] = {"tokens_per_s": median(tps[name]), "rounds": tps[name]}
        if name != "target":
            ratios = [a / b for a, b in zip(tps[name], tps["target"], strict=True)]
            n = counts[name]
            steps = max(1, n["num_spec_steps"])
            acc = n["num_accepted_tokens"] / n["num_draft_tokens"] if n["num_draft_tokens"] else 0.0
            per_step = 1 + n["num_accepted_tokens"] / steps
            k_d = n["num_draft_tokens"] / steps
            v = _interp(qs, v_of_q, 1 + k_d)  # the verify step at this system's drafts
            cost = (k_d * c if name == "draft-model" else 0.0) + v
            row.update(
                speedup=median(ratios),
                acceptance=acc,
                tokens_per_step=per_step,
                drafts_per_step=k_d,
                verify_cost=v,
                expected_speedup=per_step / cost,
                **n,
            )
        results["systems"][name] = row
    draft_speedup = results["systems"]["draft-model"]["speedup"]
    targets = [
        rep.target(
            "lossless",
            "greedy tokens equal with speculation on and off",
            float(lossless),
            ">=",
            1.0,
        ),
        rep.target(
            "draft-model-speedup",
            f"tokens/s with the draft model over the target alone ({models})",
            draft_speedup,
            ">",
            1.5,
            "x",
        ),
    ]
    config = {
        "scale": asdict(scale),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "prompts": kind,
        "damp": args.damp,
        "draft_layers": args.draft_layers,
    }
    report = rep.make_report(
        "spec", config, results, targets, rep.provenance(), time.perf_counter() - t_start
    )
    rep.write_json(Path(args.out) / "spec.json", report)
    return report


def render(report: dict[str, Any]) -> str:
    res = report["results"]
    rows = []
    for name, s in res["systems"].items():
        rows.append(
            [
                name,
                s["tokens_per_s"],
                s.get("speedup"),
                s.get("expected_speedup"),
                s.get("acceptance"),
                s.get("tokens_per_step"),
            ]
        )
    c = res["cost"]
    table = rep.format_table(
        ["system", "tok/s", "speedup", "expected", "acceptance", "tokens/step"],
        rows,
        title=(
            f"Speculative decoding, greedy ({res['models']}; {res.get('prompts', 'random')} "
            f"prompts); lossless: {res['lossless']}; "
            f"draft/target step c = {c['c']:.3f}, verify (k+1 tokens)/decode "
            f"v = {max(c['v_by_tokens_per_seq'].values()):.2f}"
        ),
        formats=[None, ".1f", ".2f", ".2f", ".2f", ".2f"],
    )
    return table + "\n\n" + rep.targets_table(report["targets"])


def build_parser(prog: str = "python -m scripts.bench spec") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, 2 prompts, one round")
    p.add_argument("--target", default=None, help="target checkpoint directory")
    p.add_argument("--draft", default=None, help="draft checkpoint directory")
    p.add_argument(
        "--zoo", action="store_true", help="the shipped pair: zoo-large drafted by zoo-small"
    )
    p.add_argument(
        "--prompts",
        choices=("random", "arith", "text"),
        default=None,
        help="random token ids (default for the random pair) or held-out zoo prompts: arith "
        "(default with trained models) or text",
    )
    p.add_argument("--draft-layers", type=int, default=2, help="layers of the truncated draft")
    p.add_argument("--damp", type=float, default=0.05, help="scale of the target's upper layers")
    p.add_argument("--rounds", type=rep.positive_int, default=None, help="interleaved rounds")
    p.add_argument("--threads", type=rep.positive_int, default=None, help="torch threads")
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report))
    print(f"\nwrote {Path(args.out) / 'spec.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
