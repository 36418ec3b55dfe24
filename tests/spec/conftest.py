"""Tiny random models and a scripted drafter for the speculative-decoding tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.engine import LLM
from core.engine.sampling import SamplingParams
from core.spec import Draft, Drafter, DraftRequest
from tests.model.conftest import hf_config

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def prompts(lengths: Sequence[int], seed: int = 0, vocab: int = 512) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def make_llm(arch: str, **kw) -> LLM:
    opts = dict(seed=0, num_kv_blocks=96, block_size=4, max_num_batched_tokens=64)
    opts.update(kw)
    return LLM(hf_config(arch), **opts)


def run(llm: LLM, ps, sp=GREEDY):
    return llm.generate(ps, sp, use_tqdm=False)


class ScriptedDrafter(Drafter):
    """Proposes the known continuation of each prompt (what the target will say), with every
    ``wrong_every``-th draft replaced by a wrong token: acceptance and rejection on cue."""

    name = "scripted"

    def __init__(self, refs: dict[tuple[int, ...], list[int]], wrong_every: int = 0) -> None:
        self.refs = refs
        self.wrong_every = wrong_every
        self.calls = 0

    def propose(self, requests: Sequence[DraftRequest]) -> list[Draft]:
        out = []
        for r in requests:
            self.calls += 1
            toks: list[int] = []
            for prompt, ref in self.refs.items():
                if tuple(r.token_ids[: len(prompt)]) == prompt:
                    done = len(r.token_ids) - len(prompt)
                    toks = list(ref[done : done + r.num_drafts])
                    break
            if self.wrong_every:
                for i in range(len(toks)):
                    if (self.calls + i) % self.wrong_every == 0:
                        toks[i] = (toks[i] + 1) % 512
            out.append(Draft(toks))
        return out


def with_drafter(llm: LLM, drafter: Drafter, k: int) -> LLM:
    """Swap the drafter of a speculating LLM (built with any method) for ``drafter``."""
    runner = llm.engine.runner
    runner.drafter = drafter  # type: ignore[attr-defined]
    runner.k = k  # type: ignore[attr-defined]
    return llm


NGRAM_K4 = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
