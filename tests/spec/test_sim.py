"""Speculation in the simulator: the cost model prices a verify step as k + 1 tokens per
sequence over its context, the draft step by the draft's cost model, and the same scheduler
runs with speculation on (lossless on the reference tokens, fewer steps when drafts hit)."""

from __future__ import annotations

import pytest

from core.sched.request import EngineRequest
from core.sched.scheduler import ScheduledChunk, SchedulerConfig, SchedulerOutput
from core.sim.cost import RooflineCostModel
from core.sim.simulator import ReplicaConfig, Simulator
from core.spec import NgramDrafter, SuffixDrafter
from core.spec.sim import SpecSimConfig, draft_step_time, expected_speedup, expected_tokens_per_step
from core.workload.schema import Request


def _cost(model="llama-3-8b"):
    return RooflineCostModel(model, "a100-80g", dtype="bf16")


def _step(ctxs, k):
    chunks = []
    for i, c in enumerate(ctxs):
        req = EngineRequest(f"r{i}", list(range(c + 1)), None)
        chunks.append(ScheduledChunk(req, c, k + 1, True, spec_token_ids=tuple(range(k))))
    return SchedulerOutput(chunks=chunks)


def test_verify_step_costs_k_plus_one_tokens_per_sequence():
    cost = _cost()
    ctxs = [500, 900, 1200, 300]
    decode = cost.step_time((), ctxs)
    for k in (1, 4, 8):
        verify = cost.step_time_for(_step(ctxs, k))
        assert verify == pytest.approx(cost.step_time([(k + 1, c) for c in ctxs], ()))
        # memory-bound: verifying k + 1 tokens costs far less than k + 1 decode steps
        assert decode < verify < (k + 1) * decode
    # a draft step: k one-token steps of the draft model, contexts growing
    small = _cost("tiny-llama-125m")
    d = draft_step_time(small, ctxs, 4)
    assert d == pytest.approx(sum(small.step_time((), [c + i for c in ctxs]) for i in range(4)))
    assert d < 4 * decode


def test_expected_speedup_formula():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_speedup(0.8, 4, 0.1) == pytest.approx(expected_tokens_per_step(0.8, 4) / 1.4)


def _workload(n=6, out_len=40):
    reqs = []
    for i in range(n):
        prompt = [100 + i, 7, 8, 9, 10, 11, 12, 13]
        # a periodic reference answer: prompt lookup predicts it after one period
        ref = [(7 + j % 6) for j in range(out_len)]
        reqs.append(
            Request(
                f"q{i}",
                0.01 * i,
                len(prompt),
                out_len,
                prompt_token_ids=prompt,
                output_token_ids=ref,
            )
        )
    return reqs


def _replica(spec=None):
    return ReplicaConfig(
        _cost(),
        num_kv_blocks=64,
        block_size=4,
        scheduler=SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
        runner_factory=spec.runner if spec is not None else None,
    )


@pytest.mark.parametrize(
    "spec",
    [
        lambda: SpecSimConfig(4, drafter=NgramDrafter(3)),
        lambda: SpecSimConfig(4, drafter=SuffixDrafter(8)),
        lambda: SpecSimConfig(4, acceptance_rate=0.7, draft_cost=_cost("tiny-llama-125m")),
    ],
    ids=["ngram", "suffix", "draft-rate"],
)
def test_simulated_speculation_is_lossless_and_takes_fewer_steps(spec):
    base = Simulator([_replica()]).run(_workload())
    res = Simulator([_replica(spec())]).run(_workload())
    assert [r.output_token_ids for r in res.requests] == [r.output_token_ids for r in base.requests]
    drafted = sum(r.timeline.num_draft_tokens for r in res.requests)
    accepted = sum(r.timeline.num_accepted_tokens for r in res.requests)
    assert 0 < accepted <= drafted
    assert res.total_steps < base.total_steps
    assert res.makespan < base.makespan
    # the same simulation twice (a fresh drafter: a suffix drafter learns): the same result
    again = Simulator([_replica(spec())]).run(_workload())
    assert again.fingerprint() == res.fingerprint()


def test_useless_drafts_cost_time():
    spec = SpecSimConfig(4, acceptance_rate=0.0, draft_cost=_cost("tiny-llama-125m"))
    base = Simulator([_replica()]).run(_workload())
    res = Simulator([_replica(spec)]).run(_workload())
    assert sum(r.timeline.num_accepted_tokens for r in res.requests) == 0
    assert res.makespan > base.makespan
