"""LoRA serving: decode tokens/s of the unmerged path against merged and against ``peft``.

``python -m scripts.bench lora [--quick] [--batch B] [--context C] [--rounds R] [--out DIR]``

One model, one process: the ``tiny-llama-125m`` preset (random weights, seed 0) saved as a
Hugging Face checkpoint, loaded by our engine's model code and by ``transformers`` + ``peft``,
with the same random rank-8 adapters on every projection, written as PEFT folders that both
read. A decode step of a batch of ``B`` sequences at context ``C`` (logits
included) is timed for:

- ``base``: no adapter;
- ``merged``: one adapter folded into the weights (vLLM's merged mode, dLoRA's merged batch);
- ``unmerged-k``: ``k`` distinct adapters, rows spread round-robin, through the runtime's
  batched LoRA kernels (:mod:`core.kernels.lora`), for ``k`` in 1, 4, 16, 64;
- ``peft-k``: ``transformers`` + ``peft`` on the same batch with ``adapter_names`` (its mixed-
  adapter batch), its KV cache cropped back to ``C`` after every step.

Systems run in an order rotating from round to round (interleaved); each round keeps the best
of ``repeats`` steps (load adds time, never speed) and the median over rounds is reported, as
tokens/s (``B`` tokens per step) and as each system's step time over ``merged``'s and over
``base``'s (merged should cost what base costs; a gap between them is the machine's noise). The target
(issue: LoRA serving) is ``unmerged-16`` within 1.5x of ``merged``. Timing, not correctness:
tests/lora checks our logits against ``peft``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from scripts.bench import report as rep

PRESET = "tiny-llama-125m"
RANK = 8
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Scale:
    name: str
    batch: int
    context: int
    adapters: tuple[int, ...]
    peft_adapters: tuple[int, ...]
    rounds: int
    repeats: int


SCALES = {
    "quick": Scale("quick", 8, 16, (1, 4), (1, 4), rounds=1, repeats=1),
    "default": Scale("default", 64, 64, (1, 4, 16, 64), (1, 16), rounds=5, repeats=3),
}


def _hf_checkpoint(folder: Path, quick: bool) -> Any:
    """The preset as a random-init ``LlamaForCausalLM`` saved in ``folder``; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.model.presets import preset_config

    cfg = preset_config(PRESET)
    if quick:
        cfg.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    torch.manual_seed(0)
    fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    model.save_pretrained(folder)
    return model


def _write_adapters(hf: Any, n: int, folder: Path) -> None:
    """``n`` random rank-``RANK`` adapters on every projection of ``hf``, written as PEFT
    folders ``folder/adapters/a<i>`` (peft reads them back; ours too)."""
    import torch

    from core.lora.adapter import save_adapter

    g = torch.Generator().manual_seed(1)
    modules = [
        (name, m)
        for name, m in hf.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_MODULES
    ]
    for i in range(n):
        weights = {
            name: (
                torch.randn(RANK, m.in_features, generator=g) * m.in_features**-0.5,
                torch.randn(m.out_features, RANK, generator=g) * 0.02,
            )
            for name, m in modules
        }
        save_adapter(_adapter_dir(folder, i), weights, lora_alpha=2 * RANK)


def _adapter_dir(folder: Path, i: int) -> Path:
    return folder / "adapters" / f"a{i}"


