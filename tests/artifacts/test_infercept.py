"""The InferCept artifact: smoke scale end to end (simulated A100s, the per-type breakdown and the
real engine), the probe's accounting (it changes no decision; its sums on hand-made steps), and
the claim measures on hand-made results."""

from __future__ import annotations

import pandas as pd
import pytest

from artifacts.infercept import artifact as ic
from artifacts.infercept import real, sim
from artifacts.infercept.artifact import ARTIFACT
from artifacts.infercept.plots import SLO_FACTOR, slo_rates
from artifacts.infercept.policy import LinearIterationCost
from artifacts.infercept.probe import StepProbe, recomputed_in, without_recompute
from core.artifact import NotApplicable, Results, RunContext, RunOptions, Scale, run_artifact
from core.artifact.report import evaluate_claim
from core.data import DATA_DIR, sha256_file
from core.metrics import rotated_order
from core.sched import (
    EngineRequest,
    ScheduledChunk,
    SchedulerConfig,
    SchedulerOutput,
    make_intercept_policy,
)
from core.sim import ReplicaConfig, SimSampling, Simulator
from core.sim.profiled import load_pinned_profile
from core.workload.schema import Interception, Request


@pytest.mark.slow
def test_smoke_scale_end_to_end(tmp_path):
    s = run_artifact(ARTIFACT, RunOptions(scale=Scale.SMOKE, out=tmp_path, jobs=2, progress=False))
    for f in (
        "claims.json",
        "CHECKLIST.md",
        "metrics.csv",
        "provenance.json",
        "fig-norm-latency.png",
        "fig-completed-rps.png",
        "fig-slo-rate.png",
        "fig-recompute-share.png",
        "fig-waste.png",
        "fig-breakdown.png",
        "fig-real.png",
    ):
        assert (tmp_path / f).is_file(), f
    m = pd.read_csv(tmp_path / "metrics.csv")
    simulated = m[m.experiment.isin(["sim", "breakdown"])]
    # every request completes, but prompts over the 2048-token context, rejected as vLLM does
    # (the same ones under every policy)
    assert (simulated.completed + simulated.failed == simulated.requests).all()
    assert (simulated.failed <= 0.02 * simulated.requests).all()
    assert (simulated.groupby(["experiment", "kind", "rate"]).failed.nunique() == 1).all()
    assert simulated.recompute_share.between(0, 1).all()
    s1 = m[m.experiment == "sim"].set_index(["rate", "policy"])
    assert set(s1.index.get_level_values("policy")) == set(sim.POLICIES)
    for rate in (1.0, 3.0):
        # where the KV goes: only the discarding policies recompute and only Swap stalls on the
        # link; InferCept keeps some contexts, so it recomputes less than vLLM
        assert (
            s1.at[(rate, "vllm"), "recomputed_tokens"]
            > s1.at[(rate, "infercept"), "recomputed_tokens"]
            > 0
        )
        assert s1.at[(rate, "vllm"), "waste_recompute_gbs"] > 0
        assert (
            s1.at[(rate, "swap"), "swap_out_tokens"] > 0
            and s1.at[(rate, "swap"), "swap_stall_s"] > 0
        )
        assert (
            s1.at[(rate, "preserve"), "waste_preserve_gbs"]
            > s1.at[(rate, "infercept"), "waste_preserve_gbs"]
        )
        assert s1.at[(rate, "vllm"), "waste_preserve_gbs"] == 0
    assert s1.at[(1.0, "preserve"), "recomputed_tokens"] == 0  # no memory pressure at 1 req/s
    real_rows = m[m.experiment == "real"]
    cfg = real.REAL_SCALE[Scale.SMOKE]
    order = rotated_order(real.REAL_POLICIES, cfg["rounds"], cfg["all_rounds"], real.COMPARED)
    assert len(real_rows) == len(order)
    assert set(real_rows.policy) == set(real.REAL_POLICIES)
    assert (real_rows.completed == real_rows.requests).all()
    # greedy tokens do not depend on what happened to the KV
    assert (real_rows.identical_outputs == real_rows.requests).all()
    rec = real_rows.groupby("policy").recomputed_tokens
    assert rec.min()["vllm"] > 0 and rec.max()["preserve"] <= rec.min()["vllm"]
    assert (real_rows.tokens_computed >= real_rows.output_tokens).all()
    assert (real_rows.engine_steps > 0).all()
    assert (real_rows.profile_sha256 == sha256_file(DATA_DIR / real_rows.profile.iloc[0])).all()
    claims = {c["id"]: c for c in s.claims}
    assert set(claims) == {c.id for c in ARTIFACT.claims}
    assert claims["real-identical"]["passed"] is True and claims["real-complete"]["passed"] is True
    # smoke runs 3 rounds of vLLM and InferCept on the engine's CPU clock: the ordering is
    # measured (a median of paired rounds), whatever it shows at 8 requests
    assert claims["real-ordering"]["status"] in ("pass", "FAIL")
    assert claims["real-ordering"]["measured"] is not None
    assert (real_rows.clock == real.CLOCK).all() and (real_rows.cpu_share <= 1.05).all()
    # a claim is n/a only with a reason, and notes describe this run
    for c in claims.values():
        assert c["status"] != "n/a" or c["reason"]
    assert "smoke scale" in claims["sustainable-rate"]["note"]
    assert real_rows.profile.iloc[0] in claims["real-recompute"]["note"]


