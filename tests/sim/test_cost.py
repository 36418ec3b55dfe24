"""The roofline cost model: formulas, regimes, tensor parallelism, validation, memory planning,
the efficiency file; and the GPU cost-model check against Vidur's measurements."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import DATA_DIR
from core.model.spec import ModelSpec, OpKind
from core.sched.scheduler import ScheduledChunk, SchedulerOutput
from core.sim.cost import (
    EFFICIENCY_FILE,
    CostModel,
    Efficiency,
    RooflineCostModel,
    chunks_of,
    combine,
    load_efficiency,
    ring_seconds,
    roofline_seconds,
)
from core.sim.hardware import GPUS
from scripts.bench import gpu_cost_model as gcm

VIDUR = DATA_DIR / "reference" / "vidur-profiles"
# Fixed factors so the tests do not depend on data/profiles/gpu-efficiency.json.
EFF = Efficiency(step_overhead_s=0.0)
QUIET = Efficiency(kernel_launch_s=0.0, collective_launch_s=0.0, step_overhead_s=0.0)


def model(spec="llama-3-8b", hw="a100-80g", tp=1, eff=EFF, **kw) -> RooflineCostModel:
    return RooflineCostModel(spec, hw, tp=tp, dtype="bf16", efficiency=eff, **kw)


# ---- formulas -----------------------------------------------------------------------------


def test_combine_is_max_sum_and_between():
    assert combine(3.0, 1.0) == 3.0 and combine(1.0, 3.0, 0.0) == 3.0
    assert combine(3.0, 1.0, 1.0) == pytest.approx(4.0)
    assert combine(3.0, 1.0, 0.5) == pytest.approx(math.sqrt(10))
    assert 3.0 < combine(3.0, 1.0, 0.2) < combine(3.0, 1.0, 0.8) < 4.0
    assert combine(0.0, 0.0, 0.7) == 0.0


def test_roofline_and_ring_formulas_on_scalars_and_arrays():
    t = roofline_seconds(
        2e12,
        1e9,
        peak=1e15,
        bandwidth=1e12,
        compute_eff=0.5,
        memory_eff=0.5,
        launches=2,
        launch_s=1e-6,
    )
    assert t == pytest.approx(max(2e12 / 5e14, 1e9 / 5e11) + 2e-6)
    arr = roofline_seconds(
        np.array([2e12, 1.0]),
        np.array([1e9, 1e9]),
        peak=1e15,
        bandwidth=1e12,
        compute_eff=0.5,
        memory_eff=0.5,
        ridge_blend=0.4,
    )
    assert arr[0] == pytest.approx(combine(4e-3, 2e-3, 0.4)) and arr[1] == pytest.approx(
        2e-3, rel=1e-6
    )
    # ring all-reduce: 2 (p-1)/p of the payload per link, 2 (p-1) steps
    t = ring_seconds(8e6, 4, bandwidth=1e11, latency_s=1e-6, comm_eff=0.5, launch_s=5e-6)
    assert t == pytest.approx(2 * 3 / 4 * 8e6 / 5e10 + 6e-6 + 5e-6)
    gather = ring_seconds(
        8e6, 4, bandwidth=1e11, latency_s=1e-6, comm_eff=0.5, collective="all_gather"
    )
    assert gather == pytest.approx(3 / 4 * 8e6 / 5e10 + 3e-6)
    assert ring_seconds(8e6, 1, bandwidth=1e11, latency_s=1e-6, comm_eff=0.5, launch_s=5e-6) == 0.0


def test_efficiency_validation():
    with pytest.raises(ValueError, match="gemm_compute must be in"):
        Efficiency(gemm_compute=1.5)
    with pytest.raises(ValueError, match="ridge_blend must be in"):
        Efficiency(ridge_blend=-0.1)
    with pytest.raises(ValueError, match="kernel_launch_s must be"):
        Efficiency(kernel_launch_s=-1e-6)
    with pytest.raises(ValueError, match=r"here: unknown efficiency factors \['warp_speed'\]"):
        Efficiency.from_dict({"warp_speed": 9}, where="here")
    assert Efficiency.from_dict({"memory": 0.5}).memory == 0.5
    assert Efficiency.from_dict(Efficiency().to_dict()) == Efficiency()


# ---- the interface ------------------------------------------------------------------------


def test_empty_batch_costs_nothing_and_overhead_is_added_once():
    m = model(eff=Efficiency(step_overhead_s=2e-3))
    assert m.step_time([], []) == 0.0
    ops = m.per_layer_times([], [100, 200])
    assert m.step_time([], [100, 200]) == pytest.approx(sum(o.seconds for o in ops) + 2e-3)
    assert isinstance(m, CostModel)


def test_step_time_for_scheduler_output():
    m = model()
    out = SchedulerOutput(
        chunks=[
            ScheduledChunk(None, 0, 300, True),  # a whole prompt
            ScheduledChunk(None, 512, 256, False),  # a later prefill chunk
            ScheduledChunk(None, 900, 1, True),  # a decode
            ScheduledChunk(None, 0, 1, True),  # a one-token prompt is a prefill
        ]
    )
    assert chunks_of(out) == ([(300, 0), (256, 512), (1, 0)], [900])
    assert m.step_time_for(out) == m.step_time([(300, 0), (256, 512), (1, 0)], [900])


chunk = st.tuples(st.integers(1, 600), st.integers(0, 3000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefill=st.lists(chunk, max_size=4),
    decode=st.lists(st.integers(1, 5000), max_size=8),
    blend=st.sampled_from([0.0, 0.6]),
    which=st.integers(0, 11),
    tp=st.sampled_from([1, 2]),
)
def test_monotone_in_tokens_and_context(prefill, decode, blend, which, tp):
    m = model("llama-3-8b", "h100-sxm", tp=tp, eff=EFF.with_(ridge_blend=blend))
    base = m.step_time(prefill, decode)
    entries = len(prefill) + len(decode)
    if entries:
        i = which % entries
        p, d = list(prefill), list(decode)
        if i < len(p):
            n, c = p[i]
            more_tokens = m.step_time(p[:i] + [(n + 1, c)] + p[i + 1 :], d)
            more_context = m.step_time(p[:i] + [(n, c + 37)] + p[i + 1 :], d)
        else:
            j = i - len(p)
            more_tokens = m.step_time(
                p + [(2, d[j])], d[:j] + d[j + 1 :]
            )  # decode -> 2-token chunk
            more_context = m.step_time(p, d[:j] + [d[j] + 37] + d[j + 1 :])
        assert more_tokens >= base * (1 - 1e-12)
        assert more_context >= base * (1 - 1e-12)
    assert m.step_time(prefill, [*decode, 10]) > base  # another sequence


# ---- regimes ------------------------------------------------------------------------------


def test_small_decode_batch_is_weight_bandwidth_bound():
    m = model("llama-2-7b", "a100-80g", eff=QUIET)
    hw, spec = GPUS["a100-80g"], ModelSpec.from_preset("llama-2-7b")
    t = m.step_time([], [16])
    # every weight but the embedding table (one row is gathered) streams once
    streamed = m.weight_bytes_per_device - spec.param_breakdown()["embedding"] * 2
    assert t == pytest.approx(streamed / (hw.memory_bandwidth * QUIET.memory), rel=0.02)
    assert {o.bound for o in m.per_layer_times([], [16]) if o.kind is OpKind.GEMM} == {"memory"}
    # doubling a tiny batch barely changes the time (weights dominate)
    assert m.step_time([], [16, 16]) < 1.01 * t


def test_large_prefill_is_compute_bound():
    m = model("llama-2-7b", "a100-80g", eff=QUIET)
    ops = m.per_layer_times([(8192, 0)], [])
    gemms = [o for o in ops if o.kind is OpKind.GEMM and o.name != "lm_head"]
    assert {o.bound for o in gemms} == {"compute"}
    flops = sum(
        op.flops
        for op in m.operators([(8192, 0)])
        if op.kind is OpKind.GEMM and op.name != "lm_head"
    )
    assert sum(o.seconds for o in gemms) == pytest.approx(
        flops / (GPUS["a100-80g"].peak("bf16") * QUIET.gemm_compute)
    )
    # twice the tokens: about twice the time (attention grows faster)
    assert 2.0 <= m.step_time([(16384, 0)], []) / m.step_time([(8192, 0)], []) < 2.6


def test_tensor_parallelism_splits_compute_and_adds_all_reduce():
    one, two = model("llama-2-7b", "h100-sxm", tp=1), model("llama-2-7b", "h100-sxm", tp=2)
    batch = ([(4096, 0)], [])
    ops1 = {o.name: o for o in one.per_layer_times(*batch)}
    ops2 = {o.name: o for o in two.per_layer_times(*batch)}
    assert ops2["mlp_up"].compute_s == pytest.approx(ops1["mlp_up"].compute_s / 2)
    assert ops2["attention"].compute_s == pytest.approx(ops1["attention"].compute_s / 2)
    assert not any(o.kind is OpKind.COMM for o in ops1.values())
    ar = ops2["mlp_allreduce"]
    assert ar.bound == "comm" and ar.count == 32
    hw = GPUS["h100-sxm"]
    payload = 4096 * 4096 * 2  # tokens x hidden x bf16
    assert ar.per_layer == pytest.approx(
        payload / (hw.link_bandwidth * EFF.comm) + 2 * hw.link_latency_s + EFF.collective_launch_s
    )
    assert two.step_time(*batch) < one.step_time(*batch)
    assert two.weight_bytes_per_device < 0.51 * one.weight_bytes_per_device
    assert two.max_kv_tokens() > 2 * one.max_kv_tokens()


def test_kv_heads_fewer_than_tp_are_replicated_and_tp_can_span_nodes():
    m = model("llama-3-70b", "h100-sxm", tp=16)  # 8 KV heads, 16 ranks, two nodes
    assert m.kv_bytes_per_token_per_device == 80 * 2 * 1 * 128 * 2
    assert m.link_bandwidth == GPUS["h100-sxm"].internode_bandwidth


# ---- validation and memory planning -------------------------------------------------------


def test_bad_tp_names_heads_and_kv_heads():
    with pytest.raises(
        ValueError,
        match=r"tp=3 does not split llama-2-7b: it has 32 attention heads and 32 KV heads",
    ):
        model("llama-2-7b", tp=3)
    with pytest.raises(
        ValueError,
        match="tp=6 does not split llama-3-70b: it has 64 attention heads and 8 KV heads",
    ):
        model("llama-3-70b", "h100-sxm", tp=6)
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        model(tp=0)
    with pytest.raises(ValueError, match="tp=8 spans nodes of 4 a6000"):
        model("llama-2-70b", "a6000", tp=8)


def test_model_too_big_names_model_hardware_and_bytes():
    with pytest.raises(
        ValueError,
        match=r"llama-2-70b does not fit on a100-80g with tp=1 .*137,953,296,384 bytes of weights",
    ):
        model("llama-2-70b", "a100-80g")
    assert model("llama-2-70b", "a100-80g", tp=2).max_kv_tokens() > 0
    with pytest.raises(ValueError, match="does not fit on l40s"):
        model("llama-3-8b", "l40s", min_kv_tokens=1_000_000)


def test_unknown_names_and_dtypes_stop_with_one_message():
    with pytest.raises(ValueError, match="unknown preset 'llama-9'"):
        model("llama-9")
    with pytest.raises(ValueError, match="unknown hardware 'v100'"):
        model(hw="v100")
    with pytest.raises(ValueError, match="a100-80g has no fp8"):
        RooflineCostModel("llama-2-7b", "a100-80g", dtype="fp8", efficiency=EFF)
    assert (
        RooflineCostModel("llama-3-70b", "h100-sxm", tp=2, dtype="fp8", efficiency=EFF).dtype
        == "fp8"
    )


def test_max_kv_tokens_by_hand():
    m = model("llama-2-7b", "a100-80g")
    usable = 80 * (1 << 30) * 0.9
    assert m.weight_bytes_per_device == 6_738_415_616 * 2
    assert m.kv_bytes_per_token_per_device == 32 * 2 * 32 * 128 * 2
    assert m.max_kv_tokens() == int((usable - 6_738_415_616 * 2) // 524_288)
    assert m.max_kv_tokens(0.5) < m.max_kv_tokens()
    assert m.max_kv_blocks(16) == m.max_kv_tokens() // 16
    d = m.describe()
    assert (
        d["hardware"] == "a100-80g" and d["efficiency_source"] == "given" and d["max_kv_tokens"] > 0
    )


# ---- the efficiency file ------------------------------------------------------------------


def test_efficiency_file_is_used_unless_factors_are_given(tmp_path):
    path = tmp_path / "eff.json"
    path.write_text(
        json.dumps(
            {
                "schema": "servelab.gpu-efficiency/1",
                "hardware": {
                    "l40s": {
                        "efficiency": {"memory": 0.55, "ridge_blend": 0.3},
                        "fitted_on": "a test",
                    }
                },
            }
        )
    )
    m = RooflineCostModel("llama-3-8b", "l40s", efficiency_file=path)
    assert m.efficiency == Efficiency(memory=0.55, ridge_blend=0.3)
    assert "a test" in m.efficiency_source
    other = RooflineCostModel("llama-3-8b", "a6000", efficiency_file=path)
    assert other.efficiency == Efficiency() and other.efficiency_source == "defaults"
    given_ = RooflineCostModel("llama-3-8b", "l40s", efficiency=EFF, efficiency_file=path)
    assert given_.efficiency is EFF
    assert load_efficiency("l40s", tmp_path / "absent.json") is None
    path.write_text(json.dumps({"hardware": {"l40s": {"efficiency": {"speed": 2}}}}))
    with pytest.raises(
        ValueError, match=r"eff.json: hardware\['l40s'\]: unknown efficiency factors"
    ):
        load_efficiency("l40s", path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="eff.json: not valid JSON"):
        load_efficiency("l40s", path)


def test_shipped_efficiency_file_loads():
    path = DATA_DIR / EFFICIENCY_FILE
    if not path.is_file():
        pytest.skip("no fitted factors shipped yet")
    doc = json.loads(path.read_text())
    for name in doc["hardware"]:
        eff, source = load_efficiency(name)
        assert isinstance(eff, Efficiency) and name in source
        m = RooflineCostModel("llama-2-7b", name)
        assert m.efficiency == eff and m.efficiency_source != "defaults"
    assert {"a100-80g", "h100-sxm"} <= set(doc["hardware"])


# ---- the GPU cost-model check (scripts/bench/gpu_cost_model.py) ---------------------------


def test_mape_by_hand():
    assert gcm.mape([1.0, 2.0, 4.0], [1.1, 1.8, 4.0]) == pytest.approx(100 * (0.1 + 0.1) / 3)
    assert gcm.signed_error([1.0, 2.0], [1.1, 1.8]) == pytest.approx(0.0)
    assert gcm.signed_error([1.0, 1.0], [1.5, 1.5]) == pytest.approx(50.0)
    assert math.isnan(gcm.mape([], []))
    with pytest.raises(ValueError, match="positive"):
        gcm.mape([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="predictions"):
        gcm.mape([1.0, 2.0], [1.0])


@pytest.fixture(scope="module")
def vidur():
    if not VIDUR.is_dir():
        pytest.skip("Vidur profiles not shipped")
    compute = gcm.load_compute_profiles(VIDUR)
    allreduce, skipped = gcm.load_allreduce_profiles(VIDUR)
    return compute, allreduce, skipped


def test_vidur_loader_on_the_shipped_csvs(vidur):
    compute, allreduce, skipped = vidur
    assert set(compute["hardware"]) == {"a100-80g", "h100-sxm"}
    models = compute.groupby("hardware")["model"].unique().map(sorted).to_dict()
    assert models == {
        "a100-80g": ["llama-2-70b", "llama-2-7b", "llama-3-8b"],
        "h100-sxm": ["llama-2-70b", "llama-2-7b"],
    }
    assert set(compute["tp"]) == {1, 2, 4, 8} and (compute["measured_s"] > 0).all()
    assert set(compute["timer"]) == set(gcm.VIDUR_TIMERS)
    assert compute["num_tokens"].max() == 32768  # Llama-3-8B on A100
    # ms -> s: Llama-2-7B's fused gate+up projection of 4096 tokens on one A100: ~3.3 ms
    row = compute.query(
        "hardware == 'a100-80g' and model == 'llama-2-7b' and tp == 1 and "
        "num_tokens == 4096 and timer == 'mlp_up_proj'"
    )
    assert (
        row["measured_s"].item() == pytest.approx(3.3e-3, rel=0.05) and row["repeats"].item() == 2
    )
    assert not compute.duplicated(["hardware", "model", "tp", "num_tokens", "timer"]).any()
    assert set(allreduce["tp"]) == {2, 4, 8} and skipped > 0
    assert allreduce["size_bytes"].min() == 2048 and allreduce["size_bytes"].max() == 64 << 20


def test_vidur_loader_rejects_a_table_of_another_model(tmp_path):
    src = VIDUR / "h100" / "Llama-2-7b-hf" / "mlp.csv"
    if not src.is_file():
        pytest.skip("Vidur profiles not shipped")
    dst = tmp_path / "h100" / "Llama-2-7b-hf"
    dst.mkdir(parents=True)
    df = pd.read_csv(src).head(5)
    df["n_kv_head"] = 8
    df.to_csv(dst / "mlp.csv", index=False)
    with pytest.raises(
        ValueError, match=r"mlp.csv: n_kv_head is \[8\], but llama-2-7b has n_kv_heads=32"
    ):
        gcm.load_compute_profiles(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Vidur all-reduce profiles"):
        gcm.load_allreduce_profiles(tmp_path)


def test_check_predictions_equal_the_cost_model(vidur):
    compute, allreduce, _ = vidur
    sub = compute.query(
        "hardware == 'a100-80g' and model == 'llama-2-7b' and tp == 2 and "
        "num_tokens in (1, 512, 4096)"
    )
    ar = allreduce.query("hardware == 'a100-80g' and tp == 2 and size_bytes == 4096 * 4096 * 2")
    points = gcm.build_points(sub, ar)
    assert len(points) == 3 * len(gcm.OP_MAP) + 1 and set(points["half"]) == {"fit", "test"}
    eff = Efficiency(ridge_blend=0.5, kernel_launch_s=3e-6)
    pred = gcm.predict(points, GPUS["a100-80g"], eff)
    m = RooflineCostModel("llama-2-7b", "a100-80g", tp=2, dtype="fp16", efficiency=eff)
    for (_, row), p in zip(points.iterrows(), pred, strict=True):
        if row["op"] == gcm.ALLREDUCE:
            ops = {o.name: o for o in m.per_layer_times([(4096, 0)])}
            assert p == pytest.approx(ops["mlp_allreduce"].per_layer)
            continue
        ops = {o.name: o for o in m.per_layer_times([(int(row["x"]), 0)])}
        extra = (row["launches"] - 1) * eff.kernel_launch_s  # norm+add: two kernels measured
        assert p == pytest.approx(ops[row["roofline_op"]].per_layer + extra), row["op"]


def test_fit_recovers_known_factors():
    """Points made by the model itself with known factors: the fit finds factors as good."""
    spec = ModelSpec.from_preset("llama-2-7b")
    rows = []
    for tokens in (1, 8, 64, 256, 1024, 4096):
        ops = {o.name: o for o in spec.operators([(tokens, 0)], tp=1, dtype="fp16")}
        for name, kind in (
            ("mlp_up", "gemm"),
            ("o_proj", "gemm"),
            ("mlp_act", "elementwise"),
            ("embedding", "memory"),
        ):
            o = ops[name]
            rows.append(
                {
                    "kind": kind,
                    "flops": o.flops / o.count,
                    "bytes": o.bytes / o.count,
                    "launches": 1,
                    "tp": 1,
                    "op": name,
                }
            )
    for size in (1 << 14, 1 << 20, 1 << 24):
        rows.append(
            {
                "kind": "comm",
                "flops": 0.0,
                "bytes": float(size),
                "launches": 1,
                "tp": 4,
                "op": "all_reduce",
            }
        )
    points = pd.DataFrame(rows)
    hw = GPUS["h100-sxm"]
    truth = Efficiency(
        gemm_compute=0.62,
        memory=0.77,
        elementwise_memory=0.45,
        gather_memory=0.2,
        ridge_blend=0.5,
        kernel_launch_s=3e-6,
        comm=0.6,
        collective_launch_s=2e-5,
    )
    points["measured_s"] = gcm.predict(points, hw, truth)
    grid = gcm.FitGrid(step=0.01, gemm_step=0.01, n_blend=11, n_seconds=61, rounds=6)
    fitted = gcm.fit_efficiency(points, hw, Efficiency(), grid)
    assert gcm.mape(points["measured_s"], gcm.predict(points, hw, fitted)) < 1.0
    assert fitted.gemm_compute == pytest.approx(0.62, abs=0.03)
    assert fitted.comm == pytest.approx(0.6, abs=0.03)


def test_benchmark_main_on_a_small_copy(tmp_path, capsys):
    if not VIDUR.is_dir():
        pytest.skip("Vidur profiles not shipped")
    data = tmp_path / "vidur"
    (data / "a100" / "Llama-2-7b-hf").mkdir(parents=True)
    df = pd.read_csv(VIDUR / "a100" / "Llama-2-7b-hf" / "mlp.csv")
    df[df["num_tokens"] % 256 == 0].to_csv(data / "a100" / "Llama-2-7b-hf" / "mlp.csv", index=False)
    (data / "network" / "a100_dgx").mkdir(parents=True)
    ar = pd.read_csv(VIDUR / "network" / "a100_dgx" / "all_reduce.csv", index_col=0)
    ar.iloc[::25].to_csv(data / "network" / "a100_dgx" / "all_reduce.csv")
    shutil.copy(VIDUR / "LICENSE", data / "LICENSE")
    out, profile = tmp_path / "out", tmp_path / "eff.json"
    assert (
        gcm.main(["--data", str(data), "--out", str(out), "--profile-out", str(profile), "--quick"])
        == 0
    )
    report = json.loads((out / "gpu-cost-model.json").read_text())
    assert report["schema"] == "servelab.bench/1" and report["benchmark"] == "gpu-cost-model"
    errors = report["results"]["gpus"]["a100-80g"]["errors"]
    assert {"all_points", "compute_ops", "all_reduce", "op:mlp_up_proj"} <= set(errors)
    assert set(errors["all_points"]["test"]) == {"ideal", "defaults", "fitted"}
    assert {t["id"] for t in report["targets"]} >= {"a100-80g-mape-fitted-heldout"}
    eff, source = load_efficiency("a100-80g", profile)
    assert eff != Efficiency() and "Vidur" in source
    assert load_efficiency("a100-40g", profile)[0] == eff  # same chip
    assert "MAPE" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not found"):
        gcm.main(["--data", str(tmp_path / "nothing"), "--no-profile", "--out", str(out)])