def _peft_model(hf: Any, n: int, folder: Path) -> Any:
    """``hf`` wrapped by peft with the first ``n`` adapters loaded as ``a0..``."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(hf, str(_adapter_dir(folder, 0)), adapter_name="a0")
    for i in range(1, n):
        model.load_adapter(str(_adapter_dir(folder, i)), adapter_name=f"a{i}")
    return model.eval()


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _our_steps(ckpt: Path, folder: Path, scale: Scale) -> dict[str, Callable[[], Any]]:
    import torch

    from core.lora.request import LoRARequest
    from core.lora.runtime import LoRARuntime
    from core.model import ForwardBatch, load_model

    net, _ = load_model(ckpt, dtype=torch.float32, device="cpu")
    most = max(scale.adapters)
    rt = LoRARuntime(net, max_loras=most, max_lora_rank=RANK, max_cpu_loras=most)
    loras = [LoRARequest(f"a{i}", i + 1, str(_adapter_dir(folder, i))) for i in range(most)]
    block = 16
    per_seq = -(-(scale.context + 1) // block)
    kv = net.allocate_kv_cache(scale.batch * per_seq, block)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(scale.batch)]
    batch = ForwardBatch.build([[7]] * scale.batch, [scale.context] * scale.batch, tables, block)
    rows = [1] * scale.batch

    @torch.inference_mode()
    def run(mode: str, k: int) -> None:
        if mode == "base":
            rt.prepare([None] * scale.batch, rows)
        elif mode == "merged":
            rt.prepare([loras[0]] * scale.batch, rows, merged=loras[0].lora_name)
        else:
            rt.prepare([loras[i % k] for i in range(scale.batch)], rows)
        net.compute_logits(net(batch, kv))

    steps: dict[str, Callable[[], Any]] = {
        "base": lambda: run("base", 0),
        "merged": lambda: run("merged", 1),
    }
    for k in scale.adapters:
        steps[f"unmerged-{k}"] = lambda k=k: run("unmerged", k)
    return steps


def _peft_steps(model: Any, scale: Scale, vocab: int) -> dict[str, Callable[[], Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, vocab, (scale.batch, scale.context), generator=g)
    nxt = torch.randint(5, vocab, (scale.batch, 1), generator=g)
    steps: dict[str, Callable[[], Any]] = {}
    for k in scale.peft_adapters:
        names = [f"a{i % k}" for i in range(scale.batch)]
        with torch.inference_mode():
            cache = model(input_ids=prompt, use_cache=True, adapter_names=names).past_key_values

        @torch.inference_mode()
        def step(names: list[str] = names, cache: Any = cache) -> None:
            model(input_ids=nxt, past_key_values=cache, use_cache=True, adapter_names=names)
            cache.crop(-1)  # back to the prompt: every step sees context C

        steps[f"peft-{k}"] = step
    return steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base_scale = SCALES["quick" if args.quick else "default"]
    scale = Scale(
        base_scale.name,
        args.batch or base_scale.batch,
        args.context or base_scale.context,
        base_scale.adapters,
        base_scale.peft_adapters,
        args.rounds or base_scale.rounds,
        base_scale.repeats,
    )
    if any(k > scale.batch for k in scale.adapters):
        raise SystemExit(f"--batch must be at least {max(scale.adapters)} (one row per adapter)")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="servelab-lora-bench-") as tmp:
        folder = Path(tmp)
        hf = _hf_checkpoint(folder / "base", args.quick)
        vocab = hf.config.vocab_size
        _write_adapters(hf, max(max(scale.adapters), max(scale.peft_adapters)), folder)
        peft_model = _peft_model(hf, max(scale.peft_adapters), folder)
        steps = {
            **_our_steps(folder / "base", folder, scale),
            **_peft_steps(peft_model, scale, vocab),
        }
        for fn in steps.values():  # warm up every path once (lazy init, first merge)
            fn()
        names = list(steps)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(scale.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                samples[n].append(_timed(steps[n], scale.repeats))
    step_s = {n: median(v) for n, v in samples.items()}
    merged, base = step_s["merged"], step_s["base"]
    systems = {
        n: {
            "step_s": t,
            "tokens_per_s": scale.batch / t,
            "step_over_merged": t / merged,
            "step_over_base": t / base,
        }
        for n, t in step_s.items()
    }
    key = "unmerged-16" if "unmerged-16" in systems else f"unmerged-{max(scale.adapters)}"
    targets = [
        rep.target(
            "unmerged-16-vs-merged",
            f"{key} decode step time over merged (batch {scale.batch})",
            systems[key]["step_over_merged"],
            "<=",
            1.5,
            "x",
        )
    ]
    results = {"systems": systems, "samples": samples, "model": PRESET, "rank": RANK}
    config = {"scale": asdict(scale), "threads": torch.get_num_threads()}
    report = rep.make_report(
        "lora",
        config,
        results,
        targets,
        rep.provenance(["peft"]),
        time.perf_counter() - t_start,
    )
    rep.write_json(Path(args.out) / "lora.json", report)
    return report


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]["scale"]
    rows = [
        [n, s["tokens_per_s"], s["step_s"] * 1e3, s["step_over_merged"], s["step_over_base"]]
        for n, s in report["results"]["systems"].items()
    ]
    table = rep.format_table(
        ["system", "tok/s", "step ms", "x merged", "x base"],
        rows,
        title=(
            f"LoRA decode steps, batch {cfg['batch']} at context {cfg['context']}, rank {RANK} "
            f"on every projection ({report['results']['model']}, random weights)"
        ),
        formats=[None, ".1f", ".2f", ".2f", ".2f"],
    )
    return table + "\n\n" + rep.targets_table(report["targets"])


def build_parser(prog: str = "python -m scripts.bench lora") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model, batch 8, one round")
    p.add_argument("--batch", type=rep.positive_int, default=None, help="sequences per step")
    p.add_argument("--context", type=rep.positive_int, default=None, help="tokens of context")
    p.add_argument("--rounds", type=rep.positive_int, default=None, help="interleaved rounds")
    p.add_argument("--threads", type=rep.positive_int, default=None, help="torch threads")
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(**({"prog": prog} if prog else {})).parse_args(argv)
    report = run(args)
    print(render(report))
    print(f"\nwrote {Path(args.out) / 'lora.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
