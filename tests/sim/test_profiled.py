"""The profiled cost model: exact at grid points, linear between and beyond them, monotone,
deterministic, a faithful file round trip, one clear error per bad file, and decode
fast-forward bit-identical to stepping."""

from __future__ import annotations

import copy
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data import DATA_DIR, sha256_file
from core.sched import SchedulerConfig
from core.sim import ProfiledCostModel, ProfileError, ReplicaConfig, Simulator
from core.sim.profiled import PROFILE_SCHEMA, shipped_profile
from core.workload import Request, poisson_arrivals
from scripts.calibrate.fit import fit_tables  # profiles are made by the calibration's fit

GRID = {
    "prefill_tokens": [1, 16, 64, 256],
    "prefill_contexts": [0, 128, 512],
    "decode_batches": [1, 4, 16],
    "decode_contexts": [16, 128, 1024],
}


def truth(prefill=(), decode=()):
    """A made-up engine: 5 ms a step, 0.1 ms a token, 0.2 ms a sequence, attention 0.2 us per
    query x cached key of each prefill chunk, 0.3 us per real decode key plus 0.2 us per padded
    one (decode rows padded to the longest), 0.7 ms per extra prefill chunk."""
    if not prefill and not decode:
        return 0.0
    tokens = sum(n for n, _ in prefill) + len(decode)
    seqs = len(prefill) + len(decode)
    attn = sum(n * c for n, c in prefill) * 0.2e-6
    attn += sum(decode) * 0.3e-6 + len(decode) * (max(decode) if decode else 0) * 0.2e-6
    return 5e-3 + 1e-4 * tokens + 2e-4 * seqs + attn + 7e-4 * max(0, len(prefill) - 1)


MIXES = {4: [[16, 16, 16, 1024], [16, 16, 1024, 1024]], 16: [[16] * 15 + [1024], [16, 128] * 8]}


def samples(noise=0.0, seed=0, repeats=3):
    """What a calibration records for ``truth`` on GRID (times scaled by noise if any)."""
    rng = random.Random(seed)
    out = []

    def rec(cell, pre, dec):
        for _ in range(repeats):
            t = truth(pre, dec) * (1 + rng.uniform(-noise, noise))
            out.append(
                {"cell": cell, "prefill": [list(c) for c in pre], "decode": list(dec), "seconds": t}
            )

    for n in GRID["prefill_tokens"]:
        for c in GRID["prefill_contexts"]:
            rec(["prefill", n, c], [(n, c)], [])
    for b in GRID["decode_batches"]:
        for L in GRID["decode_contexts"]:
            rec(["decode", b, L], [], [L] * b)
        for n in GRID["prefill_tokens"]:
            rec(["mixed", n, b], [(n, 0)], [GRID["decode_contexts"][0]] * b)
    for b, mixes in MIXES.items():
        for k, ctx in enumerate(mixes):
            rec(["decode-mix", b, k], [], ctx)
    rec(["chunks", 64, 2], [(32, 0), (32, 0)], [])
    return out


def profile(noise=0.0, seed=0):
    tables, notes = fit_tables(samples(noise, seed), GRID)
    return {
        "schema": PROFILE_SCHEMA,
        "created": "2025-01-01T00:00:00Z",
        "device": {"type": "cpu", "name": "test cpu", "threads": 1},
        "model": {"name": "made-up", "config": {"vocab_size": 512}, "parameters": 1},
        "dtype": "float32",
        "threads": 1,
        "torch_version": "x",
        "engine": {
            "block_size": 16,
            "num_kv_blocks": 512,
            "max_num_batched_tokens": 256,
            "max_num_seqs": 16,
            "max_model_len": 2048,
            "enable_prefix_caching": False,
        },
        "grid": GRID,
        "tables": tables,
        "samples": [],
        "calibration": {"notes": notes},
    }


EXACT = ProfiledCostModel(profile(), source="exact")
NOISY = ProfiledCostModel(profile(noise=0.3, seed=1), source="noisy")


# ---- values ---------------------------------------------------------------------------------


def test_exact_at_every_grid_point():
    L0 = GRID["decode_contexts"][0]
    for n in GRID["prefill_tokens"]:
        for c in GRID["prefill_contexts"]:
            assert EXACT.step_time([(n, c)]) == pytest.approx(truth([(n, c)]), rel=1e-12)
        for b in GRID["decode_batches"]:
            want = truth([(n, 0)], [L0] * b)
            assert EXACT.step_time([(n, 0)], [L0] * b) == pytest.approx(want, rel=1e-12)
    for b in GRID["decode_batches"]:
        for L in GRID["decode_contexts"]:
            assert EXACT.step_time([], [L] * b) == pytest.approx(truth([], [L] * b), rel=1e-12)
    # the tables hold the fitted values verbatim
    tables = profile()["tables"]
    assert EXACT.step_time([(64, 128)]) == pytest.approx(tables["prefill"][2][1], rel=1e-12)
    assert EXACT.step_time([], [1024] * 4) == pytest.approx(tables["decode"][1][2], rel=1e-12)
    assert EXACT.step_time([(16, 0)], [16] * 4) == pytest.approx(tables["mixed"][1][1], rel=1e-12)