# -- the probe --------------------------------------------------------------------------------


def _one_call_workload(duration: float) -> list[Request]:
    # one request: a 100-token prompt, pauses after its 10th token for `duration` seconds, gets 5
    # tokens back, and generates 10 more
    return [
        Request(
            "r0",
            0.0,
            100,
            20,
            prompt_token_ids=list(range(4, 104)),
            interceptions=[Interception(10, duration, 5, "tool", (7, 7, 7, 7, 7))],
        )
    ]


def _replica(
    cost, policy, probe: bool, *, link=None, blocks: int = 64, sched: SchedulerConfig | None = None
):
    link = cost if link is None else link
    kw = dict(
        num_kv_blocks=blocks,
        block_size=16,
        prefix_cache="none",
        num_host_blocks=blocks,
        scheduler=sched or SchedulerConfig(max_num_batched_tokens=256, max_model_len=512),
    )
    if probe:
        p = StepProbe(cost, link, policy)
        return ReplicaConfig(**kw, **p.replica_kwargs()), p
    return ReplicaConfig(cost=cost, host_link=link, intercept=policy, **kw), None


COST = LinearIterationCost(1e-4, 5e-3, kv_bytes_per_token=1000, host_bandwidth=1e7)


def test_preserve_waste_is_the_paused_context_times_the_call():
    rep, probe = _replica(COST, make_intercept_policy("preserve"), probe=True)
    Simulator([rep]).run(_one_call_workload(2.0))
    # paused after its 10th token: the prompt and 9 generated tokens have KV (the 10th is not
    # computed yet); the call returns at exactly pause + 2 s on an idle replica
    assert probe.totals.preserve_waste == pytest.approx((100 + 9) * 2.0)
    assert probe.totals.recompute_s == 0 and probe.totals.swap_stall_s == 0


def test_discard_recompute_time_and_swap_stall_are_accounted():
    rep, probe = _replica(COST, make_intercept_policy("vllm"), probe=True)
    Simulator([rep]).run(_one_call_workload(2.0))
    t = probe.totals
    assert t.preserve_waste == 0
    # the 109 discarded tokens are recomputed in the step that also computes the 6 new ones
    # (the 10th token and the 5 returned): the marginal cost of 109 tokens
    assert t.recompute_s == pytest.approx(109 * COST.a_s)
    assert t.recompute_waste == pytest.approx(109 * COST.a_s * 115)
    rep, probe = _replica(COST, make_intercept_policy("swap"), probe=True)
    Simulator([rep]).run(_one_call_workload(2.0))
    t = probe.totals
    # 7 blocks (109 tokens rounded up) out, then in; vLLM's swap is not overlapped
    assert t.swap_out_tokens == t.swap_in_tokens == 112
    assert t.swap_stall_s == pytest.approx(2 * COST.swap_s(112))
    assert t.recompute_s == 0


def test_probe_changes_no_decision():
    # memory pressure, discards, swaps and chunked recompute: the probed run is the same run
    wl = sim.workload("mixed", 40, 4.0, 0)
    cost, link = sim.cost_model("gpt-j-6b"), sim.SETUPS["gpt-j-6b"].policy_cost
    sched = SchedulerConfig(max_num_batched_tokens=2048, max_model_len=2048)
    for name in ("infercept", "swap", "vllm"):
        policy = sim.make_policy(name, "gpt-j-6b", wl)
        runs = []
        for probe in (False, True):
            rep, _ = _replica(cost, policy, probe, link=link, blocks=600, sched=sched)
            res = Simulator([rep]).run(wl)
            runs.append(
                {
                    r.request_id: (tuple(r.timeline.token_times), r.timeline.recomputed_tokens)
                    for r in res.requests
                }
            )
        assert runs[0] == runs[1], name


