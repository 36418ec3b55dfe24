"""The LoRA cost model (fit, roofline, pricing of merged/unmerged steps and switches) and the
LoRA schedulers in the simulator."""

from functools import partial

import pytest

from core.lora import (
    LinearStepCost,
    LoRACostModel,
    LoRAProfile,
    LoRARequest,
    LoRAScheduler,
    LoRAStep,
    MergedOnlyScheduler,
    SingleAdapterScheduler,
)
from core.sched.request import EngineRequest
from core.sched.scheduler import ScheduledChunk, SchedulerConfig, SchedulerOutput
from core.sim import ReplicaConfig, Simulator
from core.workload.schema import Request

BASE = LinearStepCost(0.01, 0.0, 0.001)
PROFILE = LoRAProfile(0.002, 0.003, 0.0005, merge_s=0.05, unmerge_s=0.04)


def step(loras, step=None, tokens=1):
    chunks = [
        ScheduledChunk(
            EngineRequest(f"r{i}", [1, 2], None, lora=lr), start=2, num_tokens=tokens, sample=True
        )
        for i, lr in enumerate(loras)
    ]
    return SchedulerOutput(chunks=chunks, lora_step=step)


A, B = LoRARequest("a", 1), LoRARequest("b", 2)


def test_prices_unmerged_merged_and_switches():
    cost = LoRACostModel(BASE, PROFILE)
    base = BASE.step_time_for(step([A, B, None]))
    assert base == pytest.approx(0.013)
    # unmerged: 2 adapters, 2 adapted tokens
    assert cost.step_time_for(step([A, B, None])) == pytest.approx(base + 0.002 + 0.006 + 0.001)
    merged = step([A, A], LoRAStep("a", "a"))
    assert cost.step_time_for(merged) == pytest.approx(BASE.step_time_for(merged))
    switch = step([B, B], LoRAStep("b", "a"))
    assert cost.step_time_for(switch) == pytest.approx(BASE.step_time_for(switch) + 0.09)
    to_unmerged = step([A, B], LoRAStep(None, "a", ("a", "b")))
    assert cost.step_time_for(to_unmerged) == pytest.approx(
        BASE.step_time_for(to_unmerged) + 0.04 + 0.002 + 0.006 + 0.001
    )
    assert cost.step_time_for(SchedulerOutput()) == 0.0


def test_fit_recovers_known_terms():
    samples = [(t, a, 0.001 + 0.002 * a + 0.0001 * t) for t in (1, 8, 32, 128) for a in (1, 4)]
    p = LoRAProfile.fit(samples, 0.1, 0.2)
    assert p.unmerged_fixed_s == pytest.approx(0.001, abs=1e-9)
    assert p.unmerged_per_adapter_s == pytest.approx(0.002)
    assert p.unmerged_per_token_s == pytest.approx(0.0001)


def test_roofline_scales_with_model_and_rank():
    small = LoRAProfile.roofline("llama-2-7b", "a100-80g", rank=16)
    big = LoRAProfile.roofline("llama-2-70b", "a100-80g", rank=16, tp=4)
    wide = LoRAProfile.roofline("llama-2-7b", "a100-80g", rank=64)
    assert 0.005 < small.merge_s < 0.05  # dLoRA measured ~0.02 s on 7B
    assert big.unmerged_fixed_s > small.unmerged_fixed_s  # more layers, more launches
    assert wide.unmerged_per_adapter_s > 3 * small.unmerged_per_adapter_s  # 4x the weights
    assert wide.merge_s > small.merge_s
    with pytest.raises(ValueError, match="unknown LoRA target"):
        LoRAProfile.roofline("llama-2-7b", "a100-80g", targets=["nope"])


def test_profile_round_trip_and_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(__import__("json").dumps({"lora": PROFILE.to_dict()}))
    assert LoRAProfile.load(path) == PROFILE
    with pytest.raises(ValueError, match="missing merge_s"):
        LoRAProfile.from_dict({k: v for k, v in PROFILE.to_dict().items() if k != "merge_s"})
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        LoRAProfile(-1, 0, 0, 0, 0)


class Recorder:
    """A cost model that remembers every step's adapters and LoRA mode."""

    def __init__(self, inner):
        self.inner, self.steps = inner, []

    def step_time_for(self, out):
        names = [c.request.lora.lora_name for c in out.chunks]
        self.steps.append((names, out.lora_step))
        return self.inner.step_time_for(out)


def workload(n=24, adapters=3):
    return [
        Request(
            f"q{i}",
            i * 0.01,
            8,
            4,
            metadata={"lora": LoRARequest(f"ad{i % adapters}", 1 + i % adapters)},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("cls", [LoRAScheduler, MergedOnlyScheduler, SingleAdapterScheduler])
def test_schedulers_in_the_simulator(cls):
    rec = Recorder(LoRACostModel(BASE, PROFILE))
    cfg = ReplicaConfig(
        rec,
        num_kv_blocks=64,
        scheduler=SchedulerConfig(max_num_seqs=8),
        prefix_cache="none",
        scheduler_factory=partial(cls, max_loras=2),
    )
    res = Simulator([cfg]).run(workload())
    assert all(r.num_output_tokens == 4 for r in res.requests)
    for names, lstep in rec.steps:
        if not names:
            continue
        if cls is LoRAScheduler:
            assert len(set(names)) <= 2 and lstep.merged is None
        else:  # one adapter at a time
            assert len(set(names)) == 1
            assert lstep.merged == (names[0] if cls is MergedOnlyScheduler else None)
    switches = sum(s.num_switch_ops for _, s in rec.steps if s is not None)
    assert (switches > 0) == (cls is MergedOnlyScheduler)


def test_merged_only_is_faster_for_one_adapter_slower_for_many():
    def makespan(cls, adapters):
        cfg = ReplicaConfig(
            LoRACostModel(BASE, PROFILE),
            num_kv_blocks=64,
            scheduler=SchedulerConfig(max_num_seqs=8),
            prefix_cache="none",
            scheduler_factory=cls,
        )
        return Simulator([cfg]).run(workload(adapters=adapters)).makespan

    assert makespan(MergedOnlyScheduler, 1) < makespan(LoRAScheduler, 1)
    assert makespan(MergedOnlyScheduler, 8) > makespan(LoRAScheduler, 8)


def test_lora_side_imports_without_torch():
    from tests.test_import_boundary import BLOCK, run

    run(
        BLOCK + "import core.lora, core.lora.scheduler, core.lora.cost\nimport sys\n"
        "assert 'torch' not in sys.modules"
    )