def test_linear_between_and_beyond_grid_points():
    # decode: linear in the longest context between 128 and 1024, and beyond 1024
    a, b = EXACT.step_time([], [128] * 4), EXACT.step_time([], [1024] * 4)
    assert EXACT.step_time([], [576] * 4) == pytest.approx((a + b) / 2, rel=1e-12)
    assert EXACT.step_time([], [1920] * 4) == pytest.approx(b + (b - a), rel=1e-12)
    # prefill: beyond the largest chunk, the last segment's slope
    p1, p2 = EXACT.step_time([(64, 0)]), EXACT.step_time([(256, 0)])
    assert EXACT.step_time([(448, 0)]) == pytest.approx(p2 + (p2 - p1), rel=1e-12)
    # mixed: the chord between the two nearest measured chunk sizes
    lo, hi = EXACT.step_time([(64, 0)], [16] * 4), EXACT.step_time([(256, 0)], [16] * 4)
    w = (100 - 64) / (256 - 64)
    assert EXACT.step_time([(100, 0)], [16] * 4) == pytest.approx(lo + w * (hi - lo), rel=1e-12)


def test_composition_of_the_tables():
    """Steps no table holds, where ``truth`` is exactly what the model composes: decodes with
    unequal contexts (the fitted padding weight), a prefill chunk with cached context among
    decodes, several prefill chunks (each with its own attention, plus the extra-chunk cost)."""
    assert EXACT.decode_padding_weight == pytest.approx(0.4)  # 0.2 / (0.3 + 0.2)
    for dec in ([16, 50, 128], [16] * 9 + [1000], [300, 700, 20, 1024, 1024]):
        assert EXACT.step_time([], dec) == pytest.approx(truth([], dec), rel=1e-9)
    step = ([(64, 128)], [128] * 4)
    assert EXACT.step_time(*step) == pytest.approx(truth(*step), rel=1e-9)
    # a chunk beyond the first is looked up as one more sampled row (a decode at L0), plus
    # extra_chunk_s: here the 0.7 ms the made-up engine charges less that decode's attention
    assert EXACT.extra_chunk_s == pytest.approx(7e-4 - 16 * 0.5e-6, rel=1e-9)
    for batch in (
        ([(16, 0), (64, 128), (1, 0)], []),
        ([(256, 0), (16, 512)], [16, 1024, 128]),
        ([(32, 0), (32, 0)], []),
    ):
        assert EXACT.step_time(*batch) == pytest.approx(truth(*batch), rel=1e-9)


def test_empty_zero_deterministic_and_bad_values():
    assert EXACT.step_time() == 0.0 and EXACT.step_time([(0, 5)]) == 0.0
    batch = ([(37, 200), (5, 0)], [17, 300, 999])
    assert EXACT.step_time(*batch) == EXACT.step_time(*batch)
    assert ProfiledCostModel(profile(), source="again").step_time(*batch) == EXACT.step_time(*batch)
    with pytest.raises(ValueError, match="must be >= 0"):
        EXACT.step_time([(-1, 0)])
    with pytest.raises(ValueError, match="must be >= 0"):
        EXACT.step_time([], [-3])


# ---- monotone -------------------------------------------------------------------------------


chunk = st.tuples(st.integers(1, 600), st.integers(0, 2000))


@settings(max_examples=150, deadline=None)
@given(
    prefill=st.lists(chunk, max_size=3),
    decode=st.lists(st.integers(1, 3000), max_size=20),
    which=st.integers(0, 30),
    extra=st.integers(1, 300),
    noisy=st.booleans(),
)
def test_monotone_in_tokens_context_and_sequences(prefill, decode, which, extra, noisy):
    m = NOISY if noisy else EXACT
    base = m.step_time(prefill, decode)
    assert base >= 0
    entries = len(prefill) + len(decode)
    if entries:
        i = which % entries
        p, d = list(prefill), list(decode)
        if i < len(p):
            n, c = p[i]
            assert m.step_time(p[:i] + [(n + extra, c)] + p[i + 1 :], d) >= base  # tokens
            assert m.step_time(p[:i] + [(n, c + extra)] + p[i + 1 :], d) >= base  # context
        else:
            j = i - len(p)
            assert m.step_time(p, d[:j] + [d[j] + extra] + d[j + 1 :]) >= base  # context
    assert m.step_time(prefill, [*decode, extra]) >= base  # another decoding sequence
    assert m.step_time([*prefill, (extra, 0)], decode) >= base  # another prefill chunk