def test_recomputed_part_of_a_step():
    a = EngineRequest("a", [1] * 50, SimSampling(10))
    a.max_computed_tokens = 40  # 40 tokens computed before, then dropped
    b = EngineRequest("b", [1] * 8, SimSampling(10))
    out = SchedulerOutput(chunks=[ScheduledChunk(a, 32, 16, True), ScheduledChunk(b, 7, 1, True)])
    assert recomputed_in(out) == 8
    rest = without_recompute(out)
    assert [(c.request.request_id, c.start, c.num_tokens) for c in rest.chunks] == [
        ("a", 40, 8),
        ("b", 7, 1),
    ]
    only = SchedulerOutput(chunks=[ScheduledChunk(a, 0, 32, False)])
    assert recomputed_in(only) == 32 and without_recompute(only).chunks == []


def test_cpu_policy_cost_is_a_line_fitted_to_the_profile():
    (config,) = real.points(RunContext(Scale.SMOKE, 0, None))
    cost, saturation = real.fitted_cost(config)
    assert cost.a_s > 0 and cost.c_s > 0
    assert saturation == round(cost.c_s / cost.a_s)
    assert cost.kv_bytes_per_token == real.kv_bytes_per_token(config) == 2 * 4 * 2 * 64 * 4


def test_real_points_carry_the_profile_and_its_sha256():
    (config,) = real.points(RunContext(Scale.DEFAULT, 0, None))
    assert config["profile_sha256"] == sha256_file(DATA_DIR / config["profile"])
    with pytest.raises(ValueError, match="sha256"):
        load_pinned_profile(config["profile"], "f" * 64)


def test_real_mode_interleaves_vllm_and_infercept_round_by_round():
    order = rotated_order(real.REAL_POLICIES, 3, 1, real.COMPARED)
    assert order == [
        (0, "vllm"),
        (0, "improved-discard"),
        (0, "swap"),
        (0, "preserve"),
        (0, "infercept"),
        (1, "infercept"),
        (1, "vllm"),
        (2, "vllm"),
        (2, "infercept"),
    ]
    # every round runs both compared policies, the one that goes first alternates (ABBAAB: a
    # drift of the machine falls on both), and no policy runs more than twice in a row
    runs = [p for _, p in order if p in real.COMPARED]
    assert runs == ["vllm", "infercept", "infercept", "vllm", "vllm", "infercept"]
    assert not any(a == b == c for a, b, c in zip(runs, runs[1:], runs[2:], strict=False))
    assert (
        {r for r, p in order if p == "vllm"}
        == {r for r, p in order if p == "infercept"}
        == {0, 1, 2}
    )
    d = real.REAL_SCALE[Scale.DEFAULT]
    assert d["rounds"] >= real.MIN_ROUNDS


# -- claim measures ---------------------------------------------------------------------------


def _results(**frames: pd.DataFrame) -> Results:
    return Results(frames, RunContext(Scale.SMOKE, 0, None))


def _sim_rows() -> pd.DataFrame:
    # unloaded 0.01 s/token, so the bound is 0.05; (rate, policy) -> (latency, completed/s, share)
    table = {
        (1.0, "vllm"): (0.03, 0.8, 0.4),
        (1.0, "infercept"): (0.015, 0.9, 0.1),
        (2.0, "vllm"): (0.09, 0.7, 0.6),
        (2.0, "infercept"): (0.02, 1.8, 0.15),
        (4.0, "vllm"): (0.5, 0.6, 0.7),
        (4.0, "infercept"): (0.08, 1.5, 0.2),
    }
    rows = [
        {
            "setup": "m",
            "rate": rate,
            "policy": p,
            "norm_latency_mean": lat,
            "completed_rps": done,
            "recompute_share": share,
            "unloaded_norm_latency": 0.01,
        }
        for (rate, p), (lat, done, share) in table.items()
    ]
    return pd.DataFrame(rows)


def test_slo_rate_interpolates_between_the_last_rate_within_the_bound_and_the_next():
    s = slo_rates(_sim_rows()).set_index("policy")
    assert SLO_FACTOR == 5.0
    # vLLM: 0.03 at 1 req/s meets 0.05, 0.09 at 2 does not: 1 + (0.02 / 0.06)
    assert s.at["vllm", "slo_rate"] == pytest.approx(1 + 1 / 3)
    assert s.at["vllm", "last_ok_rate"] == 1.0
    # InferCept: 0.02 at 2 meets it, 0.08 at 4 does not: 2 + 2 * (0.03 / 0.06)
    assert s.at["infercept", "slo_rate"] == pytest.approx(3.0)


