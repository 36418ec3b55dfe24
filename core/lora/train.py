"""Fine-tuning LoRA adapters of a zoo model on the sub-tasks of :mod:`core.lora.tasks`, and
measuring them through the serving engine.

A :class:`LoRARecipe` says everything a run depends on. The base model is frozen and runs
through :func:`core.model.training.dense_forward` (the engine's own layers); forward hooks add
trainable ``B A`` products to every adapted linear (:class:`TrainableLoRA`, PEFT's layout:
``A`` uniform in ``+-1/sqrt(in)``, ``B`` zero, scaling ``alpha / r``). AdamW, linear warm-up
then cosine decay to ``min_lr_ratio``, gradient clipping, loss on completions only. Step ``k``'s
batch is a pure function of the recipe and ``k`` (never a held-out prompt), and a checkpoint
every ``checkpoint_every`` steps makes an interrupted run resume where it stopped and end with
the weights an uninterrupted one reaches (one seed, one thread count). The result is a PEFT
folder (:func:`core.lora.adapter.save_adapter`) that ``peft`` and our engine both load.

``python -m core.lora.train`` trains every task's adapter on ``data/models/zoo-small`` and
writes them with a model card; docs/core/lora.md shows the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from core.data import DATA_DIR
from core.model import load_model
from core.model.base import CausalLM
from core.zoo.tasks import EOS, Example, check_answer
from core.zoo.train import Batch, collate, encode_example, lm_loss, pad_token_id

from .adapter import save_adapter
from .request import LoRARequest
from .runtime import LinearSlice, adaptable_linears
from .tasks import ADAPTER_TASKS, AdapterTask, check_final, task_examples

__all__ = [
    "LoRARecipe",
    "TrainState",
    "TrainableLoRA",
    "default_base",
    "evaluate_adapters",
    "heldout_set",
    "train_adapter",
    "write_card",
]

BASE_ENV = "SERVELAB_LORA_BASE"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def default_base() -> Path:
    """The base model adapters are trained on: ``$SERVELAB_LORA_BASE`` or
    ``data/models/zoo-small``."""
    return Path(os.environ.get(BASE_ENV) or DATA_DIR / "models" / "zoo-small")


@dataclass(frozen=True)
class LoRARecipe:
    """One adapter's fine-tune: the sub-task (a key of :data:`~core.lora.tasks.ADAPTER_TASKS`),
    rank, alpha and target modules (HF short names), ``steps`` optimizer steps of
    ``batch_examples`` problems, AdamW settings, the seed, and ``heldout`` problems kept out
    of training for measuring."""

    task: str
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    steps: int = 150
    batch_examples: int = 16
    lr: float = 2e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    heldout: int = 100
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        if self.task not in ADAPTER_TASKS:
            raise ValueError(
                f"unknown LoRA sub-task {self.task!r}; tasks: {', '.join(ADAPTER_TASKS)}"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A hash of the recipe and its task's description (a changed format is another run)."""
        content = {**self.to_json(), "task_description": ADAPTER_TASKS[self.task].description}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        floor = self.min_lr_ratio
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class TrainableLoRA(torch.nn.Module):
    """Trainable LoRA factors hooked onto a frozen model's linears (``targets``: HF short names
    such as ``q_proj``; fused linears are adapted slice by slice). While it is attached, every
    forward of the model adds ``scaling * x A^T B^T`` to each adapted slice's output;
    :meth:`detach` removes the hooks. :meth:`weights` is what
    :func:`~core.lora.adapter.save_adapter` writes (unscaled, as PEFT stores them)."""

    def __init__(
        self, model: CausalLM, rank: int, alpha: float, targets: Sequence[str], seed: int
    ) -> None:
        super().__init__()
        self.rank, self.scaling = rank, alpha / rank
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        self._hf: dict[str, str] = {}  # parameter key -> HF module name
        self._handles = []
        for _, module, slices in adaptable_linears(model):
            chosen = [s for s in slices if s.hf_module.rsplit(".", 1)[-1] in targets]
            if not chosen:
                continue
            for s in chosen:
                key = s.hf_module.replace(".", "__")
                bound = module.in_features**-0.5
                a = (torch.rand(rank, module.in_features, generator=gen) * 2 - 1) * bound
                self.a[key] = torch.nn.Parameter(a.to(model.dtype))
                self.b[key] = torch.nn.Parameter(torch.zeros(s.size, rank, dtype=model.dtype))
                self._hf[key] = s.hf_module
            self._handles.append(module.register_forward_hook(self._hook(slices, chosen)))
        if not self._hf:
            raise ValueError(f"no linear of the model matches the targets {list(targets)}")

    def _hook(self, slices: list[LinearSlice], chosen: list[LinearSlice]):
        adapted = {s.hf_module for s in chosen}

        def add(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor):
            x = args[0]
            pieces = []
            for s in slices:
                piece = out[..., s.offset : s.offset + s.size]
                if s.hf_module in adapted:
                    key = s.hf_module.replace(".", "__")
                    piece = piece + self.scaling * ((x @ self.a[key].T) @ self.b[key].T)
                pieces.append(piece)
            return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

        return add

    def weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {hf: (self.a[k].detach(), self.b[k].detach()) for k, hf in self._hf.items()}

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done, wall and CPU seconds spent (this process), one
    log row per step."""

    step: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)


def heldout_set(task: AdapterTask, n: int) -> list[tuple[Example, Example]]:
    """The ``n`` held-out problems of ``task`` (zoo format, task format), the same for every
    recipe: training never sees their prompts."""
    return task_examples(task, "heldout", n)


def step_batch(recipe: LoRARecipe, tok: Tokenizer, step: int, exclude: frozenset[str]) -> Batch:
    """Step ``step``'s batch: a pure function of the recipe's task, seed and ``step``."""
    task = ADAPTER_TASKS[recipe.task]
    pairs = task_examples(task, f"train:{recipe.seed}:{step}", recipe.batch_examples, exclude)
    rows = sorted((encode_example(tok, styled) for _, styled in pairs), key=lambda r: len(r[0]))
    return collate(rows, pad_token_id(tok))


def _load_base(base_dir: Path) -> tuple[CausalLM, Tokenizer]:
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"{base_dir}: no checkpoint (config.json) to train adapters on")
    model, _ = load_model(str(base_dir), dtype=torch.float32, device="cpu")
    model.set_linear_backend("torch")  # autograd needs plain torch linears
    return model, Tokenizer.from_file(str(base_dir / "tokenizer.json"))


def train_adapter(
    recipe: LoRARecipe,
    base_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    max_steps: int | None = None,
) -> tuple[Path, TrainState]:
    """Train ``recipe`` on the base checkpoint, resuming from ``work_dir/checkpoint.pt`` when
    it holds a run of the same recipe, and write the PEFT folder ``out_dir`` (with
    ``training.json``: recipe, steps, seconds, losses). ``max_steps`` stops early (tests: the
    folder is then not written). Returns the folder and the state."""
    from tqdm.auto import tqdm

    base, work, out = Path(base_dir), Path(work_dir), Path(out_dir)
    model, tok = _load_base(base)
    lora = TrainableLoRA(model, recipe.rank, recipe.alpha, recipe.targets, recipe.seed)
    opt = torch.optim.AdamW(
        lora.parameters(), lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay
    )
    state = TrainState()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        if saved["recipe"] != recipe.digest():
            raise ValueError(
                f"{ckpt}: a checkpoint of another recipe ({saved['recipe']}, this one is "
                f"{recipe.digest()}); remove it or train into another directory"
            )
        lora.load_state_dict(saved["lora"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
    exclude = frozenset(
        o.prompt for o, _ in heldout_set(ADAPTER_TASKS[recipe.task], recipe.heldout)
    )
    stop = recipe.steps if max_steps is None else min(recipe.steps, max_steps)
    bar = tqdm(
        total=recipe.steps, initial=state.step, desc=f"lora {recipe.task}", disable=not progress
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    while state.step < stop:
        batch = step_batch(recipe, tok, state.step, exclude)
        lr = recipe.lr_at(state.step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora.parameters(), recipe.grad_clip)
        opt.step()
        state.step += 1
        state.log.append({"step": state.step, "loss": loss.item(), "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if state.step % recipe.checkpoint_every == 0 or state.step == stop:
            state.seconds += time.perf_counter() - started
            state.cpu_seconds += time.process_time() - cpu_started
            started, cpu_started = time.perf_counter(), time.process_time()
            _save(ckpt, lora, opt, state, recipe.digest())
    bar.close()
    lora.detach()
    if state.step >= recipe.steps:
        save_adapter(out, lora.weights(), lora_alpha=recipe.alpha, base_model=base.name)
        info = {
            "recipe": recipe.to_json(),
            "steps": state.step,
            "seconds": round(state.seconds, 1),
            "cpu_seconds": round(state.cpu_seconds, 1),
            "threads": torch.get_num_threads(),
            "first_loss": state.log[0]["loss"] if state.log else None,
            "final_loss": _mean_tail([r["loss"] for r in state.log], 10),
        }
        (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out, state


def _mean_tail(values: Sequence[float], n: int) -> float | None:
    tail = list(values)[-n:]
    return sum(tail) / len(tail) if tail else None


def _save(
    path: Path, lora: TrainableLoRA, opt: torch.optim.Optimizer, state: TrainState, digest: str
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "lora": lora.state_dict(),
            "optimizer": opt.state_dict(),
            "state": dataclasses.asdict(state),
            "recipe": digest,
        },
        tmp,
    )
    os.replace(tmp, path)


def evaluate_adapters(
    base_dir: str | os.PathLike[str],
    adapters: dict[str, str | os.PathLike[str]],
    tasks: Sequence[str],
    n: int = 100,
) -> list[dict[str, Any]]:
    """Greedy answers of the base model and of every adapter on the held-out problems of every
    task, served by :class:`core.engine.LLM` with LoRA enabled (adapters unmerged, all in one
    batch). One row per (task, model): ``accuracy`` in the task's format
    (:func:`~core.lora.tasks.check_final`) and ``zoo_accuracy``, the final answer in the zoo's
    own format (what the base model was trained to write)."""
    from core.engine import LLM, SamplingParams

    llm = LLM(
        str(base_dir),
        enable_lora=True,
        max_loras=max(1, len(adapters)),
        max_lora_rank=64,
        max_num_seqs=64,
    )
    requests: dict[str, LoRARequest | None] = {"base": None}
    for i, (name, path) in enumerate(sorted(adapters.items())):
        requests[name] = LoRARequest(name, i + 1, str(path))
    rows = []
    for task_name in tasks:
        task = ADAPTER_TASKS[task_name]
        pairs = heldout_set(task, n)
        prompts = [styled.prompt for _, styled in pairs]
        params = SamplingParams(temperature=0, max_tokens=task.max_tokens)
        for model_name, lreq in requests.items():
            outs = llm.generate(prompts, params, lora_request=lreq, use_tqdm=False)
            ok = zoo_ok = 0
            for (orig, styled), o in zip(pairs, outs, strict=True):
                text, stopped = o.text or "", o.finish_reason == "stop"
                ok += check_final(styled, text, stopped)
                zoo_ok += stopped and check_answer(orig, text + EOS)
            rows.append(
                {
                    "task": task_name,
                    "model": model_name,
                    "problems": n,
                    "accuracy": ok / n,
                    "zoo_accuracy": zoo_ok / n,
                }
            )
    return rows


def write_card(out: Path, base: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``out/README.md``: what each adapter was trained on, how, and its measured accuracy
    beside the base model's (``rows`` from :func:`evaluate_adapters`)."""
    acc = {(r["task"], r["model"]): r for r in rows}
    names = sorted({r["task"] for r in rows}, key=list(ADAPTER_TASKS).index)
    lines = [
        f"# {out.name}",
        "",
        f"LoRA adapters of `{base.name}` fine-tuned in this repository, one per sub-task of "
        "`core.lora.tasks` (zoo problems whose answer is written another way). Each folder is "
        "in the PEFT format (`adapter_config.json` + `adapter_model.safetensors`; `peft` and "
        "`core.engine.LLM(enable_lora=True)` load it) with `training.json` (recipe, steps, "
        "time, losses). Rebuild with `python -m core.lora.train` (under 20 CPU-seconds per "
        "adapter at one thread; equal weights on one machine and thread count).",
        "",
        "## Data and recipe",
        "",
        "Problems generated from seeds by `core.zoo.tasks` and restyled by `core.lora.tasks`; "
        "each step draws a fresh batch, and the held-out problems below are never trained on.",
        "",
        "| adapter | sub-task | rank / alpha | targets | steps x batch | lr | CPU s (1 thread) | "
        "final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        info = json.loads((out / n / "training.json").read_text())
        r = info["recipe"]
        lines.append(
            f"| `{n}` | {ADAPTER_TASKS[n].description} | {r['rank']} / {r['alpha']:g} | "
            f"{', '.join(r['targets'])} | {r['steps']} x {r['batch_examples']} | {r['lr']:g} | "
            f"{info['cpu_seconds']:.0f} | {info['final_loss']:.3f} |"
        )
    lines += [
        "",
        "AdamW (betas 0.9/0.999, no weight decay), linear warm-up over 10 steps then cosine to "
        "0.1x, gradient clip 1, loss on the completion only, seed 0; the base model is frozen.",
        "",
        "## Accuracy on held-out problems",
        "",
        "Greedy through our engine, exact final answer in the sub-task's format, the answer "
        "ended with EOS. *Base, zoo format* is the base model's accuracy on the same problems in "
        "the format it was trained on (what the adapter keeps of the skill).",
        "",
        "| sub-task | problems | base | its adapter | best other adapter | base, zoo format |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        others = [acc[(n, m)]["accuracy"] for m in names if m != n and (n, m) in acc]
        lines.append(
            f"| `{n}` | {acc[(n, 'base')]['problems']} | {acc[(n, 'base')]['accuracy']:.0%} | "
            f"**{acc[(n, n)]['accuracy']:.0%}** | {max(others, default=float('nan')):.0%} | "
            f"{acc[(n, 'base')]['zoo_accuracy']:.0%} |"
        )
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m core.lora.train",
        description="Fine-tune LoRA adapters of a zoo model on sub-tasks and measure them.",
    )
    p.add_argument("tasks", nargs="*", default=list(ADAPTER_TASKS), help="sub-tasks to train")
    p.add_argument("--base", type=Path, default=None, help="base checkpoint folder")
    p.add_argument("--out", type=Path, default=None, help="where the adapter folders go")
    p.add_argument("--work", type=Path, default=Path("results/lora-train"), help="checkpoints")
    p.add_argument("--steps", type=int, default=None, help="default: the task's own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval", type=int, default=100, help="held-out problems per task")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = args.base or default_base()
    out = args.out or base.parent / f"{base.name}-lora"
    for name in args.tasks:
        recipe = LoRARecipe(name, steps=args.steps or ADAPTER_TASKS[name].steps)
        train_adapter(recipe, base, out / name, args.work / name)
    adapters = {name: out / name for name in ADAPTER_TASKS if (out / name).is_dir()}
    rows = evaluate_adapters(base, adapters, list(adapters), args.eval)
    (out / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_card(out, base, rows)
    for r in rows:
        print(
            f"{r['task']:>15} {r['model']:>15} {r['accuracy']:6.1%} (zoo format {r['zoo_accuracy']:.1%})"
        )


if __name__ == "__main__":
    _main()