# ---- files ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    path = EXACT.save(tmp_path / "sub" / "p.json")
    loaded = ProfiledCostModel.load(path)
    batch = ([(37, 200), (5, 0)], [17, 300, 999])
    assert loaded.step_time(*batch) == EXACT.step_time(*batch)
    assert loaded.profile == json.loads(path.read_text())
    d = loaded.describe()
    assert d["cost_model"] == "profiled" and d["source"] == str(path)
    assert d["device"]["name"] == "test cpu" and d["engine"]["block_size"] == 16
    assert loaded.model_config == {"vocab_size": 512}


def _broken(tmp_path, edit):
    doc = copy.deepcopy(profile())
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.update(schema="other/1"), "schema"),
        (lambda d: d["tables"].pop("decode"), "tables.decode"),
        (lambda d: d["tables"]["mixed"].pop(), "tables.mixed must be a 4 x 3"),
        (lambda d: d["grid"].update(decode_contexts=[128, 16, 1024]), "strictly increasing"),
        (lambda d: d["grid"].update(prefill_contexts=[5, 128, 512]), "start at 0"),
        (lambda d: d["tables"]["prefill"][0].__setitem__(0, -1.0), "finite number of seconds"),
        (lambda d: d["tables"]["decode"][2].__setitem__(2, 0.0), "decreases"),
        (lambda d: d["tables"].update(extra_chunk_s="x"), "extra_chunk_s"),
        (lambda d: d["tables"].update(decode_padding_weight=1.5), "decode_padding_weight must be"),
        (lambda d: d.pop("grid"), "'grid'"),
    ],
)
def test_malformed_profile_names_the_file(tmp_path, edit, words):
    path = _broken(tmp_path, edit)
    with pytest.raises(ProfileError) as err:
        ProfiledCostModel.load(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_or_non_json_profile(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json.*calibrate"):
        ProfiledCostModel.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match=f"{bad}: not valid JSON"):
        ProfiledCostModel.load(bad)


# ---- decode fast-forward -----------------------------------------------------------------------


def test_decode_run_times_bit_identical_to_steps():
    for m in (EXACT, NOISY):
        for ctx in (
            [16],
            [5, 900, 77],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
            [0, 40],
        ):
            run = m.decode_run_times(ctx, 40)
            for i in range(40):
                step = m.step_time(
                    [(1, 0)] * sum(c + i == 0 for c in ctx), [c + i for c in ctx if c + i > 0]
                )
                assert run[i] == step  # exactly, not approximately


def _workload(n=40, seed=0):
    rng = random.Random(seed)
    times = poisson_arrivals(n, rate=20.0, seed=seed)
    reqs = []
    for i in range(n):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randint(2, 300))]
        reqs.append(
            Request(
                f"r{i}", float(times[i]), len(prompt), rng.randint(1, 90), prompt_token_ids=prompt
            )
        )
    return reqs


@pytest.mark.parametrize("model", [EXACT, NOISY], ids=["exact", "noisy"])
def test_fast_forward_is_bit_identical(model):
    sched = SchedulerConfig(max_num_batched_tokens=128, max_num_seqs=12, max_model_len=2048)
    reps = [
        ReplicaConfig(model, num_kv_blocks=400, block_size=16, scheduler=sched, prefix_cache="none")
    ]
    slow = Simulator(reps, fast_forward=False).run(_workload())
    fast = Simulator(reps, fast_forward=True).run(_workload())
    assert fast.fast_forwarded_steps > 0
    assert fast.fingerprint() == slow.fingerprint()


SHIPPED = DATA_DIR / "profiles" / "cpu-amd-epyc-1t-tiny-llama-20m.json"


def test_the_shipped_profile_loads_and_is_exact_at_its_grid():
    model = shipped_profile("profiles/cpu-amd-epyc-1t-tiny-llama-20m.json")
    assert shipped_profile("profiles/cpu-amd-epyc-1t-tiny-llama-20m.json") is model  # loaded once
    assert model.require_model_config()["hidden_size"] == 256 and model.profile["threads"] == 1
    g, t = model.grid, model.profile["tables"]
    n, c = g["prefill_tokens"][-1], g["prefill_contexts"][1]
    assert model.step_time([(n, c)]) == pytest.approx(t["prefill"][-1][1], rel=1e-12)
    b, L = g["decode_batches"][2], g["decode_contexts"][1]
    assert model.step_time([], [L] * b) == pytest.approx(t["decode"][2][1], rel=1e-12)