def test_sim_claim_measures_on_hand_made_rows():
    r = _results(sim=_sim_rows())
    assert ic.sustainable_rate_gain(r) == pytest.approx(3.0 / (1 + 1 / 3))
    assert ic.completed_rps_gain(r) == pytest.approx(1.8 / 0.7)  # the best rate: 2 req/s
    # vLLM's operating point is 1 req/s (its highest rate within the bound)
    assert ic.vllm_recompute_share(r) == pytest.approx(0.4)
    assert ic.infercept_recompute_left(r) == pytest.approx(0.25)
    # a vLLM that misses the bound everywhere has no sustainable rate: no ratio
    f = _sim_rows()
    f.loc[f.policy == "vllm", "norm_latency_mean"] = 1.0
    with pytest.raises(NotApplicable, match="lowest swept rate"):
        ic.sustainable_rate_gain(_results(sim=f))
    with pytest.raises(NotApplicable, match="no operating point"):
        ic.vllm_recompute_share(_results(sim=f))
    # InferCept within the bound at every swept rate: its sustainable rate is only a lower bound
    g = _sim_rows()
    g.loc[g.policy == "infercept", "norm_latency_mean"] = 0.01
    with pytest.raises(NotApplicable, match="every swept rate up to 4 req/s"):
        ic.sustainable_rate_gain(_results(sim=g))


def test_breakdown_measure_reads_short_kinds_at_every_load_and_long_ones_at_the_top():
    rows = []
    lat = {  # kind -> {load: (preserve, vllm)}
        "arithmetic": {0.5: (1, 2), 2.0: (1, 5)},
        "qa": {0.5: (1, 1), 2.0: (2, 3)},
        "virtual_env": {0.5: (2, 1), 2.0: (1, 3)},  # Preserve loses at the light load: a miss
        "chatbot": {0.5: (1, 2), 2.0: (5, 3)},
        "image": {0.5: (1, 2), 2.0: (9, 3)},
        "tts": {0.5: (1, 2), 2.0: (2, 3)},  # Preserve still wins at the top load: a miss
    }
    for kind, loads in lat.items():
        for load, (p, v) in loads.items():
            rows += [
                {"kind": kind, "load": load, "policy": "preserve", "norm_latency_mean": p},
                {"kind": kind, "load": load, "policy": "vllm", "norm_latency_mean": v},
            ]
    assert ic.preserve_short_long(_results(breakdown=pd.DataFrame(rows))) == pytest.approx(4 / 6)


def _real_rows(vllm: list[float], infercept: list[float], recomputed=(1000, 300)) -> pd.DataFrame:
    rows = []
    for rnd, (a, b) in enumerate(zip(vllm, infercept, strict=True)):
        for policy, lat, rec in (("vllm", a, recomputed[0]), ("infercept", b, recomputed[1])):
            rows.append(
                {
                    "policy": policy,
                    "round": rnd,
                    "position": len(rows),
                    "norm_latency_mean": lat,
                    "norm_latency_p90": lat,
                    "recomputed_tokens": rec,
                    "completed": 10,
                    "requests": 10,
                    "identical_outputs": 10 if policy == "vllm" else 9,
                    "rate": 2.0,
                    "duration_scale": 0.05,
                    "kv_blocks": 48,
                }
            )
    return pd.DataFrame(rows)


def test_real_measures():
    # the third round ran in a slow phase of the machine: paired ratios do not see it
    r = _results(real=_real_rows([0.05, 0.06, 0.5], [0.04, 0.065, 0.4]))
    assert ic.real_gain(r) == pytest.approx(1.25)  # ratios 1.25, 0.92, 1.25
    assert ic.real_recompute_left(r) == pytest.approx(0.3)
    assert ic.real_identical(r) == pytest.approx(0.9)
    assert ic.real_complete(r) == 1.0
    one = _results(real=_real_rows([0.05], [0.04]))
    with pytest.raises(NotApplicable, match="1 round"):
        ic.real_gain(one)
    assert ic.real_recompute_left(one) == pytest.approx(0.3)  # a count of work: one round is enough
    e = evaluate_claim(next(c for c in ARTIFACT.claims if c.id == "real-ordering"), one)
    assert e["status"] == "n/a" and "1.25x" in e["reason"]
    note = next(c for c in ARTIFACT.claims if c.id == "real-ordering").note_for(r)
    assert "1.25x, 0.92x, 1.25x" in note and "vllm 0.06 (0.05-0.5)" in note
