"""Speculative sampling is lossless in distribution: tokens produced by drafting and modified
rejection sampling are distributed as the target's, on a vocabulary small enough to count."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from core.engine.sampling import SamplingParams
from core.spec.verify import verify_sampled
from tests.model.conftest import hf_config

from .conftest import make_llm, prompts, run

V, L, K = 3, 3, 2  # vocabulary, tokens generated, drafts per step
N = 6000
CHI2_CRIT = 54.05  # chi-square, 26 degrees of freedom, p = 0.001


def _table(seed: int) -> dict[tuple[int, ...], torch.Tensor]:
    """A distribution over V tokens for every prefix up to length L (a toy language model)."""
    g = torch.Generator().manual_seed(seed)
    return {
        pre: torch.softmax(2.0 * torch.randn(V, generator=g), 0)
        for n in range(L + 1)
        for pre in itertools.product(range(V), repeat=n)
    }


P, Q = _table(1), _table(2)


def _target_joint() -> dict[tuple[int, ...], float]:
    out = {}
    for seq in itertools.product(range(V), repeat=L):
        prob = 1.0
        for i, t in enumerate(seq):
            prob *= float(P[seq[:i]][t])
        out[seq] = prob
    return out


def _generate(gen: torch.Generator, drafter: str) -> tuple[int, ...]:
    seq: list[int] = []
    while len(seq) < L:
        k = min(K, L - len(seq) - 1)
        drafts: list[int] = []
        qrows = []
        for _ in range(k):
            ctx = tuple(seq + drafts)
            if drafter == "model":
                q = Q[ctx]
                qrows.append(q)
                drafts.append(int(torch.multinomial(q, 1, generator=gen)))
            else:  # a deterministic drafter (n-gram-like): q is one-hot
                drafts.append((ctx[-1] + 1) % V if ctx else 0)
        p = torch.stack([P[tuple(seq + drafts[:i])] for i in range(k + 1)])
        q_t = torch.stack(qrows) if qrows else None
        a, tok = verify_sampled(p, drafts, q_t, gen)
        seq += drafts[:a] + [tok]
    return tuple(seq[:L])


def _chi2(counts: Counter, expected: dict[tuple[int, ...], float]) -> float:
    return sum((counts.get(s, 0) - N * e) ** 2 / (N * e) for s, e in expected.items())


@pytest.mark.parametrize("drafter", ["model", "one-hot"])
def test_speculative_sampling_matches_target_distribution(drafter):
    gen = torch.Generator().manual_seed(0)
    counts = Counter(_generate(gen, drafter) for _ in range(N))
    target = _target_joint()
    assert _chi2(counts, target) < CHI2_CRIT
    # the statistic can tell: the draft model's own joint is far from the target's
    q_joint = {}
    for seq in target:
        prob = 1.0
        for i, t in enumerate(seq):
            prob *= float(Q[seq[:i]][t])
        q_joint[seq] = prob
    draft_like = Counter({s: round(N * p) for s, p in q_joint.items()})
    assert _chi2(draft_like, target) > 10 * CHI2_CRIT


def test_verify_sampled_accepts_everything_when_draft_equals_target():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 7, generator=gen), -1)
    drafts = [int(torch.multinomial(p[i], 1, generator=gen)) for i in range(3)]
    for _ in range(50):
        a, _tok = verify_sampled(p, drafts, p[:3], gen)
        assert a == 3


def test_engine_sampling_with_a_same_weights_draft_accepts_nearly_all():
    """Through the engine with temperature 1: a draft model equal to the target has p == q,
    so (up to rounding between batch shapes) every draft is accepted; outputs are valid."""
    ps = prompts([6, 10], seed=2)
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, ignore_eos=True, seed=3)
    spec = {"model": hf_config("llama"), "num_speculative_tokens": 3}
    outs = run(make_llm("llama", speculative_config=spec), ps, sp)
    drafted = sum(o.metrics["num_draft_tokens"] for o in outs)
    accepted = sum(o.metrics["num_accepted_tokens"] for o in outs)
    assert drafted > 0 and accepted >= 0.9 * drafted
    assert all(len(o.token_ids) == 20 for o in outs)