def test_a_profile_without_a_model_config_says_so():
    model = ProfiledCostModel.load(SHIPPED)
    doc = copy.deepcopy(model.profile)
    del doc["model"]["config"]
    bare = ProfiledCostModel(doc, source="bare.json")
    assert bare.model_config is None
    with pytest.raises(ProfileError, match="bare.json: the profile names no model config"):
        bare.require_model_config()


def test_cpu_profile_path_prefers_a_profile_of_this_cpu(tmp_path, monkeypatch):
    import core.data
    from core.sim.profiled import cpu_device_slug, cpu_model_name, cpu_profile_path

    monkeypatch.setattr(core.data, "DATA_DIR", tmp_path)
    (tmp_path / "profiles").mkdir()
    shipped = tmp_path / "profiles" / "cpu-other-1t-m.json"
    shipped.write_text("{}")
    assert cpu_profile_path("m", fallback="profiles/cpu-other-1t-m.json") == shipped
    own = tmp_path / "profiles" / f"{cpu_device_slug(cpu_model_name(), 1)}-m.json"
    own.write_text("{}")
    assert cpu_profile_path("m", fallback="profiles/cpu-other-1t-m.json") == own
    with pytest.raises(FileNotFoundError, match="nox -s calibrate -- --model x"):
        cpu_profile_path("x")


def test_profile_origin_names_the_file_the_host_and_the_commit():
    from core.sim.profiled import cpu_model_name, profile_origin

    model = shipped_profile("profiles/cpu-amd-epyc-1t-tiny-llama-20m.json")
    words = profile_origin(model)
    assert words.startswith(
        "data/profiles/cpu-amd-epyc-1t-tiny-llama-20m.json, measured on AMD EPYC"
    )
    assert "host 'vm'" in words and "2026-11-23" in words and "commit " in words
    same = cpu_model_name() == model.profile["device"]["name"]
    assert ("same CPU model" in words) is same and ("different CPU" in words) is not same
    # the host from the provenance when the device does not name it; none when neither does
    doc = copy.deepcopy(model.profile)
    del doc["device"]["hostname"]
    doc["provenance"]["host"]["hostname"] = "lab-7"
    assert "host 'lab-7'" in profile_origin(ProfiledCostModel(doc, source=model.source))
    del doc["provenance"]["host"]
    assert "host" not in profile_origin(ProfiledCostModel(doc, source=model.source))


def test_a_pinned_profile_is_its_path_and_sha256_and_loads_back_checked(tmp_path, monkeypatch):
    import core.data
    from core.sim.profiled import (
        cpu_device_slug,
        cpu_model_name,
        load_pinned_profile,
        pinned_origin,
        pinned_profile,
        profile_origin,
    )

    monkeypatch.setattr(core.data, "DATA_DIR", tmp_path)
    (tmp_path / "profiles").mkdir()
    shipped = tmp_path / "profiles" / "cpu-other-1t-m.json"
    shipped.write_text(SHIPPED.read_text())
    pin = pinned_profile("m", fallback="profiles/cpu-other-1t-m.json")
    assert pin == {
        "profile": "profiles/cpu-other-1t-m.json",
        "profile_sha256": sha256_file(shipped),
    }
    model = load_pinned_profile(pin["profile"], pin["profile_sha256"])
    assert model.require_model_config()["hidden_size"] == 256
    assert load_pinned_profile(pin["profile"], pin["profile_sha256"]) is model  # loaded once
    assert str(shipped.resolve()) in core.data.files_read()  # in the run's provenance
    with pytest.raises(
        ProfileError, match="cpu-other-1t-m.json: sha256 .* is not the 000000000000"
    ):
        load_pinned_profile(pin["profile"], "0" * 64)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_pinned_profile("profiles/nope.json", None)
    # this CPU's own profile wins, and is another pin
    own = tmp_path / "profiles" / f"{cpu_device_slug(cpu_model_name(), 2)}-m.json"
    doc = json.loads(SHIPPED.read_text())
    doc["created"] = "2099-01-01T00:00:00Z"
    own.write_text(json.dumps(doc))
    mine = pinned_profile("m", fallback="profiles/cpu-other-1t-m.json", threads=2)
    assert (
        mine["profile"] == f"profiles/{own.name}"
        and mine["profile_sha256"] != pin["profile_sha256"]
    )
    # a path outside data/ stays absolute
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.json"
    outside.write_text(SHIPPED.read_text())
    assert (
        load_pinned_profile(str(outside), sha256_file(outside)).model_config == model.model_config
    )
    # in notes written after the run: where it was measured, or why it cannot be read now
    assert pinned_origin(pin["profile"], pin["profile_sha256"]) == profile_origin(model)
    gone = pinned_origin("profiles/nope.json", "0" * 64)
    assert (
        gone.startswith("profiles/nope.json (unreadable now: ") and "no such step profile" in gone
    )
